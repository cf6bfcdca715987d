"""examples/custom_network.py's ConvSurrogate under Kron(): its Conv1d layers get Kronecker factors
(curvlinops, KFAC-expand) equal to the hand-computed reference of tests/_reference.py, and the
posterior's marginal likelihood, its gradients and predictive variances equal the dense one."""

import importlib.util
from pathlib import Path

import torch

from labo.laplace import AllWeights, Kron, fit_laplace
from tests import _reference as ref

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "custom_network.py"
TOL = {"rtol": 1e-8, "atol": 1e-10}


def load_example():
    spec = importlib.util.spec_from_file_location("custom_network_example", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_conv_surrogate_kron_equals_dense_reference():
    example = load_example()
    torch.manual_seed(0)
    net = example.ConvSurrogate(channels=3, hidden=4).double()
    g = torch.Generator().manual_seed(1)
    X = torch.rand(8, example.D, generator=g, dtype=torch.float64)
    Y = example.objective(X)
    weights = AllWeights()
    prior = torch.tensor(0.8, dtype=torch.float64)
    noise = torch.tensor(0.3, dtype=torch.float64)
    la = fit_laplace(net, X, Y, weights=weights, structure=Kron(), prior_precision=prior, noise_std=noise)
    assert la.curvature.layer_names == ["stem", "block", "head.0", "head.2"]
    assert la.curvature.rest_index.numel() == 0
    blocks = ref.dense_kfac_expand_blocks(net, X, Y, "regression", weights)
    S = la.n_weights

    def dense(p, s):
        return ref.kron_precision_from_blocks(blocks, S, ref.expand_prior(net, weights, p), s.pow(-2))

    torch.testing.assert_close(la.posterior_precision().precision(), dense(prior, noise), **TOL)
    p, s = prior.clone().requires_grad_(True), noise.clone().requires_grad_(True)
    lml = la.log_marginal_likelihood(p, s)
    grads = torch.autograd.grad(lml, [p, s])
    p2, s2 = prior.clone().requires_grad_(True), noise.clone().requires_grad_(True)
    lml_ref = ref.dense_log_marginal_likelihood(net, X, Y, "regression", weights, dense(p2, s2), p2, s2)
    grads_ref = torch.autograd.grad(lml_ref, [p2, s2])
    torch.testing.assert_close(lml.detach(), lml_ref.detach(), **TOL)
    for a, b in zip(grads, grads_ref, strict=True):
        torch.testing.assert_close(a, b, **TOL)
    X_new = torch.rand(5, example.D, generator=g, dtype=torch.float64)
    _, cov_ref = ref.dense_predictive(net, X_new, weights, dense(prior, noise))
    torch.testing.assert_close(la.predictive_variance(X_new), torch.einsum("nknk->nk", cov_ref), **TOL)
