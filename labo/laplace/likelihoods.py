"""Likelihoods of the data term: Gaussian regression and categorical classification.

Each offers the log-likelihood at the MAP outputs and a square root ``M`` of the
Hessian of the negative log-likelihood w.r.t. the outputs (``Λ = M Mᵀ``), which
is all the generalised Gauss-Newton needs: ``GGN = Σ_n J_nᵀ M_n M_nᵀ J_n``. For
regression ``Λ = I / σ²``; the ``1/σ²`` is kept out of the curvature so that the
posterior precision stays a cheap, differentiable function of the noise.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from labo.exceptions import (
    InputDtypeError,
    InputShapeError,
    LabelError,
    LikelihoodError,
    NonFiniteInputError,
)

LIKELIHOODS = ("regression", "classification")


def check_likelihood(likelihood: str) -> str:
    """Return ``likelihood`` if labo knows it; raise :class:`LikelihoodError` otherwise."""
    if not isinstance(likelihood, str) or likelihood not in LIKELIHOODS:
        raise LikelihoodError(
            f"likelihood must be one of {', '.join(map(repr, LIKELIHOODS))}, got {likelihood!r}."
        )
    return likelihood


def check_targets(likelihood: str, Y: Tensor, n: int, K: int, dtype: torch.dtype) -> None:
    """Raise a typed error unless ``Y`` fits ``n`` inputs and ``K`` network outputs."""
    if not isinstance(Y, Tensor):
        raise InputDtypeError(f"Y must be a torch.Tensor, got {type(Y).__name__}.")
    if likelihood == "regression":
        if Y.dim() != 2:
            hint = " (use Y.unsqueeze(-1) for one output)" if Y.dim() == 1 else ""
            raise InputShapeError(f"Expected regression Y of shape (n, K), got {tuple(Y.shape)}{hint}.")
        if Y.shape[0] != n:
            raise InputShapeError(f"X has {n} rows but Y has {Y.shape[0]} (shape {tuple(Y.shape)}).")
        if Y.shape[1] != K:
            raise InputShapeError(
                f"Y has {Y.shape[1]} columns but the network has {K} outputs (Y shape {tuple(Y.shape)})."
            )
        if Y.dtype != dtype:
            raise InputDtypeError(f"Y has dtype {Y.dtype}, expected the network's dtype {dtype}.")
        if not torch.isfinite(Y).all():
            raise NonFiniteInputError(f"Y contains {int((~torch.isfinite(Y)).sum())} NaN/inf values.")
    else:
        if Y.dim() != 1:
            raise InputShapeError(f"Expected classification labels of shape (n,), got {tuple(Y.shape)}.")
        if Y.shape[0] != n:
            raise InputShapeError(f"X has {n} rows but Y has {Y.shape[0]} labels.")
        if Y.dtype.is_floating_point or Y.dtype == torch.bool or Y.dtype.is_complex:
            raise LabelError(f"Classification labels must be an integer tensor, got dtype {Y.dtype}.")
        lo, hi = int(Y.min()), int(Y.max())
        if lo < 0 or hi >= K:
            raise LabelError(
                f"Classification labels must lie in [0, {K}) for a network with {K} outputs; "
                f"got values in [{lo}, {hi}]."
            )


def log_likelihood(likelihood: str, F: Tensor, Y: Tensor, noise_std: Tensor) -> Tensor:
    """``log p(Y | F)`` summed over the data: F ``(n, K)``, Y ``(n, K)`` or labels ``(n,)``."""
    if likelihood == "regression":
        sse = (Y - F).pow(2).sum()
        return regression_log_likelihood(sse, Y.numel(), noise_std)
    return torch.log_softmax(F, dim=-1).gather(-1, Y.long().unsqueeze(-1)).sum()


def regression_log_likelihood(sse: Tensor, n_values: int, noise_std: Tensor) -> Tensor:
    """Gaussian log-likelihood from the sum of squared residuals over ``n_values`` entries."""
    var = noise_std.pow(2)
    return -0.5 * n_values * (math.log(2 * math.pi) + torch.log(var)) - 0.5 * sse / var


def hessian_sqrt(likelihood: str, F: Tensor) -> Tensor | None:
    """``M`` with ``M Mᵀ`` = Hessian of ``-log p(y|f)`` w.r.t. ``f``: ``(n, K, K)``.

    ``None`` for regression, where the Hessian is ``I/σ²`` and the ``1/σ²`` is
    applied outside. For the softmax, ``Λ = diag(p) − p pᵀ`` and
    ``M = diag(√p) − p √pᵀ`` (using ``Σ p = 1``), so no eigendecomposition is needed.
    """
    if likelihood == "regression":
        return None
    p = torch.softmax(F, dim=-1)
    sp = p.sqrt()
    return torch.diag_embed(sp) - p.unsqueeze(-1) * sp.unsqueeze(-2)
