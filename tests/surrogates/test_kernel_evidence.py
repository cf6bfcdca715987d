"""evidence="kernel": the rff network's hyperparameters tuned on the evidence of the RBF
kernel its features approximate, checked against a dense Gaussian density in float64."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from torch.distributions import MultivariateNormal

import labo.surrogates.feature_evidence as fe
from labo.exceptions import HyperparameterError, NetworkError
from labo.surrogates import FitOptions, LaplaceModel, fit_laplace_model
from labo.surrogates.feature_evidence import blr_log_evidence, blr_posterior_mean, kernel_log_evidence
from labo.surrogates.networks import RandomFourierFeatures, dim_scaled_lengthscale_prior, rff_network

D64 = torch.float64


def _dense(X, Z, ls, lam, noise):
    """Sum over outputs of log N(Z[:, k]; 0, (k(X, X) + 1) / λ + diag(noise[:, k])), explicitly."""
    n = X.shape[0]
    K = torch.tensor(
        [[math.exp(-0.5 * float(((X[i] - X[j]) / ls).pow(2).sum())) for j in range(n)] for i in range(n)],
        dtype=D64,
    )
    total = 0.0
    for k in range(Z.shape[1]):
        cov = (K + 1.0) / lam + torch.diag(noise[:, k])
        total += float(MultivariateNormal(torch.zeros(n, dtype=D64), cov).log_prob(Z[:, k]))
    return total


@pytest.mark.parametrize("known", [False, True])
def test_kernel_evidence_against_the_dense_gaussian_and_many_features(known):
    g = torch.Generator().manual_seed(0)
    X, Z = torch.rand(7, 3, generator=g, dtype=D64), torch.randn(7, 2, generator=g, dtype=D64)
    features = RandomFourierFeatures(3, 200000, 1.0, seed=1, dtype=D64, kind="sincos")
    ls = torch.tensor([0.5, 0.9, 1.7], dtype=D64)
    with torch.no_grad():
        features.log_lengthscale.copy_(ls.log())
    lam = torch.tensor(1.3, dtype=D64)
    noise = 0.05 + 0.2 * torch.rand(7, 2, generator=g, dtype=D64) if known else torch.tensor(0.3, dtype=D64)
    with torch.no_grad():
        value = float(kernel_log_evidence(features, X, Z, lam, noise))
    dense_noise = noise if known else noise.expand(7, 2)
    assert value == pytest.approx(_dense(X, Z, ls, float(lam), dense_noise), rel=1e-10)
    # the features' evidence converges to it as the number of frequencies grows
    with torch.no_grad():
        Phi = torch.cat([features(X), torch.ones(7, 1, dtype=D64)], -1)
    assert float(blr_log_evidence(Phi, Z, lam, noise)) == pytest.approx(value, abs=0.05)


@pytest.mark.parametrize("kernel", [None, "matern32", "matern52"])  # None: no kernel attribute, RBF
def test_kernel_evidence_gradients_match_finite_differences(kernel):
    g = torch.Generator().manual_seed(1)
    X, Z = torch.rand(6, 2, generator=g, dtype=D64), torch.randn(6, 1, generator=g, dtype=D64)
    lam = torch.tensor(0.7, dtype=D64, requires_grad=True)
    s2 = torch.tensor(0.2, dtype=D64, requires_grad=True)
    extra = {} if kernel is None else {"kernel": kernel}

    def fn(log_ls, lam, s2):  # the evidence reads only the features' log_lengthscale (and kernel)
        return kernel_log_evidence(SimpleNamespace(log_lengthscale=log_ls, **extra), X, Z, lam, s2)

    log_ls = torch.tensor([-0.1, 0.3], dtype=D64, requires_grad=True)
    assert torch.autograd.gradcheck(fn, (log_ls, lam, s2))


def test_fit_on_the_kernel_evidence_stops_at_its_stationary_point_and_sets_the_blr_mean():
    g = torch.Generator().manual_seed(2)
    X = torch.rand(30, 3, generator=g, dtype=D64)
    Y = torch.sin(3 * X).sum(-1, keepdim=True) + 0.05 * torch.randn(30, 1, generator=g, dtype=D64)
    model = fit_laplace_model(
        LaplaceModel(X, Y, network=rff_network(3, 1, n_features=64, dtype=D64)), FitOptions(evidence="kernel")
    )
    features, la = model.network[0], model.laplace
    Z = (Y - model.y_mean) / model.y_scale
    log_ls = features.log_lengthscale.detach().clone().requires_grad_(True)
    log_lam = la.prior_precision.detach().log().clone().requires_grad_(True)
    log_sigma = la.noise_std.detach().log().clone().requires_grad_(True)
    loc, scale = dim_scaled_lengthscale_prior(3)
    probe = SimpleNamespace(log_lengthscale=log_ls)
    sigma = log_sigma.exp()  # the fit's noise floor is inactive here (sigma well above 1e-2)
    assert float(sigma) > 0.05
    value = kernel_log_evidence(probe, X, Z, log_lam.exp(), sigma.pow(2))
    log_var = 2 * sigma.log()
    value = value - 0.5 * (log_var + 4.0).pow(2) - log_var
    value = value - 0.5 * ((log_lam - math.log(2.0)) / 1.0).pow(2)
    value = value - (0.5 * ((log_ls - loc) / scale).pow(2) + log_ls).sum()
    grads = torch.autograd.grad(value, (log_ls, log_lam, log_sigma))
    assert max(float(gr.abs().max()) for gr in grads) < 1e-3 * Z.numel()
    # the maximised objective it reports is this one, at the tuned values
    assert model.fit_info["hyper_log_posterior"] == pytest.approx(float(value), rel=1e-10, abs=1e-10)
    # the last layer is the features' exact posterior mean at those hyperparameters
    with torch.no_grad():
        Phi = torch.cat([features(X), torch.ones(30, 1, dtype=D64)], -1)
        M = blr_posterior_mean(Phi, Z, la.prior_precision, la.noise_std.pow(2))
    assert torch.allclose(model.network[-1].weight.detach(), M[:-1].T, atol=1e-8)


def test_kernel_evidence_uses_a_seeded_subset_of_rows_beyond_the_cap(monkeypatch):
    monkeypatch.setattr(fe, "KERNEL_EVIDENCE_ROWS", 10)
    rows = fe._evidence_rows(25, torch.device("cpu"))
    assert rows.shape == (10,) and torch.equal(rows, fe._evidence_rows(25, torch.device("cpu")))
    assert torch.equal(rows, rows.sort().values) and len(set(rows.tolist())) == 10
    assert torch.equal(fe._evidence_rows(8, torch.device("cpu")), torch.arange(8))
    X = torch.rand(25, 2, dtype=D64)
    Y = X.sum(-1, keepdim=True)
    model = fit_laplace_model(
        LaplaceModel(X, Y, network=rff_network(2, 1, n_features=32, dtype=D64)),
        FitOptions(evidence="kernel", evidence_iters=5),
    )
    assert model.laplace.noise_std.isfinite() and model.fit_info["train_steps"][0] >= 1


def test_evidence_option_errors():
    with pytest.raises(HyperparameterError, match="evidence must be one of"):
        FitOptions(evidence="exact")
    X = torch.rand(8, 2, dtype=D64)
    net = torch.nn.Sequential(
        RandomFourierFeatures(2, 16, 1.0, dtype=D64), torch.nn.Tanh(), torch.nn.Linear(16, 1, dtype=D64)
    )
    with pytest.raises(NetworkError, match="one RandomFourierFeatures module"):
        fe._evidence_function("kernel", net[:-1], X, X[:, :1], None)


@pytest.mark.parametrize("evidence", ["features", "kernel"])
def test_pinned_prior_precision_stays_and_the_rest_is_tuned(evidence):
    g = torch.Generator().manual_seed(3)
    X = torch.rand(20, 2, generator=g, dtype=D64)
    Y = torch.cos(4 * X).sum(-1, keepdim=True)
    net = rff_network(2, 1, n_features=32, dtype=D64)
    start = net[0].log_lengthscale.detach().clone()
    opts = FitOptions(evidence=evidence, evidence_prior_precision=1.0)
    model = fit_laplace_model(LaplaceModel(X, Y, network=net), opts)
    assert float(model.laplace.prior_precision) == pytest.approx(1.0, abs=1e-12)
    assert not torch.allclose(model.network[0].log_lengthscale.detach(), start)
    with pytest.raises(HyperparameterError, match="prior_precision must be a positive number"):
        fit_laplace_model(
            LaplaceModel(X, Y, network=rff_network(2, 1, n_features=8, dtype=D64)),
            FitOptions(evidence_prior_precision=-1.0),
        )


def test_the_default_fit_tunes_on_the_kernel_evidence():
    assert FitOptions().evidence == "kernel"
    g = torch.Generator().manual_seed(5)
    X = torch.rand(20, 3, generator=g, dtype=D64)
    Y = torch.cos(4 * X).sum(-1, keepdim=True) + 0.05 * torch.randn(20, 1, generator=g, dtype=D64)
    fits = {
        name: fit_laplace_model(LaplaceModel(X, Y, network=rff_network(3, 1, n_features=64, dtype=D64)), opts)
        for name, opts in (
            ("default", None),
            ("kernel", FitOptions(evidence="kernel")),
            ("features", FitOptions(evidence="features")),
        )
    }

    def hyper(model):
        return torch.cat(
            [model.network[0].log_lengthscale.detach(), model.laplace.prior_precision.reshape(1)]
        )

    assert torch.equal(hyper(fits["default"]), hyper(fits["kernel"]))
    assert not torch.allclose(hyper(fits["default"]), hyper(fits["features"]), atol=1e-3)
