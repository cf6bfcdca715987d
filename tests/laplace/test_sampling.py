"""Sampling predictive: weights, network outputs and linearised outputs."""

import copy

import pytest
import torch

from labo.laplace import Diagonal, Full, Functional, Kron, LastLayer, WeightMask, fit_laplace
from tests.conftest import make_problem


@pytest.mark.parametrize("structure", [Full(), Diagonal(), Kron(), Functional()], ids=repr)
def test_weight_samples_reproducible_with_generator(structure):
    net, X, Y = make_problem("regression", (2, 6, 1))
    la = fit_laplace(net, X, Y, structure=structure, noise_std=0.3)
    a = la.sample_weights(4, torch.Generator().manual_seed(0))
    b = la.sample_weights(4, torch.Generator().manual_seed(0))
    c = la.sample_weights(4, torch.Generator().manual_seed(1))
    assert a.shape == (4, la.n_weights)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not torch.equal(a, c)


@pytest.mark.parametrize("structure", [Full(), Diagonal(), Kron(), Functional()], ids=repr)
def test_linearized_samples_match_glm_predictive(structure):
    net, X, Y = make_problem("regression", (2, 6, 2), n=15)
    la = fit_laplace(net, X, Y, structure=structure, prior_precision=2.0, noise_std=0.5)
    Xt = torch.randn(3, 2, dtype=torch.float64)
    n = 20000
    s = la.predictive_samples(Xt, n, torch.Generator().manual_seed(0), linearized=True)
    assert s.shape == (n, 3, 2)
    mean, cov = la.predictive(Xt)
    flat = (s - mean).reshape(n, 6)
    emp = flat.T @ flat / n
    cov = cov.reshape(6, 6)
    tol = 5 * torch.sqrt(cov.diagonal().outer(cov.diagonal()) / n)
    assert ((emp - cov).abs() <= tol).all()
    assert ((s.mean(0) - mean).abs() <= 5 * torch.sqrt(cov.diagonal().reshape(3, 2) / n)).all()


def test_network_samples_use_sampled_weights():
    net, X, Y = make_problem("classification", (3, 5, 4))
    la = fit_laplace(net, X, Y, "classification", LastLayer(), Full())
    g = torch.Generator().manual_seed(3)
    thetas = la.sample_weights(2, g)
    s = la.predictive_samples(X[:4], 2, torch.Generator().manual_seed(3), linearized=False)
    f = la.subset.functional(net)
    torch.testing.assert_close(s[1], f(thetas[1], X[:4]))
    # last layer: the linearised and the network samples coincide
    lin = la.predictive_samples(X[:4], 2, torch.Generator().manual_seed(3), linearized=True)
    torch.testing.assert_close(lin, s)


def test_subnetwork_samples_vary_only_selected_weights():
    net, X, Y = make_problem("regression", (2, 6, 1))
    masks = {n: torch.zeros(p.shape, dtype=torch.bool) for n, p in net.named_parameters()}
    masks["0.weight"][1, 1] = masks["2.weight"][0, 3] = True
    la = fit_laplace(net, X, Y, weights=WeightMask(masks), structure=Full())
    full = la.sample_parameters(50, torch.Generator().manual_seed(0))
    base = torch.cat([p.detach().reshape(-1) for p in net.parameters()])
    varying = (full != base).any(0).nonzero().squeeze(-1).tolist()
    flat_mask = torch.cat([m.reshape(-1) for m in masks.values()]).nonzero().squeeze(-1).tolist()
    assert varying == flat_mask


def test_batched_sample_shapes():
    net, X, Y = make_problem("regression", (2, 6, 1))
    la = fit_laplace(net, X, Y)
    s = la.predictive_samples(torch.randn(4, 3, 2, dtype=torch.float64), 5)
    assert s.shape == (5, 4, 3, 1)


def test_float32_matches_float64():
    net, X, Y = make_problem("regression", (2, 6, 1))
    la64 = fit_laplace(net, X, Y, structure=Full(), noise_std=0.3)
    net32 = copy.deepcopy(net).float()
    la32 = fit_laplace(net32, X.float(), Y.float(), structure=Full(), noise_std=0.3)
    m32, c32 = la32.predictive(X[:3].float())
    m64, c64 = la64.predictive(X[:3])
    torch.testing.assert_close(m32.double(), m64, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(c32.double(), c64, rtol=1e-3, atol=1e-5)
    assert la32.log_marginal_likelihood().dtype == torch.float32
