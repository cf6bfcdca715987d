"""The random-Fourier-feature network and its exact evidence fit (network="rff").

Checked the slow, obvious way in float64: the features' kernel against the RBF kernel,
the Bayesian-linear-regression evidence in both forms against a dense Gaussian density,
the fitted model's posterior against the explicit BLR posterior, and the evidence fit's
result against labo's own Laplace log marginal likelihood.
"""

from __future__ import annotations

import math

import pytest
import torch
from botorch.acquisition import qLogNoisyExpectedImprovement
from botorch.models.transforms import Standardize

from labo.exceptions import HyperparameterError, NetworkError
from labo.laplace import Full
from labo.surrogates import FitOptions, LaplaceModel, fit_laplace_model
from labo.surrogates.feature_evidence import blr_log_evidence, blr_posterior_mean
from labo.surrogates.networks import RandomFourierFeatures, dim_scaled_lengthscale_prior, rff_network

D64 = torch.float64


def test_features_approximate_the_rbf_kernel_with_unit_variance():
    d, ls = 3, 0.7
    phi = RandomFourierFeatures(d, 20000, ls, seed=1, dtype=D64)
    X = torch.rand(6, d, dtype=D64)
    F = phi(X)
    exact = torch.exp(-0.5 * torch.cdist(X / ls, X / ls).pow(2))
    assert torch.allclose(F @ F.T, exact, atol=0.03)
    assert torch.allclose(F.pow(2).sum(-1), torch.ones(6, dtype=D64), atol=0.03)


def test_features_are_seeded_and_the_lengthscale_is_the_only_parameter():
    a = RandomFourierFeatures(4, 16, 1.0, seed=3, dtype=D64)
    b = RandomFourierFeatures(4, 16, 1.0, seed=3, dtype=D64)
    assert torch.equal(a.omega, b.omega) and torch.equal(a.phase, b.phase)
    assert [n for n, _ in a.named_parameters()] == ["log_lengthscale"]
    with pytest.raises(NetworkError, match="n_features"):
        RandomFourierFeatures(4, 0, 1.0)
    with pytest.raises(HyperparameterError, match="lengthscale"):
        RandomFourierFeatures(4, 8, -1.0)


@pytest.mark.parametrize("orthogonal", [False, True])
def test_sincos_features_have_exactly_unit_variance_and_approximate_the_kernel(orthogonal):
    d, ls = 3, 0.7
    phi = RandomFourierFeatures(d, 20000, ls, seed=1, dtype=D64, kind="sincos", orthogonal=orthogonal)
    assert phi.n_features == 20000 and phi.omega.shape == (10000, d) and phi.phase.numel() == 0
    X = torch.rand(6, d, dtype=D64) * 3
    F = phi(X)
    exact = torch.exp(-0.5 * torch.cdist(X / ls, X / ls).pow(2))
    assert F.shape == (6, 20000) and torch.allclose(F @ F.T, exact, atol=0.03)
    # sin² + cos² = 1: the prior variance of a linear layer on top is the same everywhere
    assert torch.allclose(F.pow(2).sum(-1), torch.ones(6, dtype=D64), atol=1e-12)
    # and the kernel depends on x − x' only
    shift = torch.rand(1, d, dtype=D64)
    assert torch.allclose(phi(X + shift) @ phi(X + shift).T, F @ F.T, atol=1e-10)


def test_orthogonal_frequencies_are_orthogonal_within_a_block_and_normal_in_norm():
    d = 4
    phi = RandomFourierFeatures(d, 4000, 1.0, seed=2, dtype=D64, orthogonal=True)
    block = phi.omega[:d]
    gram = block @ block.T
    assert torch.allclose(gram - torch.diag(torch.diagonal(gram)), torch.zeros(d, d, dtype=D64), atol=1e-10)
    # every row is marginally N(0, I): squared norms are chi²(d), mean d, variance 2d
    sq = phi.omega.pow(2).sum(-1)
    assert abs(float(sq.mean()) - d) < 0.3 and abs(float(sq.var()) - 2 * d) < 1.5
    again = RandomFourierFeatures(d, 4000, 1.0, seed=2, dtype=D64, orthogonal=True)
    assert torch.equal(phi.omega, again.omega)


def test_feature_kind_errors_name_the_argument():
    with pytest.raises(NetworkError, match="kind"):
        RandomFourierFeatures(4, 8, 1.0, kind="sin")
    with pytest.raises(NetworkError, match="even n_features"):
        RandomFourierFeatures(4, 7, 1.0, kind="sincos")


