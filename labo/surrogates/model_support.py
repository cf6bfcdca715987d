"""Pieces of ``LaplaceModel`` kept apart from its core: training-data checks
(including BoTorch's unit-cube warning), input and output-index checks and exact
conditioning (``condition_on_observations``).

``LaplaceModel`` inherits :class:`ConditioningMixin` and :class:`ChecksMixin`;
they rely on its attributes (``laplace``, ``_conditioning``, ``_m``, ``_outputs``,
``y_mean``/``y_scale``, the transforms) and are not meant to be used alone.
"""

from __future__ import annotations

import copy
import warnings

import torch
from botorch import settings
from botorch.exceptions.warnings import InputDataWarning
from torch import Tensor, nn

from labo.exceptions import (
    InputDtypeError,
    InputShapeError,
    NonFiniteInputError,
    NotFittedError,
)
from labo.laplace.conditioning import ConditionedLaplace, condition
from labo.laplace.validation import check_inputs

# Stands for "the caller did not say which input transform the model has": no scaling check.
_TRANSFORM_UNKNOWN = object()

# Slack around [0, 1] before warning, as BoTorch's check_min_max_scaling allows.
UNIT_CUBE_ATOL = 1e-2


def check_training_data(
    train_X: Tensor,
    train_Y: Tensor,
    train_Yvar: Tensor | None,
    input_transform: nn.Module | None = _TRANSFORM_UNKNOWN,
) -> None:
    """Raise a typed error for bad training data; warn when the inputs are badly scaled.

    Args:
        train_X: ``n x d`` training inputs.
        train_Y: ``n x m`` training targets, of ``train_X``'s dtype.
        train_Yvar: ``None`` or ``n x m`` non-negative observation-noise variances.
        input_transform: The model's input transform. ``None`` (no transform) checks that
            ``train_X`` lies in the unit cube (see :func:`check_input_scaling`); a transform
            is trusted to scale the inputs; left out, the scaling is not checked.

    Raises:
        InputShapeError, InputDtypeError, NonFiniteInputError, EmptyDataError: Bad data,
            with a message naming the argument and what was received.
    """
    check_inputs(train_X, train_X.dtype if isinstance(train_X, Tensor) else torch.float64, "train_X")
    if train_X.dim() != 2:
        raise InputShapeError(
            f"Expected train_X of shape n x d, got {tuple(train_X.shape)} (batched models are not supported)."
        )
    if not isinstance(train_Y, Tensor):
        raise InputDtypeError(f"train_Y must be a torch.Tensor, got {type(train_Y).__name__}.")
    if train_Y.dim() != 2 or train_Y.shape[0] != train_X.shape[0]:
        raise InputShapeError(
            f"Expected train_Y of shape n x m with n = {train_X.shape[0]} (train_X has shape "
            f"{tuple(train_X.shape)}), got {tuple(train_Y.shape)}."
        )
    if train_Y.dtype != train_X.dtype:
        raise InputDtypeError(f"train_Y has dtype {train_Y.dtype} but train_X has {train_X.dtype}.")
    if not torch.isfinite(train_Y).all():
        raise NonFiniteInputError(f"train_Y contains {int((~torch.isfinite(train_Y)).sum())} NaN/inf values.")
    if train_Yvar is not None:
        if not isinstance(train_Yvar, Tensor) or train_Yvar.shape != train_Y.shape:
            raise InputShapeError(
                f"Expected train_Yvar with the shape of train_Y {tuple(train_Y.shape)}, "
                f"got {tuple(getattr(train_Yvar, 'shape', ()))}."
            )
        if not torch.isfinite(train_Yvar).all() or (train_Yvar < 0).any():
            raise NonFiniteInputError(
                f"train_Yvar must be finite and non-negative; min {float(train_Yvar.min()):.3g}."
            )
    if input_transform is None:
        check_input_scaling(train_X)


