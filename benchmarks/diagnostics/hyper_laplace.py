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

Variant (``surrogate_screen.py --variants``): ``gp-mgp`` (``S = 16``).
"""

from __future__ import annotations

import copy

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
    params = _raw_parameters(model)
    flat = torch.cat([p.detach().reshape(-1) for p in params])
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(SAMPLES, flat.numel(), generator=g, dtype=flat.dtype)
    draws = flat + (z / evals.sqrt()) @ evecs.T
    members = []
    for v in draws:
        member = copy.deepcopy(model)
        _set_flat(_raw_parameters(member), v)
        member.eval()
        members.append(member)
    model.eval()
    return MomentMatchedGP(members)
