"""Evidence fit of a Bayesian last layer on learnable features (``LaplaceModel(network="rff")``).

With only the last (linear) layer Bayesian and the features ``φ(x)`` fixed, the Laplace
approximation is exact: the model is Bayesian linear regression on ``[φ(x), 1]``, whose
MAP weights are the posterior mean and whose log marginal likelihood

    log N(Z | 0, Φ Φᵀ / λ + σ² I)        (per output, summed)

is a closed-form, differentiable function of the feature parameters (the ARD
lengthscales of random Fourier features), the prior precision ``λ`` and the noise
``σ``. So all of them are tuned together on the evidence, as a GP's kernel
hyperparameters are, instead of training the features on the MAP loss (which
shrinks lengthscales to fit the data). The hyperpriors are BoTorch's GP defaults:
the dimension-scaled LogNormal on the lengthscales (Hvarfner et al. 2024) and
``LogNormal(-4, 1)`` on the noise variance, plus ``N(log 2, 1)`` on ``log λ``
(prior variance 1 of the standardised targets, split between features and bias).

The evidence is computed in the cheaper of its two exact forms: the ``n x n`` kernel
form while ``n ≤ D + 1``, the ``(D + 1) x (D + 1)`` weight form beyond (``O(n D²)``).
Afterwards the last layer is set to the posterior mean and the Laplace posterior
(last layer, ``Full``) is fitted at it with the tuned ``λ`` and ``σ``: it then equals
the exact Bayesian linear regression posterior.
"""

from __future__ import annotations

import math
import time

import torch
from torch import Tensor, nn

from labo.surrogates.map_training import minimize_lbfgs
from labo.surrogates.networks import RandomFourierFeatures, dim_scaled_lengthscale_prior

# log λ ~ N(log 2, 1): prior variance 1/λ per weight, ‖φ‖² ≈ 1 plus the bias: about 1 in all.
_LOG_PRIOR_LOC, _LOG_PRIOR_SCALE = math.log(2.0), 1.0


def split_feature_network(network: nn.Module) -> tuple[nn.Module, nn.Linear]:
    """The ``(features, last linear layer)`` of an ``nn.Sequential(features..., nn.Linear)``.

    Raises:
        TypeError: If ``network`` is not such a sequential network.
    """
    if not isinstance(network, nn.Sequential) or not isinstance(network[-1], nn.Linear) or len(network) < 2:
        raise TypeError(
            f"The evidence fit needs nn.Sequential(features..., nn.Linear), got {type(network).__name__}."
        )
    return network[:-1], network[-1]


def blr_log_evidence(Phi: Tensor, Z: Tensor, prior_precision: Tensor, noise_var: Tensor) -> Tensor:
    """Exact log marginal likelihood of Bayesian linear regression, summed over outputs.

    ``Z[:, k] ~ N(0, Φ Φᵀ / λ + diag(σ²_k))`` independently for each output ``k``.

    Args:
        Phi: ``n x D`` design matrix (features, bias column included).
        Z: ``n x m`` targets.
        prior_precision: Scalar ``λ`` (weights ``N(0, 1/λ)``).
        noise_var: Scalar ``σ²``, or ``n x m`` known noise variances.

    Returns:
        Scalar tensor.
    """
    if noise_var.dim() > 0:  # known, per-row noise: one output at a time
        return sum(
            _evidence(Phi, Z[:, k : k + 1], prior_precision, noise_var[:, k]) for k in range(Z.shape[-1])
        )
    return _evidence(Phi, Z, prior_precision, noise_var)


def blr_posterior_mean(Phi: Tensor, Z: Tensor, prior_precision: Tensor, noise_var: Tensor) -> Tensor:
    """``D x m`` posterior mean weights of Bayesian linear regression (the MAP).

    ``noise_var``: scalar ``σ²`` or ``n x m`` known noise variances."""
    if noise_var.dim() > 0:
        cols = [_mean(Phi, Z[:, k : k + 1], prior_precision, noise_var[:, k]) for k in range(Z.shape[-1])]
        return torch.cat(cols, -1)
    return _mean(Phi, Z, prior_precision, noise_var)


def _evidence(Phi: Tensor, Z: Tensor, prior_precision: Tensor, noise_var: Tensor) -> Tensor:
    """The evidence for a scalar ``noise_var`` or a vector ``(n,)`` of them."""
    n, D = Phi.shape
    m = Z.shape[-1]
    eye_n = torch.eye(n, dtype=Phi.dtype, device=Phi.device)
    if n <= D:  # kernel form
        K = (
            Phi @ Phi.T / prior_precision + noise_var * eye_n
            if noise_var.dim() == 0
            else (Phi @ Phi.T / prior_precision + torch.diag(noise_var))
        )
        L = torch.linalg.cholesky(K)
        alpha = torch.cholesky_solve(Z, L)
        return -0.5 * (Z * alpha).sum() - m * L.diagonal().log().sum() - 0.5 * n * m * math.log(2 * math.pi)
    w = (1.0 / noise_var).expand(n)
    A = (Phi.T * w) @ Phi + prior_precision * torch.eye(D, dtype=Phi.dtype, device=Phi.device)
    L = torch.linalg.cholesky(A)
    M = torch.cholesky_solve((Phi.T * w) @ Z, L)
    fit = ((Z - Phi @ M).pow(2) * w.unsqueeze(-1)).sum()
    return (
        -0.5 * m * torch.log(2 * math.pi * noise_var.expand(n)).sum()
        - 0.5 * fit
        - 0.5 * prior_precision * M.pow(2).sum()
        - m * L.diagonal().log().sum()
        + 0.5 * m * D * prior_precision.log()
    )