def check_input_scaling(train_X: Tensor, stacklevel: int = 4) -> None:
    """Warn, as BoTorch's models do, when inputs given without a transform leave the unit cube.

    LaplaceModel's default networks and priors assume inputs of order one: on inputs in,
    say, ``[100, 1000]`` the tanh units saturate and the fit can be worse than predicting
    the mean. Silenced, like BoTorch's
    own check, by ``with botorch.settings.validate_input_scaling(False):``.

    Args:
        train_X: ``n x d`` training inputs, as the network will see them.
        stacklevel: Passed to :func:`warnings.warn` (the default points at the line that
            built the model through ``LaplaceModel.__init__`` and :func:`check_training_data`).

    Warns:
        InputDataWarning: When some entry lies more than ``UNIT_CUBE_ATOL`` outside ``[0, 1]``;
            the message names the dimensions, their ranges and ``input_transform=Normalize(d)``.
    """
    if settings.validate_input_scaling.off():
        return
    with torch.no_grad():
        lo, hi = train_X.min(dim=0).values, train_X.max(dim=0).values
        off = ((lo < -UNIT_CUBE_ATOL) | (hi > 1 + UNIT_CUBE_ATOL)).nonzero().flatten().tolist()
    if not off:
        return
    d = train_X.shape[-1]
    shown = ", ".join(f"x{i} in [{float(lo[i]):.3g}, {float(hi[i]):.3g}]" for i in off[:3])
    more = f" and {len(off) - 3} more" if len(off) > 3 else ""
    warnings.warn(
        f"train_X is not contained in the unit cube ({shown}{more}) and the model has no input "
        f"transform; LaplaceModel's network expects inputs in [0, 1]^d and can fit worse than "
        f"the mean otherwise. Pass input_transform=Normalize(d={d}) (botorch.models.transforms) "
        f"or scale train_X to [0, 1].",
        InputDataWarning,
        stacklevel=stacklevel,
    )


class ChecksMixin:
    """Checks of posterior inputs and of ``output_indices`` against the model."""

    def _check_X(self, X: Tensor, name: str = "X") -> None:
        if not isinstance(X, Tensor):
            raise InputDtypeError(f"{name} must be a torch.Tensor, got {type(X).__name__}.")
        if X.dim() < 2 or X.shape[-1] != self._d:
            raise InputShapeError(
                f"Expected {name} with shape batch_shape x q x {self._d}, got {tuple(X.shape)}."
            )
        if X.dtype != self.train_inputs[0].dtype:
            raise InputDtypeError(
                f"{name} has dtype {X.dtype} but the model was built with {self.train_inputs[0].dtype}."
            )
        if not torch.isfinite(X).all():
            raise NonFiniteInputError(f"{name} contains NaN/inf values (shape {tuple(X.shape)}).")

    def _subset_index(self, output_indices) -> list[int]:
        n = len(self._outputs)
        if output_indices is None:
            return list(range(n))
        bad = [i for i in output_indices if not isinstance(i, int) or not -n <= i < n]
        if bad or not output_indices:
            raise InputShapeError(f"output_indices must be ints in [0, {n}), got {output_indices!r}.")
        return [i % n for i in output_indices]

    def _output_index(self, output_indices) -> Tensor:
        idx = list(output_indices)
        bad = [i for i in idx if not isinstance(i, int) or not -self._m <= i < self._m]
        if bad or not idx:
            raise InputShapeError(
                f"output_indices must be a non-empty list of ints in [0, {self._m}), got {output_indices!r}."
            )
        return torch.tensor([i % self._m for i in idx], device=self.y_mean.device)


