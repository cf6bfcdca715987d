"""Evidence fit of a Bayesian last layer on learnable features (``LaplaceModel(network="rff")``).

With only the last (linear) layer Bayesian and the features ``φ(x)`` fixed, the Laplace
approximation is exact: the model is Bayesian linear regression on ``[φ(x), 1]``. Its
hyperparameters (the ARD lengthscales of the random Fourier features, the prior
precision ``λ`` and the noise ``σ``) are tuned together by MAP-II, as a GP's kernel
hyperparameters are, instead of training the features on the MAP loss (which shrinks
lengthscales to fit the data). The hyperpriors are BoTorch's GP defaults: the
dimension-scaled LogNormal on the lengthscales (Hvarfner et al. 2024) and
``LogNormal(-4, 1)`` on the noise variance, plus ``N(log 2, 1)`` on ``log λ`` (prior
variance 1 of the standardised targets, split between features and bias).

Two evidences can be maximised (``FitOptions.evidence``):

- ``"kernel"`` (the default): the evidence of the kernel the features approximate,
  ``log N(Z | 0, (k(X, X) + 1) / λ + σ² I)`` with ``k`` the expectation of
  ``φ(x)ᵀφ(x')`` over the random frequencies (the RBF ``exp(−‖(x − x') / ℓ‖² / 2)``
  by default, or a Matérn kernel: ``RandomFourierFeatures(kernel=)``), on at most
  ``KERNEL_EVIDENCE_ROWS`` rows (a seeded random subset beyond). ``O(rows³)`` per step,
  cheap at BO sizes.
- ``"features"``: the exact evidence of the features' own linear regression,
  ``log N(Z | 0, Φ Φᵀ / λ + σ² I)``, in the cheaper of its two exact forms (the ``n x n``
  kernel form while ``n ≤ D + 1``, the ``(D + 1) x (D + 1)`` weight form beyond,
  ``O(n D²)``).

Why the kernel's: ``d`` ARD lengthscales tuned on one fixed draw of ``D`` frequencies can
fit that draw, and then separate the active inputs from the inactive ones less, which
costs BO in high dimension; the kernel's evidence has no draw to fit
(``docs/research-log.md``, sessions 12 and 14).

Either way the last layer is then set to the posterior mean of the features' exact
Bayesian linear regression on every row and the Laplace posterior (last layer) is
fitted at it with the tuned ``λ`` and ``σ``, so it equals the exact Bayesian linear
regression posterior. With the kernel's evidence the model's posterior is by default
the exact GP of that kernel instead (``FitOptions.posterior``,
:mod:`labo.surrogates.kernel_posterior`), of which the features' is the finite-``D``
approximation.
"""

from __future__ import annotations

import math
import time

import torch
from torch import Tensor, nn

from labo.exceptions import HyperparameterError, NetworkError
from labo.surrogates.averaged_posterior import lengthscale_draws
from labo.surrogates.map_training import minimize_lbfgs
from labo.surrogates.networks import (
    RandomFourierFeatures,
    dim_scaled_lengthscale_prior,
    squared_distances,
    stationary_kernel,
)

# log λ ~ N(log 2, 1): prior variance 1/λ per weight, ‖φ‖² ≈ 1 plus the bias: about 1 in all.
_LOG_PRIOR_LOC, _LOG_PRIOR_SCALE = math.log(2.0), 1.0
# evidence="kernel": at most this many rows enter the kernel's evidence (O(rows³) per step).
KERNEL_EVIDENCE_ROWS = 1000
EVIDENCES = ("features", "kernel")
LENGTHSCALE_PRIORS = ("dim_scaled", "saas")
# "saas": ρ = ℓ⁻² ~ HalfCauchy(τ) at a fixed τ, the scale of τ's own prior in the SAAS paper
# (MAP-II of τ is unbounded as τ → 0 when fewer than half the inputs matter); each fit
# starts below SAAS_START_MAX_LENGTHSCALE, since the evidence's gradient vanishes above.
SAAS_TAU, SAAS_START_MAX_LENGTHSCALE = 0.1, 10.0


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
    if n <= D:  # kernel form
        return _gram_evidence(Phi @ Phi.T, Z, prior_precision, noise_var)
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


def _gram_evidence(G: Tensor, Z: Tensor, prior_precision: Tensor, noise_var: Tensor) -> Tensor:
    """``log N(Z | 0, G / λ + noise)`` summed over the columns of ``Z``; ``noise_var`` a
    scalar or an ``(n,)`` vector shared by the columns."""
    n, m = Z.shape
    noise = (
        noise_var * torch.eye(n, dtype=G.dtype, device=G.device)
        if noise_var.dim() == 0
        else torch.diag(noise_var)
    )
    L = torch.linalg.cholesky(G / prior_precision + noise)
    alpha = torch.cholesky_solve(Z, L)
    return -0.5 * (Z * alpha).sum() - m * L.diagonal().log().sum() - 0.5 * n * m * math.log(2 * math.pi)


