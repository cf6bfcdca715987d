"""The default with its hyperparameters tuned on rank-warped targets: a screen-only variant.

Heavy-tailed objectives (Branin's corners, Rosenbrock, BBOB's ill-conditioned ellipsoids)
put most of the standardised targets' variance in a few large values, and the evidence
then sets the lengthscales by them, not by the structure near the optimum. Here the
kernel's hyperparameters (lengthscales, ``λ``, noise) are tuned on the normal scores of
the targets' ranks, ``Φ⁻¹((rank − ½) / n)`` (a Gaussian copula, as in Salinas et al. 2020),
and the posterior is then the default's on the raw targets at those hyperparameters
(a warm start with no evidence iterations), so it stays a Gaussian over Y and every
BoTorch acquisition applies unchanged.

Variants (``surrogate_screen.py --variants``): ``default-warp`` (every hyperparameter
from the warped fit) and ``default-warpls`` (the warped fit's lengthscales, ``λ`` and the
noise from the default's fit on the raw targets: rank-warping adds apparent noise).
"""

from __future__ import annotations

import torch


def rank_scores(Y: torch.Tensor) -> torch.Tensor:
    """Normal scores of the ranks of each column of ``Y (n, m)`` (ties broken by order)."""
    n = Y.shape[0]
    ranks = Y.argsort(0).argsort(0).to(Y.dtype)
    u = (ranks + 0.5) / n
    return torch.distributions.Normal(0.0, 1.0).icdf(u)


def fit_warped_default(name: str, X: torch.Tensor, Y: torch.Tensor):
    """``default-warp`` fitted to unit-cube ``X`` and ``Y (n, 1)``."""
    from botorch.models.transforms import Standardize

    from labo.surrogates import FitOptions, LaplaceModel, fit_laplace_model

    m = Y.shape[-1]
    tuned = fit_laplace_model(LaplaceModel(X, rank_scores(Y), outcome_transform=Standardize(m)))
    source = tuned
    if name == "default-warpls":
        source = fit_laplace_model(LaplaceModel(X, Y, outcome_transform=Standardize(m)))
    model = LaplaceModel(X, Y, outcome_transform=Standardize(m), warm_start=source)
    with torch.no_grad():
        model.network[0].log_lengthscale.copy_(tuned.network[0].log_lengthscale)
    return fit_laplace_model(model, FitOptions(evidence_iters=0))