class ConditioningMixin:
    """Exact conditioning of the linearised model on new observations (no retraining)."""

    def _conditioned_laplace(self) -> ConditionedLaplace:
        """The exact conditioned posterior (``labo.laplace.conditioning``), cached.

        Its factorisation is reused by every posterior call of this conditioned model.
        When the conditioning data carry an autograd graph (e.g. fantasies at candidates
        being optimised) it is rebuilt per call, so each backward pass has its own graph.
        """
        Xc, Zc, Nc = self._conditioning
        precision = self.laplace.posterior_precision()
        cached = self.__dict__.get("_conditioned_cache")
        if cached is not None and cached[0] is self._conditioning and cached[1] is precision:
            return cached[2]
        if Xc.requires_grad or Zc.requires_grad or Nc.requires_grad:
            return condition(self.laplace, Xc, Zc, Nc)
        with torch.no_grad():
            post = condition(self.laplace, Xc, Zc, Nc)
        self.__dict__["_conditioned_cache"] = (self._conditioning, precision, post)
        return post

    def condition_on_observations(self, X: Tensor, Y: Tensor, noise: Tensor | None = None, **kwargs):
        """A new model conditioned on ``(X, Y)`` under the linearised model: exact, no retraining.

        Args:
            X: ``batch_shape x n' x d`` inputs (untransformed).
            Y: ``batch_shape' x n' x m`` observations (original scale); ``batch_shape'``
                broadcasts against ``batch_shape`` (fantasies add leading dimensions).
            noise: Optional noise variances ``batch_shape x n' x m`` in the
                outcome-transformed space; default: the model's noise.
        """
        if not self.is_fitted:
            raise NotFittedError("condition_on_observations needs a fitted model.")
        if self._outputs is not None:
            raise NotImplementedError(
                "condition_on_observations on an output subset: condition the full model, then subset it."
            )
        self._check_X(X)
        if Y.dim() < 2 or Y.shape[-1] != self._m or Y.shape[-2] != X.shape[-2]:
            raise InputShapeError(
                f"Expected Y with shape batch_shape x {X.shape[-2]} x {self._m}, got {tuple(Y.shape)}."
            )
        if not torch.isfinite(Y).all():
            raise NonFiniteInputError("Y passed to condition_on_observations contains NaN/inf.")
        X_tf = self.transform_inputs(X)
        Y_tf = Y
        if hasattr(self, "outcome_transform"):
            Y_tf, _ = self.outcome_transform(Y, None, X=X_tf)
        Z = (Y_tf - self.y_mean) / self.y_scale
        if noise is None:
            N = self.z_noise_var.expand(Z.shape[-2:])
        else:
            N = noise.to(Z) / self.y_scale.pow(2)
        new = self._shallow_copy()
        if self._conditioning is not None:
            Xc, Zc, Nc = self._conditioning
            batch = torch.broadcast_shapes(self.batch_shape, X_tf.shape[:-2], Z.shape[:-2], N.shape[:-2])
            X_tf = torch.cat([Xc.expand(*batch, *Xc.shape[-2:]), X_tf.expand(*batch, *X_tf.shape[-2:])], -2)
            Z = torch.cat([Zc.expand(*batch, *Zc.shape[-2:]), Z.expand(*batch, *Z.shape[-2:])], -2)
            N = torch.cat([Nc.expand(*batch, *Nc.shape[-2:]), N.expand(*batch, *N.shape[-2:])], -2)
        new._conditioning = (X_tf, Z, N)
        if X.dim() == 2 and Y.dim() == 2:
            new.train_inputs = (torch.cat([self.train_inputs[0], X]),)
            new.train_targets = torch.cat([self.train_targets, Y_tf])
            if self.train_Yvar is not None:
                extra = noise if noise is not None else self.train_Yvar.mean(0).expand_as(Y_tf)
                new.train_Yvar = torch.cat([self.train_Yvar, extra.to(Y_tf)])
        return new

    def _shallow_copy(self) -> ConditioningMixin:
        """A copy sharing the (read-only) network and curvature, with its own containers."""
        new = copy.copy(self)
        new._modules = dict(self._modules)
        new._buffers = dict(self._buffers)
        new._parameters = dict(self._parameters)
        new.fit_info = dict(self.fit_info)
        return new
