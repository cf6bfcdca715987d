"""Posterior function samples of the linearised Laplace posterior.

A weight draw ``θ_s ~ N(θ̂, H⁻¹)`` defines one deterministic function of the
linearised (GLM) network,

    f_s(x) = f(x; θ̂) + J(x) (θ_s − θ̂),

which can be evaluated at any input and differentiated w.r.t. it: continuous
Thompson sampling, which a GP only gets through random-feature approximations.
``J(x) δ`` is a Jacobian-vector product (``torch.func.jvp``, forward mode), so the
``rows x S`` Jacobian is never formed; the samples are vectorised with ``vmap``.
Under the linearised model these functions are exact posterior draws: at any
inputs their mean is ``f(x; θ̂)`` and their covariance ``J H⁻¹ Jᵀ``, the GLM
predictive (tested against it). The draw works for every structure (each offers
``sample``); for ``Functional()`` it is Matheron's rule in weight space.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor
from torch.func import jvp, vmap

from labo.exceptions import HyperparameterError, InputShapeError

if TYPE_CHECKING:
    from labo.laplace.laplace import LaplaceApproximation


def linearised_outputs(la: LaplaceApproximation, rows: Tensor, deltas: Tensor) -> Tensor:
    """``f(rows; θ̂) + J(rows) δ_s`` for every ``δ_s``: ``(s, N, K)``.

    Args:
        la: A fitted ``LaplaceApproximation``.
        rows: Inputs ``(N, ...)``, one row per point (may require grad).
        deltas: Weight offsets ``(s, S)`` from the linearisation point.
    """
    f = la.subset.functional(la.network)
    theta = la.theta_map

    def one(delta: Tensor) -> Tensor:
        out, tangent = jvp(lambda th: f(th, rows), (theta,), (delta,))
        return out + tangent

    return vmap(one)(deltas)


def paired_linearised_outputs(la: LaplaceApproximation, rows: Tensor, deltas: Tensor) -> Tensor:
    """Sample ``s`` evaluated at its own rows: ``rows (s, N, ...)`` -> ``(s, N, K)``."""
    f = la.subset.functional(la.network)
    theta = la.theta_map

    def one(delta: Tensor, x: Tensor) -> Tensor:
        out, tangent = jvp(lambda th: f(th, x), (theta,), (delta,))
        return out + tangent

    return vmap(one)(deltas, rows)


class FunctionSamples:
    """A batch of ``s`` deterministic posterior functions ``f_s(x) = f(x; θ̂) + J(x) δ_s``.

    Build it with :func:`sample_functions` (or ``la.sample_functions``). The weight
    offsets ``δ_s`` are fixed at construction: calling the object twice at the same
    inputs gives the same values. The samples refer to the network's weights at
    construction time only through ``la.theta_map``; do not retrain the network
    while using them.

    Args:
        la: A fitted ``LaplaceApproximation``.
        deltas: Weight offsets ``(s, S)`` from the MAP ``θ̂``.
    """

    def __init__(self, la: LaplaceApproximation, deltas: Tensor):
        la.curvature.check_fitted()
        if not isinstance(deltas, Tensor) or deltas.dim() != 2 or deltas.shape[-1] != la.n_weights:
            raise InputShapeError(
                f"Expected deltas of shape (num_samples, {la.n_weights}), "
                f"got {tuple(getattr(deltas, 'shape', ()))}."
            )
        self.la = la
        self.deltas = deltas

    @property
    def num_samples(self) -> int:
        """``s``, the number of functions."""
        return self.deltas.shape[0]

    @property
    def weights(self) -> Tensor:
        """The sampled weights ``θ_s = θ̂ + δ_s``: ``(s, S)``."""
        return self.la.theta_map + self.deltas

    def __call__(self, X: Tensor) -> Tensor:
        """Every function at every input.

        Args:
            X: Inputs ``(..., n, d)`` (any leading batch shape).

        Returns:
            Values ``(s, ..., n, K)``; differentiable w.r.t. ``X``.
        """
        lead, rows = self.la.split_inputs(X)
        out = linearised_outputs(self.la, rows, self.deltas)
        return out.reshape(self.num_samples, *lead, out.shape[-1])

    def paired(self, X: Tensor) -> Tensor:
        """Function ``s`` at its own inputs ``X[s]`` (one optimisation problem per sample).

        Args:
            X: Inputs ``(s, ..., n, d)`` whose leading dimension indexes the samples.

        Returns:
            Values ``(s, ..., n, K)`` with ``out[i] = f_i(X[i])``; differentiable w.r.t. ``X``.
        """
        lead, rows = self.la.split_inputs(X)
        if len(lead) < 2 or lead[0] != self.num_samples:
            raise InputShapeError(
                f"Expected X with shape ({self.num_samples}, ..., n, d) (one slice per sample) "
                f"for paired evaluation, got {tuple(X.shape)}."
            )
        rows = rows.reshape(self.num_samples, -1, *rows.shape[1:])
        out = paired_linearised_outputs(self.la, rows, self.deltas)
        return out.reshape(*lead, out.shape[-1])

    def __getitem__(self, index) -> FunctionSamples:
        """A sub-batch of the functions (an int keeps a batch of one)."""
        if isinstance(index, int):
            index = slice(index, index + 1) if index != -1 else slice(-1, None)
        return FunctionSamples(self.la, self.deltas[index])

    def __len__(self) -> int:
        return self.num_samples

    def __repr__(self) -> str:
        return f"FunctionSamples(num_samples={self.num_samples}, n_weights={self.deltas.shape[-1]})"


def sample_functions(
    la: LaplaceApproximation, num_samples: int, generator: torch.Generator | None = None
) -> FunctionSamples:
    """Draw ``num_samples`` posterior functions of the linearised network.

    Args:
        la: A fitted ``LaplaceApproximation``.
        num_samples: Number of functions ``s`` (a positive int).
        generator: Optional ``torch.Generator`` for reproducible draws.

    Returns:
        A :class:`FunctionSamples` mapping ``(..., n, d)`` to ``(s, ..., n, K)``.
    """
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
        raise HyperparameterError(f"num_samples must be a positive int, got {num_samples!r}.")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}.")
    la.curvature.check_fitted()
    deltas = la.posterior_precision().sample(num_samples, generator)
    return FunctionSamples(la, deltas.detach())


__all__ = ["FunctionSamples", "linearised_outputs", "paired_linearised_outputs", "sample_functions"]
