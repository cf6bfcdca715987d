"""Matérn random Fourier features (``RandomFourierFeatures(kernel="matern52")``) and the
kernel evidence that goes with them, checked in float64 against GPyTorch's Matérn kernel
(an independent implementation), a dense Gaussian density and finite differences."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from gpytorch.kernels import MaternKernel, RBFKernel
from torch.distributions import MultivariateNormal

from labo.exceptions import NetworkError
from labo.surrogates import FitOptions, LaplaceModel, fit_laplace_model
from labo.surrogates.feature_evidence import kernel_log_evidence
from labo.surrogates.networks import (
    RandomFourierFeatures,
    dim_scaled_lengthscale_prior,
    rff_network,
    stationary_kernel,
)

D64 = torch.float64
NU = {"matern32": 1.5, "matern52": 2.5}


def _gpytorch_kernel(kernel: str, ls: torch.Tensor):
    d = ls.numel()
    k = RBFKernel(ard_num_dims=d) if kernel == "rbf" else MaternKernel(nu=NU[kernel], ard_num_dims=d)
    k = k.to(D64)
    k.lengthscale = ls.reshape(1, d)
    return k


@pytest.mark.parametrize("kernel", ["rbf", "matern32", "matern52"])
def test_stationary_kernel_matches_gpytorch(kernel):
    g = torch.Generator().manual_seed(0)
    X = torch.rand(7, 3, generator=g, dtype=D64) * 2
    ls = torch.tensor([0.4, 0.9, 1.6], dtype=D64)
    U = X / ls
    ours = stationary_kernel(kernel, torch.cdist(U, U).pow(2))
    with torch.no_grad():
        ref = _gpytorch_kernel(kernel, ls)(X, X).to_dense()
    assert torch.allclose(ours, ref, atol=1e-10)
    assert torch.allclose(torch.diagonal(ours), torch.ones(7, dtype=D64))


@pytest.mark.parametrize("kernel", ["matern32", "matern52"])
@pytest.mark.parametrize("kind", ["cos", "sincos"])
def test_matern_features_approximate_the_matern_kernel(kernel, kind):
    d, ls = 3, 0.7
    phi = RandomFourierFeatures(d, 40000, ls, seed=1, dtype=D64, kind=kind, kernel=kernel)
    X = torch.rand(6, d, dtype=D64) * 2
    F = phi(X)
    exact = stationary_kernel(kernel, torch.cdist(X / ls, X / ls).pow(2))
    assert torch.allclose(F @ F.T, exact, atol=0.03)
    # and not the RBF's: the Matérn kernels have heavier tails at these distances
    rbf = torch.exp(-0.5 * torch.cdist(X / ls, X / ls).pow(2))
    off = ~torch.eye(6, dtype=torch.bool)
    assert (exact - rbf)[off].abs().max() > 0.05


@pytest.mark.parametrize("kernel", ["matern32", "matern52"])
def test_matern_frequencies_are_student_t_rows(kernel):
    nu = NU[kernel]
    d = 2
    phi = RandomFourierFeatures(d, 200000, 1.0, seed=4, dtype=D64, kernel=kernel)
    # each coordinate is Student-t with 2ν degrees of freedom: variance 2ν / (2ν − 2)
    var = phi.omega.var(0)
    assert torch.allclose(var, torch.full((d,), 2 * nu / (2 * nu - 2), dtype=D64), rtol=0.1)
    # the median |t| of the 2ν-dof t distribution (scipy-free reference by quadrature)
    t = torch.linspace(0, 50, 200001, dtype=D64)
    dof = 2 * nu
    log_c = math.lgamma((dof + 1) / 2) - math.lgamma(dof / 2) - 0.5 * math.log(dof * math.pi)
    pdf = torch.exp(log_c - (dof + 1) / 2 * torch.log1p(t.pow(2) / dof))
    cdf = 2 * torch.cumulative_trapezoid(pdf, t)
    median = float(t[1:][cdf >= 0.5][0])
    assert float(phi.omega.abs().median()) == pytest.approx(median, rel=0.02)


def test_rbf_draws_are_unchanged_by_the_kernel_option():
    a = RandomFourierFeatures(4, 16, 1.0, seed=3, dtype=D64)
    g = torch.Generator().manual_seed(3)
    assert a.kernel == "rbf"
    assert torch.equal(a.omega, torch.randn(16, 4, generator=g, dtype=D64))
    assert torch.equal(a.phase, 2 * torch.pi * torch.rand(16, generator=g, dtype=D64))
    # the Matérn draw keeps the same directions and phases, only the norms change
    b = RandomFourierFeatures(4, 16, 1.0, seed=3, dtype=D64, kernel="matern52")
    assert torch.equal(a.phase, b.phase)
    cos = (a.omega * b.omega).sum(-1) / (a.omega.norm(dim=-1) * b.omega.norm(dim=-1))
    assert torch.allclose(cos, torch.ones(16, dtype=D64))


def test_kernel_option_errors_name_the_argument():
    with pytest.raises(NetworkError, match="kernel must be one of"):
        RandomFourierFeatures(4, 8, 1.0, kernel="matern12")
    with pytest.raises(NetworkError, match="kernel must be one of"):
        stationary_kernel("laplace", torch.zeros(2, 2))


@pytest.mark.parametrize("kernel", ["matern32", "matern52"])
def test_kernel_evidence_of_matern_features_against_the_dense_gaussian(kernel):
    g = torch.Generator().manual_seed(0)
    X, Z = torch.rand(7, 3, generator=g, dtype=D64), torch.randn(7, 2, generator=g, dtype=D64)
    features = RandomFourierFeatures(3, 64, 1.0, seed=1, dtype=D64, kernel=kernel)
    ls = torch.tensor([0.5, 0.9, 1.7], dtype=D64)
    with torch.no_grad():
        features.log_lengthscale.copy_(ls.log())
        lam, noise = torch.tensor(1.3, dtype=D64), torch.tensor(0.3, dtype=D64)
        value = float(kernel_log_evidence(features, X, Z, lam, noise))
        K = _gpytorch_kernel(kernel, ls)(X, X).to_dense()
    cov = (K + 1.0) / 1.3 + 0.3 * torch.eye(7, dtype=D64)
    dense = sum(float(MultivariateNormal(torch.zeros(7, dtype=D64), cov).log_prob(Z[:, k])) for k in range(2))
    assert value == pytest.approx(dense, rel=1e-10)


def test_a_matern_model_is_tuned_on_the_matern_evidence():
    g = torch.Generator().manual_seed(2)
    X = torch.rand(30, 3, generator=g, dtype=D64)
    Y = torch.sin(3 * X).sum(-1, keepdim=True) + 0.05 * torch.randn(30, 1, generator=g, dtype=D64)
    net = rff_network(3, 1, n_features=64, dtype=D64, kernel="matern52")
    assert net[0].kernel == "matern52"
    model = fit_laplace_model(LaplaceModel(X, Y, network=net), FitOptions(evidence="kernel"))
    features, la = model.network[0], model.laplace
    Z = (Y - model.y_mean) / model.y_scale
    loc, scale = dim_scaled_lengthscale_prior(3)

    def objective(kernel, log_ls, log_lam, log_sigma):
        sigma = log_sigma.exp()
        probe = SimpleNamespace(log_lengthscale=log_ls, kernel=kernel)
        value = kernel_log_evidence(probe, X, Z, log_lam.exp(), sigma.pow(2))
        log_var = 2 * sigma.log()
        value = value - 0.5 * (log_var + 4.0).pow(2) - log_var
        value = value - 0.5 * (log_lam - math.log(2.0)).pow(2)
        return value - (0.5 * ((log_ls - loc) / scale).pow(2) + log_ls).sum()

    params = [
        features.log_lengthscale.detach().clone().requires_grad_(True),
        la.prior_precision.detach().log().clone().requires_grad_(True),
        la.noise_std.detach().log().clone().requires_grad_(True),
    ]
    assert float(params[2].exp()) > 0.05  # the noise floor is inactive
    grads = torch.autograd.grad(objective("matern52", *params), params)
    assert max(float(gr.abs().max()) for gr in grads) < 1e-3 * Z.numel()
    # the RBF evidence is not stationary there: the fit used the Matérn one
    grads = torch.autograd.grad(objective("rbf", *params), params)
    assert max(float(gr.abs().max()) for gr in grads) > 1e-2 * Z.numel()