def kernel_log_evidence(
    features: RandomFourierFeatures,
    X: Tensor,
    Z: Tensor,
    prior_precision: Tensor,
    noise_var: Tensor,
    log_lengthscale: Tensor | None = None,
) -> Tensor:
    """The evidence of the kernel that ``features`` approximate, summed over outputs:
    ``Z[:, k] ~ N(0, (k(X, X) + 1) / λ + diag(σ²_k))`` with ``k`` the features' kernel
    (their ``kernel``, RBF when they have none; :func:`stationary_kernel`) at their
    lengthscales (``+ 1``: the bias). Differentiable w.r.t. the lengthscales.

    Args:
        features: The random Fourier features (their ``log_lengthscale`` is used).
        X: ``n x d`` inputs.
        Z: ``n x m`` targets.
        prior_precision: Scalar ``λ``.
        noise_var: Scalar ``σ²``, or ``n x m`` known noise variances.
        log_lengthscale: Evaluate at these ``(d,)`` log-lengthscales instead of the features'.
    """
    log_ls = features.log_lengthscale if log_lengthscale is None else log_lengthscale
    U = X / log_ls.exp()
    G = stationary_kernel(getattr(features, "kernel", "rbf"), squared_distances(U, U)) + 1.0
    if noise_var.dim() > 0:
        return sum(
            _gram_evidence(G, Z[:, k : k + 1], prior_precision, noise_var[:, k]) for k in range(Z.shape[-1])
        )
    return _gram_evidence(G, Z, prior_precision, noise_var)


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
    model,
    X: Tensor,
    Z: Tensor,
    max_iter: int,
    min_noise_std: float,
    noise_var: Tensor | None = None,
    evidence: str = "kernel",
    prior_precision: float | None = None,
    lengthscale_samples: int = 0,
    lengthscale_prior: str = "dim_scaled",
    antithetic: bool = False,
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
        evidence: ``"kernel"`` (default): the evidence of the kernel the features
            approximate, on at most :data:`KERNEL_EVIDENCE_ROWS` rows (needs a single
            :class:`~labo.surrogates.networks.RandomFourierFeatures` module as features);
            ``"features"``: the exact evidence of the features' linear regression.
        prior_precision: Pin ``λ`` at this value (``1``: prior variance 1 per weight, as
            SingleTaskGP's outputscale of 1 on standardised targets) instead of tuning it
            under the ``N(log 2, 1)`` hyperprior.
        lengthscale_prior: ``"dim_scaled"``: ``LogNormal(√2 + log(d) / 2, √3)`` on each ``ℓ``;
            ``"saas"``: ``HalfCauchy(SAAS_TAU)`` on each ``ρ = ℓ⁻²`` (density in ``ρ``, as MAP-SAAS
            GPs: an input pays about 9 nats for ``ℓ = 0.3``, nothing for staying long).
        lengthscale_samples: With ``evidence="kernel"``, also draw this many
            log-lengthscale vectors from their marginal under the Laplace approximation
            of the hyperparameter posterior at the optimum
            (:func:`~labo.surrogates.averaged_posterior.lengthscale_draws`; ``antithetic``:
            in ``±`` pairs).

    Returns:
        ``{"steps", "seconds", "lml_history", "hyper_log_posterior", "lengthscale_draws"}``;
        ``hyper_log_posterior`` is the maximised objective: the log evidence plus the
        hyperpriors' log densities at the tuned values (nats, all outputs), which compares
        models fitted to the same data; ``lengthscale_draws`` is ``(S, d)`` or ``None``.
    """
    if lengthscale_prior not in LENGTHSCALE_PRIORS:
        raise HyperparameterError(f"lengthscale_prior must be one of {LENGTHSCALE_PRIORS}.")
    t0 = time.perf_counter()
    la = model.laplace
    features, head = split_feature_network(model.network)
    feature_params = [p for p in features.parameters() if p.requires_grad]
    pinned = prior_precision is not None
    if pinned and not (math.isfinite(prior_precision) and prior_precision > 0):
        raise HyperparameterError(f"prior_precision must be a positive number, got {prior_precision!r}.")
    start_prior = torch.tensor(float(prior_precision)) if pinned else la.prior_precision.detach().mean()
    log_prior = start_prior.to(X).log().clone().requires_grad_(not pinned)
    start = (la.noise_std.detach().mean() - min_noise_std).clamp_min(1e-3 * max(min_noise_std, 1e-6))
    log_noise = start.log().clone().requires_grad_(True)
    ls_prior = [
        (f, *dim_scaled_lengthscale_prior(f.omega.shape[1]))
        for f in features.modules()
        if isinstance(f, RandomFourierFeatures)
    ]
    if lengthscale_prior == "saas":  # inputs it switched off (ℓ → ∞) can come back on warm refits
        with torch.no_grad():
            for f, _, _ in ls_prior:
                f.log_lengthscale.clamp_(max=math.log(SAAS_START_MAX_LENGTHSCALE))

    def noise_std(u: Tensor) -> Tensor:
        return min_noise_std + u.exp()

    log_evidence = _evidence_function(evidence, features, X, Z, noise_var)

    def neg_log_post(log_ls: Tensor | None, log_prior_: Tensor, log_noise_: Tensor) -> Tensor:
        """Minus the MAP-II objective; ``log_ls`` replaces the (one) RFF module's."""
        if noise_var is not None:
            value = log_evidence(log_prior_.exp(), None, log_ls)
        else:
            sigma = noise_std(log_noise_)
            value = log_evidence(log_prior_.exp(), sigma.pow(2), log_ls)
            log_var = 2 * sigma.log()
            value = value - 0.5 * (log_var + 4.0).pow(2) - log_var  # LogNormal(-4, 1) on σ²
        if not pinned:
            value = value - 0.5 * ((log_prior_ - _LOG_PRIOR_LOC) / _LOG_PRIOR_SCALE).pow(2)
        for f, loc, scale in ls_prior:
            ls = f.log_lengthscale if log_ls is None else log_ls
            if lengthscale_prior == "saas":  # HalfCauchy(τ) on ρ = ℓ⁻²
                value = value - torch.log1p(((-2 * ls).exp() / SAAS_TAU).pow(2)).sum()
            else:  # LogNormal(loc, scale) on each lengthscale
                value = value - (0.5 * ((ls - loc) / scale).pow(2) + ls).sum()
        return -value

    def objective() -> Tensor:
        return neg_log_post(None, log_prior, log_noise) / Z.numel()

    params = [*feature_params] + ([] if pinned else [log_prior]) + ([log_noise] if noise_var is None else [])
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
    steps, hyper_log_posterior = info["steps"], -info["loss"] * Z.numel()  # the final objective
    draws = None
    if lengthscale_samples:
        if evidence != "kernel":
            raise HyperparameterError(
                f"lengthscale_samples needs evidence='kernel', got evidence={evidence!r}."
            )
        (rff,) = [f for f, _, _ in ls_prior]
        free = (not pinned, noise_var is None)
        draws = lengthscale_draws(
            neg_log_post, rff.log_lengthscale, log_prior, log_noise, free, lengthscale_samples, antithetic
        )
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
    return {
        "steps": steps,
        "seconds": time.perf_counter() - t0,
        "lml_history": history,
        "hyper_log_posterior": hyper_log_posterior,
        "lengthscale_draws": draws,
    }


def _evidence_function(evidence: str, features: nn.Module, X: Tensor, Z: Tensor, noise_var: Tensor | None):
    """``(λ, σ² or None, log ℓ or None) -> log evidence`` of the chosen kind (``None``: the
    known ``noise_var``; the features' log-lengthscales)."""
    if evidence not in EVIDENCES:
        raise HyperparameterError(f"evidence must be one of {EVIDENCES}, got {evidence!r}.")
    if evidence == "features":  # log_ls: only the kernel's evidence takes it
        return lambda prior, s2, log_ls=None: blr_log_evidence(
            _design(features, X), Z, prior, noise_var if s2 is None else s2
        )
    rff = list(features.children()) if isinstance(features, nn.Sequential) else [features]
    if len(rff) != 1 or not isinstance(rff[0], RandomFourierFeatures):
        raise NetworkError(
            "evidence='kernel' needs the features to be one RandomFourierFeatures module, "
            f"got {type(features).__name__}."
        )
    rows = _evidence_rows(X.shape[0], X.device)
    Xs, Zs = X[rows], Z[rows]
    known = None if noise_var is None else noise_var[rows]
    return lambda prior, s2, log_ls=None: kernel_log_evidence(
        rff[0], Xs, Zs, prior, known if s2 is None else s2, log_ls
    )


def _evidence_rows(n: int, device) -> Tensor:
    """All rows, or a seeded random subset of :data:`KERNEL_EVIDENCE_ROWS` of them."""
    if n <= KERNEL_EVIDENCE_ROWS:
        return torch.arange(n, device=device)
    g = torch.Generator().manual_seed(0)
    return torch.randperm(n, generator=g)[:KERNEL_EVIDENCE_ROWS].sort().values.to(device)
