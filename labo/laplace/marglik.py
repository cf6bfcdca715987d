"""The Laplace log marginal likelihood and hyperparameter tuning by maximising it.

    log p(Y) ≈ log p(Y | θ̂) − ½ (θ̂ − θ₀)ᵀ Λ₀ (θ̂ − θ₀) − ½ [log det H − log det Λ₀],

with ``H = C/σ² + Λ₀`` (regression) or ``C + Λ₀`` (classification), the
selected weights θ̂ at the MAP, ``Λ₀`` the diagonal prior precision and ``θ₀`` the
prior mean (``la.prior_mean``, zeros unless set). It is
a differentiable function of the prior precision and of the noise.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from labo.laplace.likelihoods import regression_log_likelihood

if TYPE_CHECKING:
    from labo.laplace.laplace import LaplaceApproximation


def log_marginal_likelihood(
    la: LaplaceApproximation, prior_precision: Tensor | None = None, noise_std: Tensor | None = None
) -> Tensor:
    """Laplace log marginal likelihood of a fitted posterior (scalar tensor).

    Args:
        la: A fitted ``LaplaceApproximation``.
        prior_precision: Override of ``la.prior_precision`` (same accepted shapes).
        noise_std: Override of ``la.noise_std`` (regression only).
    """
    la.curvature.check_fitted()
    prior = la.prior_precision if prior_precision is None else la.check_prior(prior_precision)
    noise = la.noise_std if noise_std is None else la.check_noise(noise_std)
    prior_vec = la.expand_prior(prior)
    theta = la.theta_map - la.prior_mean
    if la.likelihood == "regression" and not bool(la.fixed_noise):
        n_values = int(la.n_data) * int(la.n_outputs)
        loglik = regression_log_likelihood(la.data_sse, n_values, noise)
    else:
        loglik = la.data_loglik
    precision = la.precision_at(prior, noise)
    log_prior = -0.5 * (prior_vec * theta.pow(2)).sum()
    return loglik + log_prior - 0.5 * (precision.logdet() - prior_vec.log().sum())


def optimize_hyperparameters(
    la: LaplaceApproximation,
    n_steps: int = 100,
    lr: float = 0.1,
    tune_prior: bool = True,
    tune_noise: bool = True,
    tol: float = 1e-6,
    min_noise_std: float = 0.0,
    prior_groups: Tensor | None = None,
    tie_prior: bool = False,
    hyperprior: Callable[[Tensor, Tensor], Tensor] | None = None,
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

    ``prior_groups`` (integer tensor, one entry in ``[0, G)`` per selected weight) ties
    the prior precision within groups: ``G`` values are tuned and written back as a
    per-weight prior. One group per input of the first layer is automatic relevance
    determination (ARD), a network's analogue of a GP's lengthscale per input
    (:func:`input_relevance_groups`).

    ``tie_prior=True`` tunes one common factor of the current prior precision and keeps
    the ratios between its entries (e.g. a per-tensor prior proportional to each
    layer's fan-in, the NTK scaling, whose overall scale the evidence sets).

    ``hyperprior(prior_precision, noise_std)`` returns a log density (scalar tensor)
    added to the objective: the hyperparameters are then tuned by MAP-II, as BoTorch
    tunes a GP's with its priors, which keeps a marginal likelihood that is flat in
    some direction (few data, many weights) from wandering off.

    Raises:
        ValueError: If ``min_noise_std`` is negative or not finite, or ``prior_groups``
            does not give one group in ``[0, G)`` to every selected weight with every
            group used.

    Returns:
        The log marginal likelihood at each step (before the update).
    """
    if not (min_noise_std >= 0.0 and math.isfinite(min_noise_std)):
        raise ValueError(f"min_noise_std must be a finite number >= 0, got {min_noise_std!r}.")
    tune_noise = tune_noise and la.likelihood == "regression" and not bool(la.fixed_noise)
    floor = min_noise_std if tune_noise else 0.0
    groups = None if prior_groups is None else _check_groups(prior_groups, la)
    if tie_prior and groups is not None:
        raise ValueError("tie_prior and prior_groups cannot be combined.")
    prior0 = la.prior_precision.detach()
    base = prior0
    if tie_prior:  # tune log(c) of c * prior0
        prior0 = torch.ones((), dtype=prior0.dtype, device=prior0.device)
    if groups is not None:  # start from each group's mean of the current per-weight prior
        full = la.expand_prior(prior0)
        count = torch.zeros(int(groups.max()) + 1, dtype=full.dtype, device=full.device)
        prior0 = count.index_add(0, groups, full) / count.index_add(0, groups, torch.ones_like(full))
    log_prior = prior0.log().clone().requires_grad_(tune_prior)

    def prior(v: Tensor) -> Tensor:
        if tie_prior:
            return v.exp() * base
        return v.exp() if groups is None else v.exp()[groups]

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
        lml = log_marginal_likelihood(la, prior(log_prior), noise(log_noise))
        if hyperprior is not None:
            lml = lml + hyperprior(prior(log_prior), noise(log_noise))
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
        final = log_marginal_likelihood(la, prior(log_prior), noise(log_noise))
        if hyperprior is not None:
            final = final + hyperprior(prior(log_prior), noise(log_noise))
        final = float(final)
    if final < best[0]:
        log_prior, log_noise = best[1], best[2]
    la.prior_precision = prior(log_prior.detach())
    if tune_noise:
        la.noise_std = noise(log_noise.detach())
    return history


def _check_groups(groups, la: LaplaceApproximation) -> Tensor:
    if not isinstance(groups, Tensor) or groups.dtype not in (torch.int32, torch.int64) or groups.dim() != 1:
        raise ValueError(
            "prior_groups must be a 1-D integer tensor with one group index per selected weight."
        )
    if groups.numel() != la.n_weights:
        raise ValueError(
            f"prior_groups has {groups.numel()} entries, but the posterior has "
            f"{la.n_weights} selected weights."
        )
    groups = groups.to(device=la.theta_map.device, dtype=torch.int64)
    if int(groups.min()) < 0 or torch.unique(groups).numel() != int(groups.max()) + 1:
        raise ValueError("prior_groups must use every group 0, 1, ..., G-1 (and no negative index).")
    return groups


def input_relevance_groups(la: LaplaceApproximation) -> Tensor:
    """Prior groups for automatic relevance determination (ARD) of a network's inputs.

    The weights of the first ``nn.Linear`` layer (in ``la.network``'s module order) are
    grouped by input column (groups ``0 .. d-1``: every weight leaving input ``j``
    shares one prior precision); every other selected tensor is a group of its own.
    Needs the first layer's weight to be selected whole.

    Raises:
        ValueError: If the network has no ``nn.Linear`` layer or its first one's weight
            is not wholly in the subset.
    """
    first = next((name for name, m in la.network.named_modules() if isinstance(m, torch.nn.Linear)), None)
    if first is None:
        raise ValueError("input_relevance_groups needs a network with an nn.Linear layer.")
    wname = f"{first}.weight" if first else "weight"
    groups, next_group = [], None
    selected = {s.name: s for s in la.subset.selected}
    s = selected.get(wname)
    if s is None or s.index is not None:
        raise ValueError(f"ARD needs the first layer's weight {wname!r} wholly in the Bayesian subset.")
    d = s.shape[1]
    next_group = d
    for t in la.subset.selected:
        if t.name == wname:
            groups.append(torch.arange(t.size, device=la.theta_map.device) % d)
        else:
            groups.append(torch.full((t.size,), next_group, dtype=torch.int64, device=la.theta_map.device))
            next_group += 1
    return torch.cat(groups)