def _mean(Phi: Tensor, Z: Tensor, prior_precision: Tensor, noise_var: Tensor) -> Tensor:
    n, D = Phi.shape
    if n <= D:
        noise = (
            noise_var * torch.eye(n, dtype=Phi.dtype, device=Phi.device)
            if noise_var.dim() == 0
            else (torch.diag(noise_var))
        )
        K = Phi @ Phi.T / prior_precision + noise
        return Phi.T @ torch.cholesky_solve(Z, torch.linalg.cholesky(K)) / prior_precision
    w = (1.0 / noise_var).expand(n)
    A = (Phi.T * w) @ Phi + prior_precision * torch.eye(D, dtype=Phi.dtype, device=Phi.device)
    return torch.cholesky_solve((Phi.T * w) @ Z, torch.linalg.cholesky(A))


def _design(features: nn.Module, X: Tensor) -> Tensor:
    F = features(X)
    return torch.cat([F, torch.ones_like(F[:, :1])], -1)


def fit_feature_evidence(
    model, X: Tensor, Z: Tensor, max_iter: int, min_noise_std: float, noise_var: Tensor | None = None
) -> dict:
    """Tune the feature parameters, ``λ`` and ``σ`` on the exact evidence (MAP-II), set the
    last layer to the posterior mean and fit the Laplace posterior. In place.

    Args:
        model: A ``LaplaceModel`` whose network is ``nn.Sequential(features, nn.Linear)``
            with the last layer Bayesian (``network="rff"``).
        X: ``n x d`` transformed training inputs.
        Z: ``n x m`` standardised targets.
        noise_var: ``n x m`` known noise variances (standardised units), or ``None``
            to tune one noise level.
        max_iter: L-BFGS iterations.
        min_noise_std: Floor of the noise standard deviation (standardised units).

    Returns:
        ``{"steps", "seconds", "lml_history"}``.
    """
    t0 = time.perf_counter()
    la = model.laplace
    features, head = split_feature_network(model.network)
    feature_params = [p for p in features.parameters() if p.requires_grad]
    log_prior = la.prior_precision.detach().mean().log().clone().requires_grad_(True)
    start = (la.noise_std.detach().mean() - min_noise_std).clamp_min(1e-3 * max(min_noise_std, 1e-6))
    log_noise = start.log().clone().requires_grad_(True)
    ls_prior = [
        (f, *dim_scaled_lengthscale_prior(f.omega.shape[1]))
        for f in features.modules()
        if isinstance(f, RandomFourierFeatures)
    ]

    def noise_std(u: Tensor) -> Tensor:
        return min_noise_std + u.exp()

    def objective() -> Tensor:
        Phi = _design(features, X)
        if noise_var is not None:
            value = blr_log_evidence(Phi, Z, log_prior.exp(), noise_var)
        else:
            sigma = noise_std(log_noise)
            value = blr_log_evidence(Phi, Z, log_prior.exp(), sigma.pow(2))
            log_var = 2 * sigma.log()
            value = value - 0.5 * (log_var + 4.0).pow(2) - log_var  # LogNormal(-4, 1) on σ²
        value = value - 0.5 * ((log_prior - _LOG_PRIOR_LOC) / _LOG_PRIOR_SCALE).pow(2)
        for f, loc, scale in ls_prior:  # LogNormal(loc, scale) on each lengthscale
            log_ls = f.log_lengthscale
            value = value - (0.5 * ((log_ls - loc) / scale).pow(2) + log_ls).sum()
        return -value / Z.numel()

    params = [*feature_params, log_prior] + ([log_noise] if noise_var is None else [])
    history: list[float] = []
    info = minimize_lbfgs(
        objective,
        params,
        max_iter,
        tolerance_grad=1e-7,
        tolerance_change=1e-10,
        history_size=20,
        on_loss=lambda loss: history.append(-loss * Z.numel()),
    )
    steps = info["steps"]
    with torch.no_grad():
        prior, sigma = log_prior.exp(), noise_std(log_noise)
        Phi = _design(features, X)
        M = blr_posterior_mean(Phi, Z, prior, sigma.pow(2) if noise_var is None else noise_var)
        head.weight.copy_(M[:-1].T)
        head.bias.copy_(M[-1])
    la.prior_precision = prior.detach()
    if noise_var is None:
        la.noise_std = sigma.detach()
        la.fit(X, Z)
    else:
        la.fit(X, Z, noise_var=noise_var)
    return {"steps": steps, "seconds": time.perf_counter() - t0, "lml_history": history}
