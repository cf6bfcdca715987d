"""Posterior function samples: moments vs the GLM predictive, x-gradients, reproducibility."""

import pytest
import torch

from labo.exceptions import HyperparameterError, InputShapeError
from labo.laplace import Diagonal, Full, Functional, Kron, LastLayer, fit_laplace
from labo.laplace.predictive.function_samples import FunctionSamples
from tests._reference import dense_precision, subset_jacobian
from tests.conftest import make_problem

STRUCTURES = [Full(), Diagonal(), Kron(), Functional()]


def _fitted(structure, sizes=(2, 6, 2), n=15, weights=None, likelihood="regression"):
    net, X, Y = make_problem(likelihood, sizes, n=n)
    la = fit_laplace(net, X, Y, likelihood, weights, structure, prior_precision=2.0, noise_std=0.5)
    return la, net, X, Y


@pytest.mark.parametrize("structure", STRUCTURES, ids=repr)
def test_sample_moments_match_dense_glm_predictive(structure):
    la, net, X, Y = _fitted(structure)
    Xt = torch.randn(3, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    n = 20000
    fs = la.sample_functions(n, generator=torch.Generator().manual_seed(0))
    s = fs(Xt)
    assert s.shape == (n, 3, 2)
    # dense reference: J from jacrev over all weights, H by its definition, explicit inverse
    name = {"Full()": "full", "Diagonal()": "diagonal", "Kron()": "kron", "Functional()": "functional"}
    H = dense_precision(
        net,
        X,
        Y,
        "regression",
        la.weights,
        name[repr(structure)],
        torch.tensor(2.0).double(),
        torch.tensor(0.5).double(),
    )
    F, J = subset_jacobian(net, Xt, la.weights)
    Jf = J.reshape(6, -1)
    cov = Jf @ torch.linalg.inv(H) @ Jf.T
    flat = (s - F).reshape(n, 6)
    emp = flat.T @ flat / n
    # standard error of an empirical covariance entry: sqrt((C_ii C_jj + C_ij²) / n)
    sd = torch.sqrt((cov.diagonal().outer(cov.diagonal()) + cov.pow(2)) / n)
    assert ((emp - cov).abs() <= 5 * sd).all()
    assert ((s.mean(0) - F).abs() <= 5 * torch.sqrt(cov.diagonal().reshape(3, 2) / n)).all()


def test_samples_are_exact_linearised_functions():
    la, net, X, Y = _fitted(Full())
    fs = la.sample_functions(4, generator=torch.Generator().manual_seed(1))
    Xt = torch.randn(5, 2, dtype=torch.float64)
    F, J = subset_jacobian(net, Xt, la.weights)
    expected = F + torch.einsum("nks,bs->bnk", J, fs.deltas)
    torch.testing.assert_close(fs(Xt), expected, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(fs.weights, la.theta_map + fs.deltas)


@pytest.mark.parametrize("structure", [Full(), Functional()], ids=repr)
def test_x_gradients_match_finite_differences(structure):
    la, *_ = _fitted(structure)
    fs = la.sample_functions(3, generator=torch.Generator().manual_seed(2))
    x0 = torch.randn(2, 4, 2, dtype=torch.float64)  # batch 2 x n 4 x d 2
    w = torch.randn(3, 2, 4, 2, dtype=torch.float64)
    x = x0.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad((fs(x) * w).sum(), x)
    eps = 1e-6
    fd = torch.zeros_like(x0)
    for idx in torch.cartesian_prod(*[torch.arange(k) for k in x0.shape]):
        e = torch.zeros_like(x0)
        e[tuple(idx)] = eps
        fd[tuple(idx)] = ((fs(x0 + e) * w).sum() - (fs(x0 - e) * w).sum()) / (2 * eps)
    torch.testing.assert_close(grad, fd, rtol=1e-6, atol=1e-8)


def test_paired_evaluation_equals_diagonal_of_full_evaluation():
    la, *_ = _fitted(Kron())
    fs = la.sample_functions(3, generator=torch.Generator().manual_seed(3))
    X = torch.randn(3, 5, 1, 2, dtype=torch.float64)
    paired = fs.paired(X)
    assert paired.shape == (3, 5, 1, 2)
    full = fs(X)  # (3 samples, 3, 5, 1, 2)
    for i in range(3):
        torch.testing.assert_close(paired[i], full[i, i])
    # x-gradients flow through the paired path too
    x = X.clone().requires_grad_(True)
    fs.paired(x).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_reproducible_with_generator_and_deterministic():
    la, *_ = _fitted(Functional())
    Xt = torch.randn(4, 2, dtype=torch.float64)
    a = la.sample_functions(5, generator=torch.Generator().manual_seed(7))
    b = la.sample_functions(5, generator=torch.Generator().manual_seed(7))
    c = la.sample_functions(5, generator=torch.Generator().manual_seed(8))
    torch.testing.assert_close(a(Xt), b(Xt), rtol=0, atol=0)
    torch.testing.assert_close(a(Xt), a(Xt), rtol=0, atol=0)  # a function, not a fresh draw
    assert not torch.allclose(a(Xt), c(Xt))
    # a sub-batch evaluates the same functions
    torch.testing.assert_close(a[1:3](Xt), a(Xt)[1:3])
    torch.testing.assert_close(a[-1](Xt), a(Xt)[-1:])


def test_last_layer_samples_equal_network_with_sampled_weights():
    la, net, X, Y = _fitted(Full(), sizes=(3, 5, 4), weights=LastLayer(), likelihood="classification")
    fs = la.sample_functions(2, generator=torch.Generator().manual_seed(4))
    f = la.subset.functional(net)
    torch.testing.assert_close(fs(X[:4])[1], f(fs.weights[1], X[:4]))


def test_float32():
    net, X, Y = make_problem("regression", (2, 6, 1))
    net, X, Y = net.float(), X.float(), Y.float()
    la = fit_laplace(net, X, Y, structure=Functional(), noise_std=0.3)
    out = la.sample_functions(3)(X[:2])
    assert out.dtype == torch.float32 and out.shape == (3, 2, 1)


def test_bad_input():
    la, *_ = _fitted(Full())
    for bad in (0, -1, 2.5, True, "3"):
        with pytest.raises(HyperparameterError, match="num_samples"):
            la.sample_functions(bad)
    with pytest.raises(TypeError, match="generator"):
        la.sample_functions(2, generator=3)
    fs = la.sample_functions(2)
    with pytest.raises(InputShapeError, match=r"n, 2\), got \(4, 3\)"):
        fs(torch.randn(4, 3, dtype=torch.float64))
    with pytest.raises(InputShapeError, match="paired"):
        fs.paired(torch.randn(3, 4, 2, dtype=torch.float64))
    with pytest.raises(InputShapeError, match="deltas"):
        FunctionSamples(la, torch.zeros(2, la.n_weights + 1, dtype=torch.float64))
