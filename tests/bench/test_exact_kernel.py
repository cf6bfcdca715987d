"""Research method ``laplace-exact-kernel``: the exact GP of the default's kernel at its tuned
hyperparameters, checked in float64 against the GP posterior written out densely."""

from __future__ import annotations

import pytest
import torch
from botorch.models import SingleTaskGP
from botorch.models.transforms import Standardize

from labo.bench import runner
from labo.bench.exact_kernel import exact_kernel_gp
from labo.exceptions import BenchmarkError
from labo.surrogates import FitOptions, LaplaceModel, fit_laplace_model
from labo.surrogates.networks import rff_network, stationary_kernel

D64 = torch.float64


def _data(n=15, d=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.rand(n, d, generator=g, dtype=D64)
    Y = 3.0 + 2.0 * torch.sin(4 * X).sum(-1, keepdim=True) + 0.05 * torch.randn(n, 1, generator=g, dtype=D64)
    return X, Y


def _dense_posterior(model: LaplaceModel, X, Y, Xs):
    """Mean and covariance at ``Xs`` (original units) of z ~ GP(0, (k + 1) / λ), noise σ²."""
    features, la = model.network[0], model.laplace
    ls = features.log_lengthscale.detach().exp()
    lam, sigma2 = float(la.prior_precision.mean()), float(la.noise_std.mean()) ** 2

    def k(A, B):
        return (stationary_kernel(features.kernel, torch.cdist(A / ls, B / ls).pow(2)) + 1.0) / lam

    y_tf = model.outcome_transform(Y)[0]
    mu, s = model.y_mean.reshape(()), model.y_scale.reshape(())
    z = (y_tf - mu) / s
    K = k(X, X) + sigma2 * torch.eye(len(X), dtype=D64)
    kx = k(Xs, X)
    mean_z = kx @ torch.linalg.solve(K, z)
    cov_z = k(Xs, Xs) - kx @ torch.linalg.solve(K, kx.T)
    sd0, m0 = model.outcome_transform.stdvs.reshape(()), model.outcome_transform.means.reshape(())
    mean = m0 + sd0 * (mu + s * mean_z.squeeze(-1))
    cov = (sd0 * s) ** 2 * cov_z
    return mean, cov


@pytest.mark.parametrize("kernel", ["rbf", "matern52"])
def test_exact_kernel_gp_is_the_dense_gp_at_the_models_hyperparameters(kernel):
    X, Y = _data()
    net = rff_network(2, 1, n_features=64, dtype=D64, kernel=kernel)
    model = LaplaceModel(X, Y, network=net, outcome_transform=Standardize(1))
    model = fit_laplace_model(model, FitOptions(posterior="features"))  # the features' own posterior
    gp = exact_kernel_gp(model, X, Y)
    Xs = torch.rand(5, 2, dtype=D64)
    with torch.no_grad():
        post = gp.posterior(Xs)
    mean, cov = _dense_posterior(model, X, Y, Xs)
    assert torch.allclose(post.mean.squeeze(-1), mean, atol=1e-8)
    assert torch.allclose(post.distribution.covariance_matrix, cov, atol=1e-8)
    # nothing of the GP is trainable state that a later fit could move: it is fixed
    assert not any(p.grad is not None for p in gp.parameters())


def test_exact_kernel_is_close_to_many_features():
    X, Y = _data(n=12, seed=1)
    net = rff_network(2, 1, n_features=20000, dtype=D64, kind="sincos")
    model = LaplaceModel(X, Y, network=net, outcome_transform=Standardize(1))
    model = fit_laplace_model(model, FitOptions(posterior="features"))  # the features' own posterior
    gp = exact_kernel_gp(model, X, Y)
    Xs = torch.rand(6, 2, dtype=D64)
    with torch.no_grad():
        a, b = gp.posterior(Xs), model.posterior(Xs)
    scale = float(Y.std())
    assert torch.allclose(a.mean, b.mean, atol=0.05 * scale)
    assert torch.allclose(a.variance.sqrt(), b.variance.sqrt(), atol=0.05 * scale)


def test_the_method_returns_the_gp_and_warm_starts_its_source():
    X, Y = _data(n=12, d=3, seed=2)
    gp = runner.fit_model("laplace-exact-kernel", X, Y)
    assert isinstance(gp, SingleTaskGP) and isinstance(gp.laplace_source, LaplaceModel)
    assert not any(isinstance(m, LaplaceModel) for m in gp.modules())  # not a submodule
    assert not gp.laplace_source.fit_info["warm_start"]
    X2, Y2 = torch.cat([X, torch.rand(2, 3, dtype=D64)]), torch.cat([Y, Y[:2]])
    again = runner.fit_model("laplace-exact-kernel", X2, Y2, previous=gp)
    assert again.laplace_source.fit_info["warm_start"]


def test_exact_kernel_gp_refuses_other_models():
    X, Y = _data()
    mlp = LaplaceModel(X, Y, network="mlp")
    with pytest.raises(BenchmarkError, match="random Fourier features"):
        exact_kernel_gp(mlp, X, Y)
    Y2 = torch.cat([Y, -Y], -1)
    two = LaplaceModel(X, Y2)
    with pytest.raises(BenchmarkError, match="one-output"):
        exact_kernel_gp(two, X, Y2)