def test_rff_network_starts_at_the_mode_of_the_dimension_scaled_prior():
    loc, scale = dim_scaled_lengthscale_prior(10)
    assert loc == pytest.approx(2**0.5 + 0.5 * math.log(10)) and scale == pytest.approx(3**0.5)
    net = rff_network(10, 1, n_features=32, dtype=D64)
    assert torch.allclose(net[0].log_lengthscale, torch.full((10,), loc - scale**2, dtype=D64))


@pytest.mark.parametrize("n", [5, 30])  # kernel form (n <= D) and weight form (n > D)
def test_blr_evidence_and_mean_against_the_dense_gaussian(n):
    g = torch.Generator().manual_seed(n)
    D, m = 12, 2
    Phi = torch.randn(n, D, generator=g, dtype=D64)
    Z = torch.randn(n, m, generator=g, dtype=D64)
    lam, s2 = torch.tensor(1.7, dtype=D64), torch.tensor(0.3, dtype=D64)
    K = Phi @ Phi.T / lam + s2 * torch.eye(n, dtype=D64)
    dist = torch.distributions.MultivariateNormal(torch.zeros(n, dtype=D64), K)
    expected = sum(dist.log_prob(Z[:, k]) for k in range(m))
    assert blr_log_evidence(Phi, Z, lam, s2) == pytest.approx(float(expected), rel=1e-10)
    A = Phi.T @ Phi / s2 + lam * torch.eye(D, dtype=D64)
    assert torch.allclose(blr_posterior_mean(Phi, Z, lam, s2), torch.linalg.solve(A, Phi.T @ Z / s2))
    # gradients w.r.t. the hyperparameters agree with finite differences
    lam_ = lam.clone().requires_grad_(True)
    torch.autograd.gradcheck(lambda a: blr_log_evidence(Phi, Z, a, s2), (lam_,))


