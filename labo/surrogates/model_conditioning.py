"""Exact conditioning of ``LaplaceModel`` on new observations (no retraining): the
observations in the model's z-space, appended to earlier ones, and the conditioned
posterior (:mod:`labo.laplace.predictive.conditioning`), cached on the model.

Plain functions of explicit arguments; ``LaplaceModel.condition_on_observations`` and
``LaplaceModel.conditioned_laplace`` call them.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from labo.exceptions import InputShapeError, NonFiniteInputError
from labo.laplace import LaplaceApproximation
from labo.laplace.predictive.conditioning import ConditionedLaplace, condition
from labo.surrogates.kernel_posterior import KernelPosterior


def z_space_observations(
    Y: Tensor,
    noise: Tensor | None,
    X_tf: Tensor,
    outcome_transform: nn.Module | None,
    y_mean: Tensor,
    y_scale: Tensor,
    z_noise_var: Tensor,
) -> tuple[Tensor, Tensor, Tensor]:
    """New observations in the model's spaces, for exact conditioning.

    Args:
        Y: ``batch_shape' x n' x m`` observations (original scale), checked against ``X_tf``.
        noise: ``None`` (the model's noise) or noise variances ``batch_shape x n' x m``
            in the outcome-transformed space.
        X_tf: ``batch_shape x n' x d`` transformed inputs.
        outcome_transform: The model's outcome transform, or ``None``.
        y_mean, y_scale: ``(m,)`` the model's target standardisation.
        z_noise_var: ``(m,)`` the model's noise variance in z-space.

    Returns:
        ``(Y_tf, Z, N)``: the outcome-transformed targets, the z-space targets and the
        z-space noise variances (``... x n' x m``).
    """
    m = y_mean.shape[-1]
    if Y.dim() < 2 or Y.shape[-1] != m or Y.shape[-2] != X_tf.shape[-2]:
        raise InputShapeError(
            f"Expected Y with shape batch_shape x {X_tf.shape[-2]} x {m}, got {tuple(Y.shape)}."
        )
    if not torch.isfinite(Y).all():
        raise NonFiniteInputError("Y passed to condition_on_observations contains NaN/inf.")
    Y_tf = Y
    if outcome_transform is not None:
        Y_tf, _ = outcome_transform(Y, None, X=X_tf)
    Z = (Y_tf - y_mean) / y_scale
    N = z_noise_var.expand(Z.shape[-2:]) if noise is None else noise.to(Z) / y_scale.pow(2)
    return Y_tf, Z, N


def append_observations(
    old: tuple[Tensor, Tensor, Tensor] | None, new: tuple[Tensor, Tensor, Tensor]
) -> tuple[Tensor, Tensor, Tensor]:
    """Conditioning data ``(X_tf, Z, N)`` followed by more, broadcast to a common batch shape."""
    if old is None:
        return new
    batch = torch.broadcast_shapes(*(t.shape[:-2] for t in old + new))
    return tuple(
        torch.cat([a.expand(*batch, *a.shape[-2:]), b.expand(*batch, *b.shape[-2:])], -2)
        for a, b in zip(old, new, strict=True)
    )


def append_training_data(
    train: tuple[Tensor, Tensor, Tensor | None], X: Tensor, Y_tf: Tensor, noise: Tensor | None
) -> tuple[Tensor, Tensor, Tensor | None]:
    """``(train_X, train_Y_tf, train_Yvar)`` followed by unbatched new observations.

    Args:
        train: The model's ``train_inputs[0]``, ``train_targets`` and ``train_Yvar``.
        X: ``n' x d`` new inputs (untransformed).
        Y_tf: ``n' x m`` new targets (outcome-transformed).
        noise: Their noise variances, or ``None`` (then the mean of ``train_Yvar``).
    """
    train_X, train_Y, train_Yvar = train
    if train_Yvar is not None:
        extra = noise if noise is not None else train_Yvar.mean(0).expand_as(Y_tf)
        train_Yvar = torch.cat([train_Yvar, extra.to(Y_tf)])
    return torch.cat([train_X, X]), torch.cat([train_Y, Y_tf]), train_Yvar


def cached_condition(
    la: LaplaceApproximation,
    conditioning: tuple[Tensor, Tensor, Tensor],
    cache: dict,
    kernel: KernelPosterior | None = None,
) -> ConditionedLaplace | KernelPosterior:
    """The exact posterior of ``la`` (or of ``kernel``, the model's exact-kernel posterior,
    when given) conditioned on ``(X_tf, Z, N)``, cached in ``cache``.

    The cache (the model's ``__dict__``) holds the last result, reused while the
    conditioning data and the posterior precision (or ``kernel``) are the same objects.
    When the conditioning data carry an autograd graph (e.g. fantasies at candidates being
    optimised) it is rebuilt per call, so each backward pass has its own graph.
    """
    Xc, Zc, Nc = conditioning
    source = la.posterior_precision() if kernel is None else kernel
    cached = cache.get("_conditioned_cache")
    if cached is not None and cached[0] is conditioning and cached[1] is source:
        return cached[2]

    def build():
        return condition(la, Xc, Zc, Nc) if kernel is None else kernel.condition(Xc, Zc, Nc)

    if Xc.requires_grad or Zc.requires_grad or Nc.requires_grad:
        return build()
    with torch.no_grad():
        post = build()
    cache["_conditioned_cache"] = (conditioning, source, post)
    return post
