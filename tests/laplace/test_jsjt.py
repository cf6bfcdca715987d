"""Every J·S·Jᵀ backend mode equals the dense reference: values and x-gradients (issue 5)."""

import pytest
import torch

from labo.exceptions import HyperparameterError, StructureError
from labo.laplace import AllWeights, Diagonal, Full, Functional, Kron, LastLayer, WeightMask, fit_laplace
from labo.laplace.predictive.jsjt import auto_mode
from tests._reference import dense_precision, dense_predictive
from tests.conftest import make_problem

STRUCTURES = {"full": Full(), "diagonal": Diagonal(), "kron": Kron(), "functional": Functional()}


def _mask(net):
    g = torch.Generator().manual_seed(3)
    return WeightMask({n: torch.rand(p.shape, generator=g) < 0.5 for n, p in net.named_parameters()})


@pytest.mark.parametrize("structure", list(STRUCTURES))
@pytest.mark.parametrize("weights", ["all", "last", "mask"])
@pytest.mark.parametrize(
    ("likelihood", "sizes"),
    [("regression", (3, 5, 4, 1)), ("regression", (3, 5, 4, 2)), ("classification", (3, 5, 3))],
)
def test_modes_equal_dense_reference(structure, weights, likelihood, sizes):
    if structure == "kron" and weights == "mask":
        pytest.skip("Kron needs whole parameter tensors")
    net, X, Y = make_problem(likelihood, sizes, n=10)
    w = {"all": AllWeights(), "last": LastLayer(), "mask": _mask(net)}[weights]
    prior, noise = torch.tensor(0.7, dtype=torch.float64), torch.tensor(0.4, dtype=torch.float64)
    la = fit_laplace(net, X, Y, likelihood, w, STRUCTURES[structure], prior, noise)
    H = dense_precision(net, X, Y, likelihood, w, structure, prior, noise)
    Xt = torch.randn(2, 3, sizes[0], dtype=torch.float64, requires_grad=True)
    refs = [dense_predictive(net, x, w, H) for x in Xt]
    mean_ref = torch.stack([r[0] for r in refs])
    cov_ref = torch.stack([r[1] for r in refs])
    var_ref = torch.stack([torch.diagonal(c.reshape(c.shape[0] * c.shape[1], -1)) for c in cov_ref])
    var_ref = var_ref.reshape(mean_ref.shape)
    modes = ["jacobian", "loop"] + (["factors"] if weights != "mask" else [])
    grads_ref = torch.autograd.grad(cov_ref.sum() + var_ref.pow(2).sum(), Xt)[0]
    for mode in modes:
        mean, cov = la.predictive(Xt, mode=mode)
        var = la.predictive_variance(Xt, mode=mode)
        torch.testing.assert_close(mean, mean_ref, rtol=1e-8, atol=1e-10)
        torch.testing.assert_close(cov, cov_ref, rtol=1e-8, atol=1e-10)
        torch.testing.assert_close(var, var_ref, rtol=1e-8, atol=1e-10)
        g = torch.autograd.grad(cov.sum() + var.pow(2).sum(), Xt)[0]
        torch.testing.assert_close(g, grads_ref, rtol=1e-7, atol=1e-9)


def test_mode_errors_and_auto_rule():
    net, X, Y = make_problem("regression", (3, 5, 4, 1), n=10)
    la = fit_laplace(net, X, Y, "regression", _mask(net), Full(), 1.0, 0.5)
    with pytest.raises(StructureError, match="mode='factors'"):
        la.predictive(X, mode="factors")
    with pytest.raises(StructureError, match="mode must be one of"):
        la.predictive_variance(X, mode="fast")
    assert auto_mode(True, 10, 10) == "factors"
    assert auto_mode(False, 2, 1000) == "jacobian"
    assert auto_mode(False, 10_000, 100_000) == "loop"


def test_class_probabilities_probit_and_mc():
    net, X, Y = make_problem("classification", (3, 5, 3), n=10)
    la = fit_laplace(net, X, Y, "classification", AllWeights(), Full(), 0.7)
    H = dense_precision(net, X, Y, "classification", AllWeights(), "full", torch.tensor(0.7), None)
    Xt = torch.randn(4, 3, dtype=torch.float64)
    F, cov = dense_predictive(net, Xt, AllWeights(), H)
    var = torch.stack([torch.diagonal(cov[i, :, i, :]) for i in range(4)])
    probit = torch.softmax(F / torch.sqrt(1 + torch.pi / 8 * var), -1)
    torch.testing.assert_close(la.predictive_probs(Xt), probit, rtol=1e-8, atol=1e-10)
    # MC: the mean of softmax over samples of N(F, cov_i) per row, up to sampling error
    g = torch.Generator().manual_seed(0)
    mc = la.predictive_probs(Xt, link="mc", n_samples=20000, generator=g)
    z = torch.randn(20000, 4, 3, dtype=torch.float64, generator=g)
    Ls = torch.stack([torch.linalg.cholesky(cov[i, :, i, :] + 1e-12 * torch.eye(3)) for i in range(4)])
    ref = torch.softmax(F + torch.einsum("rkl,srl->srk", Ls, z), -1).mean(0)
    torch.testing.assert_close(mc.sum(-1), torch.ones(4, dtype=torch.float64))
    assert (mc - ref).abs().max() < 0.01
    la_reg = fit_laplace(*make_problem("regression", (3, 5, 1), n=10), "regression", AllWeights(), Full())
    with pytest.raises(HyperparameterError, match="classification"):
        la_reg.predictive_probs(Xt)
    with pytest.raises(HyperparameterError, match="link"):
        la.predictive_probs(Xt, link="logit")
