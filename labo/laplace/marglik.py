"""The Laplace log marginal likelihood and hyperparameter tuning by maximising it.

    log p(Y) ≈ log p(Y | θ̂) − ½ θ̂ᵀ Λ₀ θ̂ − ½ [log det H − log det Λ₀],

with ``H = C/σ² + Λ₀`` (regression) or ``C + Λ₀`` (classification), the
selected weights θ̂ at the MAP and ``Λ₀`` the diagonal prior precision. It is
a differentiable function of the prior precision and of the noise.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from labo.laplace.likelihoods import regression_log_likelihood


def log_marginal_likelihood(
    la, prior_precision: Tensor | None = None, noise_std: Tensor | None = None
) -> Tensor:
    """Laplace log marginal likelihood of a fitted posterior (scalar tensor).

    Args:
        la: A fitted ``LaplaceApproximation``.
        prior_precision: Override of ``la.prior_precision`` (same accepted shapes).
        noise_std: Override of ``la.noise_std`` (regression only).
    """
    la.curvature.check_fitted()
    prior = la.prior_precision if prior_precision is None else la._check_prior(prior_precision)
    noise = la.noise_std if noise_std is None else la._check_noise(noise_std)
    prior_vec = la._expand_prior(prior)
    theta = la.theta_map
    if la.likelihood == "regression" and not bool(la.fixed_noise):
        n_values = int(la.n_data) * int(la.n_outputs)
        loglik = regression_log_likelihood(la.data_sse, n_values, noise)
    else:
        loglik = la.data_loglik
    precision = la._precision(prior, noise)
    log_prior = -0.5 * (prior_vec * theta.pow(2)).sum()
    return loglik + log_prior - 0.5 * (precision.logdet() - prior_vec.log().sum())


def optimize_hyperparameters(
    la,
    n_steps: int = 100,
    lr: float = 0.1,
    tune_prior: bool = True,
    tune_noise: bool = True,
    tol: float = 1e-6,
    min_noise_std: float = 0.0,
) -> list[float]:
    """Tune prior precision (and noise, for regression) by maximising the log marginal likelihood.

    Adam on the logarithms of the hyperparameters, keeping the shape of the
    current prior precision (scalar, per tensor or per weight). Stops after
    ``n_steps`` or when the objective changed by less than ``tol`` (relative)
    over 10 consecutive steps. The tuned values are written back to ``la``.

    ``min_noise_std > 0`` keeps the noise above a floor (it is tuned as
    ``min_noise_std + exp(u)``), as GPyTorch's noise constraint does for GPs: on
    noiseless or repeated observations the marginal likelihood otherwise drives the
    noise to zero and the posterior of a model that interpolates its data collapses.

    Raises:
        ValueError: If ``min_noise_std`` is negative or not finite.

    Returns:
        The log marginal likelihood at each step (before the update).
    """
    if not (min_noise_std >= 0.0 and math.isfinite(min_noise_std)):
        raise ValueError(f"min_noise_std must be a finite number >= 0, got {min_noise_std!r}.")
    tune_noise = tune_noise and la.likelihood == "regression" and not bool(la.fixed_noise)
    floor = min_noise_std if tune_noise else 0.0
    log_prior = la.prior_precision.detach().log().clone().requires_grad_(tune_prior)
    start = la.noise_std.detach()
    if floor > 0.0:
        start = (start - floor).clamp_min(1e-3 * floor)  # the excess over the floor
    log_noise = start.log().clone().requires_grad_(tune_noise)

    def noise(u: Tensor) -> Tensor:
        return u.exp() + floor if floor > 0.0 else u.exp()

    params = [p for p, t in ((log_prior, tune_prior), (log_noise, tune_noise)) if t]
    history: list[float] = []
    if not params:
        return history
    opt = torch.optim.Adam(params, lr=lr)
    best = (float("-inf"), log_prior.detach().clone(), log_noise.detach().clone())
    for _ in range(n_steps):
        opt.zero_grad()
        lml = log_marginal_likelihood(la, log_prior.exp(), noise(log_noise))
        value = float(lml.detach())
        history.append(value)
        if value > best[0]:
            best = (value, log_prior.detach().clone(), log_noise.detach().clone())
        (-lml).backward()
        opt.step()
        if len(history) > 10 and abs(history[-1] - history[-11]) <= tol * (abs(history[-1]) + 1):
            break
    # Keep the best iterate seen (Adam may overshoot at the end).
    with torch.no_grad():
        final = float(log_marginal_likelihood(la, log_prior.exp(), noise(log_noise)))
    if final < best[0]:
        log_prior, log_noise = best[1], best[2]
    la.prior_precision = log_prior.detach().exp()
    if tune_noise:
        la.noise_std = noise(log_noise.detach())
    return history
