"""SingleTaskGP averaged over a Laplace approximation of its hyperparameter posterior (screen only).

MAP-II (``fit_gpytorch_mll``) keeps one set of hyperparameters; with 20-150 points in
10-100 dimensions many lengthscales are barely determined by the data, and the GP's
variance ignores that uncertainty. This variant fits the GP as BoTorch does, takes the
Hessian of the negative log posterior of the raw hyperparameters (lengthscales, noise,
constant mean: the MAP-II objective) at the MAP by central differences of its gradient,
draws ``S`` hyperparameter sets from the Gaussian it defines, and moment-matches the
``S`` GPs' joint predictives into one Gaussian: the mean of their means, and the mean of
their covariances plus the covariance of their means (the "marginal GP" of Garnett,
Osborne and Hennig 2014, by sampling). The posterior stays one multivariate normal, so
every BoTorch acquisition function works.

The question it answers: does hyperparameter uncertainty, propagated cheaply, make the
GP's (and so the default's) one BO step better in high dimension?

Variants (``surrogate_screen.py --variants``): ``gp-mgp`` (``S = 16``, every raw
hyperparameter drawn) and ``gp-mgp-ls`` (the lengthscales drawn from their marginal, the
noise and the constant mean at the MAP).
"""

from __future__ import annotations

import copy
import math

import torch
from botorch.models.model import Model
from botorch.posteriors import GPyTorchPosterior
from gpytorch.distributions import MultivariateNormal

SAMPLES = 16


def _raw_parameters(model) -> list[torch.nn.Parameter]:
    return [p for _, p in sorted(model.named_parameters()) if p.requires_grad]


def _loss_and_grad(model, mll, X, y) -> tuple[float, torch.Tensor]:
    model.zero_grad()
    model.train()
    loss = -mll(model(X), y) * y.shape[-1]  # GPyTorch's MLL is the log posterior per row
    loss.backward()
    return float(loss), torch.cat([p.grad.reshape(-1) for p in _raw_parameters(model)])


def _set_flat(params: list[torch.nn.Parameter], v: torch.Tensor) -> None:
    """Copy the flat vector ``v`` into ``params`` (in place)."""
    with torch.no_grad():
        for p, chunk in zip(params, v.split([p.numel() for p in params]), strict=True):
            p.copy_(chunk.reshape(p.shape))


def hyper_hessian(model, mll, X, y, h: float = 1e-4) -> torch.Tensor:
    """Hessian of the negative log posterior of the flattened raw hyperparameters (central
    differences of the gradient), symmetrised."""
    params = _raw_parameters(model)
    flat = torch.cat([p.detach().reshape(-1) for p in params])
    cols = []
    for j in range(flat.numel()):
        e = torch.zeros_like(flat)
        e[j] = h
        _set_flat(params, flat + e)
        g_plus = _loss_and_grad(model, mll, X, y)[1]
        _set_flat(params, flat - e)
        g_minus = _loss_and_grad(model, mll, X, y)[1]
        cols.append((g_plus - g_minus) / (2 * h))
    _set_flat(params, flat)
    H = torch.stack(cols, -1)
    return 0.5 * (H + H.T)


class MomentMatchedGP(Model):
    """The moment-matched mixture of ``S`` copies of a GP with sampled hyperparameters."""

    def __init__(self, members: list) -> None:
        super().__init__()
        self.members = torch.nn.ModuleList(members)

    @property
    def num_outputs(self) -> int:
        return 1

    @property
    def batch_shape(self) -> torch.Size:
        return torch.Size()

    def posterior(self, X, output_indices=None, observation_noise=False, posterior_transform=None, **kw):
        mvns = [m.posterior(X, observation_noise=observation_noise).mvn for m in self.members]
        means = torch.stack([d.mean for d in mvns])  # S x batch x q
        covs = torch.stack([d.covariance_matrix for d in mvns])
        mean = means.mean(0)
        dev = means - mean
        cov = covs.mean(0) + torch.einsum("s...i,s...j->...ij", dev, dev) / len(mvns)
        posterior = GPyTorchPosterior(MultivariateNormal(mean, cov))
        return posterior if posterior_transform is None else posterior_transform(posterior)