def _data(n=25, d=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.rand(n, d, generator=g, dtype=D64)
    Y = torch.sin(3 * X).sum(-1, keepdim=True) + 0.05 * torch.randn(n, 1, generator=g, dtype=D64)
    return X, Y


@pytest.mark.parametrize(
    "n, structure, kind",
    [(25, "Functional", "cos"), (300, "Kron", "cos"), (25, "Full", "cos"), (25, "Functional", "sincos")],
)
def test_fitted_model_is_the_exact_blr_posterior_and_its_lml_is_labos(n, structure, kind):
    """Functional (few rows) and Kron (more) are the defaults; both are exact for a last layer."""
    X, Y = _data(n=n)
    net = rff_network(3, 1, n_features=64, dtype=D64, kind=kind)
    kw = {"structure": Full()} if structure == "Full" else {}
    opts = FitOptions(evidence_iters=30, posterior="features")  # the features' own posterior
    model = fit_laplace_model(LaplaceModel(X, Y, network=net, **kw), opts)
    assert type(model.laplace.structure).__name__ == structure
    la = model.laplace
    Z = (Y - model.y_mean) / model.y_scale
    feats = model.network[0]
    with torch.no_grad():
        Phi = torch.cat([feats(X), torch.ones(X.shape[0], 1, dtype=D64)], -1)
    lam, s2 = la.prior_precision, la.noise_std.pow(2)
    assert float(la.noise_std) >= 0.01
    # the last layer is the posterior mean, and labo's Laplace LML equals the exact evidence
    M = blr_posterior_mean(Phi, Z, lam, s2)
    assert torch.allclose(model.network[-1].weight.detach(), M[:-1].T, atol=1e-8)
    assert float(la.log_marginal_likelihood()) == pytest.approx(
        float(blr_log_evidence(Phi, Z, lam, s2)), rel=1e-8
    )
    # the posterior over f at new points is the BLR posterior (in z-space, times y_scale²)
    Xt = torch.rand(7, 3, dtype=D64, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        Pt = torch.cat([feats(Xt), torch.ones(7, 1, dtype=D64)], -1)
        cov = Pt @ torch.linalg.inv(Phi.T @ Phi / s2 + lam * torch.eye(Phi.shape[1], dtype=D64)) @ Pt.T
        post = model.posterior(Xt)
    assert torch.allclose(
        post.mean.squeeze(-1), (Pt @ M).squeeze(-1) * model.y_scale + model.y_mean, atol=1e-7
    )
    assert torch.allclose(post.covariance_matrix, cov * model.y_scale.pow(2), atol=1e-7)
    assert model.fit_info["lml_history"] and model.fit_info["train_steps"][0] >= 1


def test_evidence_fit_improves_on_the_start_and_warm_starts():
    X, Y = _data(n=40, d=2, seed=1)
    model = LaplaceModel(X, Y, network="rff", outcome_transform=Standardize(1))
    fit_laplace_model(model, FitOptions(evidence_iters=40))
    hist = model.fit_info["lml_history"]
    assert max(hist) >= hist[0]
    ls = model.network[0].log_lengthscale.detach().clone()
    X2, Y2 = _data(n=44, d=2, seed=1)
    warm = LaplaceModel(X2, Y2, network="rff", outcome_transform=Standardize(1), warm_start=model)
    assert torch.equal(warm.network[0].log_lengthscale.detach(), ls)
    assert float(warm.laplace.prior_precision) == float(model.laplace.prior_precision)
    fit_laplace_model(warm, FitOptions(evidence_iters=40))
    assert warm.fit_info["warm_start"]


def test_rff_model_prior_variance_is_bounded_far_from_the_data():
    """The point of the network: no variance growth towards the corners."""
    X, Y = _data(n=20, d=6, seed=2)
    model = fit_laplace_model(LaplaceModel(X, Y, network="rff"), FitOptions(evidence_iters=30))
    corners = torch.randint(0, 2, (64, 6), generator=torch.Generator().manual_seed(0)).to(D64)
    with torch.no_grad():
        var = model.posterior(corners.unsqueeze(-2)).variance.squeeze()
    prior_var = (1 + 1) / float(model.laplace.prior_precision) * float(model.y_scale) ** 2  # ‖φ‖² ≈ 1, bias 1
    assert float(var.max()) <= 1.2 * prior_var


def test_rff_model_gives_acquisition_gradients():
    X, Y = _data(n=15, d=3, seed=3)
    model = fit_laplace_model(LaplaceModel(X, Y, network="rff"), FitOptions(evidence_iters=20))
    acqf = qLogNoisyExpectedImprovement(model, X_baseline=X)
    Xc = torch.rand(4, 2, 3, dtype=D64, requires_grad=True)
    acqf(Xc).sum().backward()
    assert Xc.grad is not None and torch.isfinite(Xc.grad).all() and Xc.grad.abs().sum() > 0


@pytest.mark.parametrize("n", [6, 30])  # kernel and weight forms
def test_blr_evidence_with_known_per_row_noise(n):
    g = torch.Generator().manual_seed(n)
    Phi = torch.randn(n, 12, generator=g, dtype=D64)
    Z = torch.randn(n, 2, generator=g, dtype=D64)
    lam = torch.tensor(0.8, dtype=D64)
    noise = 0.1 + torch.rand(n, 2, generator=g, dtype=D64)
    expected, means = 0.0, []
    for k in range(2):
        K = Phi @ Phi.T / lam + torch.diag(noise[:, k])
        expected += torch.distributions.MultivariateNormal(torch.zeros(n, dtype=D64), K).log_prob(Z[:, k])
        A = (Phi.T / noise[:, k]) @ Phi + lam * torch.eye(12, dtype=D64)
        means.append(torch.linalg.solve(A, (Phi.T / noise[:, k]) @ Z[:, k : k + 1]))
    assert blr_log_evidence(Phi, Z, lam, noise) == pytest.approx(float(expected), rel=1e-10)
    assert torch.allclose(blr_posterior_mean(Phi, Z, lam, noise), torch.cat(means, -1))


def test_known_noise_model_keeps_the_noise_and_is_the_exact_posterior():
    X, Y = _data(n=20)
    Yvar = torch.full_like(Y, 0.01)
    net = rff_network(3, 1, n_features=32, dtype=D64)
    model = fit_laplace_model(LaplaceModel(X, Y, Yvar, network=net), FitOptions(evidence_iters=20))
    assert model.evidence_fit and bool(model.laplace.fixed_noise)
    Z = (Y - model.y_mean) / model.y_scale
    with torch.no_grad():
        Phi = torch.cat([net[0](X), torch.ones(20, 1, dtype=D64)], -1)
    known = Yvar / model.y_scale.pow(2)
    M = blr_posterior_mean(Phi, Z, model.laplace.prior_precision, known)
    assert torch.allclose(net[-1].weight.detach(), M[:-1].T, atol=1e-8)
    lml = float(model.laplace.log_marginal_likelihood())
    assert lml == pytest.approx(
        float(blr_log_evidence(Phi, Z, model.laplace.prior_precision, known)), rel=1e-8
    )


def test_the_default_network_is_rff_with_its_last_layer_bayesian():
    X, Y = _data(n=12)
    model = LaplaceModel(X, Y)
    assert model.evidence_fit and isinstance(model.network[0], RandomFourierFeatures)
    assert type(model.laplace.weights).__name__ == "LastLayer"
    assert not LaplaceModel(X, Y, network="mlp").evidence_fit