def fit_mgp(name: str, X: torch.Tensor, Y: torch.Tensor, seed: int = 0):
    """``gp-mgp``: SingleTaskGP's MAP-II fit, then the moment-matched hyperparameter average."""
    from botorch.fit import fit_gpytorch_mll
    from botorch.models import SingleTaskGP
    from botorch.models.transforms import Standardize
    from gpytorch.mlls import ExactMarginalLogLikelihood

    model = SingleTaskGP(X, Y, outcome_transform=Standardize(1))
    mll = ExactMarginalLogLikelihood(model.likelihood, model)
    fit_gpytorch_mll(mll)
    Xt, yt = model.train_inputs[0], model.train_targets
    H = hyper_hessian(model, mll, Xt, yt)
    evals, evecs = torch.linalg.eigh(H)
    evals = evals.clamp_min(1e-2)  # flat or negative directions: at most variance 100 in raw units
    cov = (evecs / evals) @ evecs.T
    params = _raw_parameters(model)
    flat = torch.cat([p.detach().reshape(-1) for p in params])
    # gp-mgp-ls: only the lengthscales vary (their marginal under the Laplace posterior);
    # the noise and the constant stay at the MAP
    names = [n for n, p in sorted(model.named_parameters()) if p.requires_grad]
    sizes = [p.numel() for p in params]
    keep = torch.cat(
        [
            torch.full((k,), ("ls" not in name.split("-")) or "lengthscale" in n)
            for n, k in zip(names, sizes, strict=True)
        ]
    )
    idx = keep.nonzero().reshape(-1)
    block = cov[idx][:, idx]
    root = torch.linalg.cholesky(block + 1e-9 * torch.eye(len(idx), dtype=block.dtype))
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(SAMPLES, len(idx), generator=g, dtype=flat.dtype)
    draws = flat.repeat(SAMPLES, 1)
    draws[:, idx] += z @ root.T
    members = []
    for v in draws:
        member = copy.deepcopy(model)
        _set_flat(_raw_parameters(member), v)
        member.eval()
        members.append(member)
    model.eval()
    return MomentMatchedGP(members)


# ---------------------------------------------------------------- labo's default, averaged
def evidence_objective(model, X: torch.Tensor, Z: torch.Tensor, min_noise_std: float):
    """``(f, flat)``: the default's negative MAP-II objective (``fit_feature_evidence``, all
    rows) as a function of ``(log lengthscales, log λ, u)`` with ``σ = min_noise_std +
    exp(u)``, and that vector at the fit."""
    from labo.surrogates.feature_evidence import _gram_evidence
    from labo.surrogates.networks import dim_scaled_lengthscale_prior, squared_distances, stationary_kernel

    features, la = model.network[0], model.laplace
    d = X.shape[-1]
    loc, scale = dim_scaled_lengthscale_prior(d)
    kernel = getattr(features, "kernel", "rbf")
    log_prior_loc = math.log(2.0)

    def neg_log_post(flat: torch.Tensor) -> torch.Tensor:
        log_ls, log_lam, u = flat[:d], flat[d], flat[d + 1]
        U = X / log_ls.exp()
        G = stationary_kernel(kernel, squared_distances(U, U)) + 1.0
        sigma = min_noise_std + u.exp()
        value = _gram_evidence(G, Z, log_lam.exp(), sigma.pow(2))
        log_var = 2 * sigma.log()
        value = value - 0.5 * (log_var + 4.0).pow(2) - log_var
        value = value - 0.5 * (log_lam - log_prior_loc).pow(2)
        value = value - (0.5 * ((log_ls - loc) / scale).pow(2) + log_ls).sum()
        return -value

    sigma = la.noise_std.detach().mean()
    u = (sigma - min_noise_std).clamp_min(1e-6).log()
    flat = torch.cat(
        [
            features.log_lengthscale.detach().reshape(-1),
            la.prior_precision.detach().mean().log().reshape(1),
            u.reshape(1),
        ]
    ).to(X)
    return neg_log_post, flat


def evidence_hessian(model, X: torch.Tensor, Z: torch.Tensor, min_noise_std: float) -> torch.Tensor:
    """Hessian of :func:`evidence_objective` at the fit, symmetrised."""
    H = torch.autograd.functional.hessian(*evidence_objective(model, X, Z, min_noise_std))
    return 0.5 * (H + H.T)


def fit_default_mgp(name: str, X: torch.Tensor, Y: torch.Tensor, seed: int = 0):
    """``default-mgp``: labo's default fit, then its exact kernel posterior averaged over
    ``S`` lengthscale draws from their Laplace marginal (``λ`` and the noise at the fit)."""
    from botorch.models.transforms import Standardize

    from labo.surrogates import FitOptions, LaplaceModel, fit_laplace_model
    from labo.surrogates.averaged_posterior import AveragedKernelPosterior
    from labo.surrogates.kernel_posterior import KernelPosterior

    model = fit_laplace_model(LaplaceModel(X, Y, outcome_transform=Standardize(1)))
    if model.kernel_posterior is None:
        return model
    base = model.kernel_posterior
    Xt, Z = base.X, base.Z
    d = Xt.shape[-1]
    H = evidence_hessian(model, Xt, Z, FitOptions().min_noise_std)
    evals, evecs = torch.linalg.eigh(H)
    cov = (evecs / evals.clamp_min(1e-2)) @ evecs.T
    block = cov[:d, :d]
    root = torch.linalg.cholesky(block + 1e-9 * torch.eye(d, dtype=block.dtype))
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(SAMPLES, d, generator=g, dtype=Xt.dtype)
    log_ls = model.network[0].log_lengthscale.detach().reshape(-1)
    members = [
        KernelPosterior(base.kernel_name, (-(log_ls + dz)).exp(), Xt, Z, base.prior_precision, base.noise_var)
        for dz in z @ root.T
    ]
    model.kernel_posterior = AveragedKernelPosterior(members)
    model.fit_info["hyper_samples"] = SAMPLES
    return model
