"""Every structure x subset x likelihood against the dense reference of tests/_reference.py."""

import math

import pytest
import torch
from torch.autograd import gradcheck

from labo.laplace import (
    AllWeights,
    Diagonal,
    Full,
    Functional,
    Kron,
    LaplaceApproximation,
    LastLayer,
    WeightMask,
    fit_laplace,
    optimize_hyperparameters,
)
from tests import _reference as ref
from tests.conftest import make_problem

STRUCTURES = {"full": Full, "diagonal": Diagonal, "kron": Kron, "functional": Functional}
PROBLEMS = [
    ("regression", (2, 8, 8, 1)),
    ("regression", (3, 6, 4)),
    ("classification", (3, 6, 4)),
]


def random_mask(net, seed=3, frac=0.4):
    g = torch.Generator().manual_seed(seed)
    masks = {n: torch.rand(p.shape, generator=g) < frac for n, p in net.named_parameters()}
    first = next(iter(masks))
    masks[first].view(-1)[0] = True  # never empty
    return WeightMask(masks)


def make_weights(kind, net):
    return {"all": AllWeights(), "last": LastLayer(), "mask": random_mask(net)}[kind]


def make_prior(kind, la_subset, seed=5):
    g = torch.Generator().manual_seed(seed)
    if kind == "scalar":
        return torch.tensor(0.7, dtype=torch.float64)
    n = la_subset.n_tensors if kind == "tensor" else la_subset.n_weights
    return 0.3 + torch.rand(n, generator=g, dtype=torch.float64)


CASES = [
    (lik, sizes, w, s, pk)
    for lik, sizes in PROBLEMS
    for w in ("all", "last", "mask")
    for s in STRUCTURES
    for pk in ("scalar", "tensor", "weight")
    if not (s == "kron" and w == "mask")
]


def _ids(case):
    lik, sizes, w, s, pk = case
    return f"{lik[:5]}-{'x'.join(map(str, sizes))}-{w}-{s}-{pk}"


@pytest.fixture(params=CASES, ids=[_ids(c) for c in CASES])
def fitted(request):
    lik, sizes, wkind, skind, pkind = request.param
    net, X, Y = make_problem(lik, sizes, n=12)
    weights = make_weights(wkind, net)
    subset = weights.resolve(net)
    prior = make_prior(pkind, subset)
    noise = torch.tensor(0.4, dtype=torch.float64)
    la = fit_laplace(net, X, Y, lik, weights, STRUCTURES[skind](), prior, noise)
    H = ref.dense_precision(net, X, Y, lik, weights, skind, prior, noise)
    return la, H, (net, X, Y, lik, weights, skind, prior, noise)


def test_precision_matches_dense_definition(fitted):
    la, H, _ = fitted
    torch.testing.assert_close(la.posterior_precision().precision(), H, rtol=1e-9, atol=1e-9)


def test_predictive_matches_reference(fitted):
    la, H, (net, X, *_rest) = fitted
    X_new = torch.randn(5, X.shape[1], dtype=torch.float64, generator=torch.Generator().manual_seed(9))
    mean, cov = la.predictive(X_new)
    ref_mean, ref_cov = ref.dense_predictive(net, X_new, la.weights, H)
    torch.testing.assert_close(mean, ref_mean, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(cov, ref_cov, rtol=1e-8, atol=1e-10)
    var = la.predictive_variance(X_new)
    n, K = mean.shape
    torch.testing.assert_close(
        var, ref_cov.reshape(n * K, n * K).diagonal().reshape(n, K), rtol=1e-8, atol=1e-10
    )


def test_log_marginal_likelihood_and_gradients(fitted):
    la, _, (net, X, Y, lik, weights, skind, prior, noise) = fitted
    p1 = prior.clone().requires_grad_(True)
    s1 = noise.clone().requires_grad_(True)
    lml = la.log_marginal_likelihood(p1, s1)
    p2 = prior.clone().requires_grad_(True)
    s2 = noise.clone().requires_grad_(True)
    H = ref.dense_precision(net, X, Y, lik, weights, skind, p2, s2)
    lml_ref = ref.dense_log_marginal_likelihood(net, X, Y, lik, weights, H, p2, s2)
    torch.testing.assert_close(lml, lml_ref, rtol=1e-9, atol=1e-9)
    inputs = (p1, s1) if lik == "regression" else (p1,)
    grads = torch.autograd.grad(lml, inputs)
    grads_ref = torch.autograd.grad(lml_ref, (p2, s2) if lik == "regression" else (p2,))
    for g, gr in zip(grads, grads_ref, strict=True):
        torch.testing.assert_close(g, gr, rtol=1e-7, atol=1e-9)


def test_lml_gradient_finite_differences(fitted):
    la, _, (*_, prior, noise) = fitted
    if prior.dim() > 0:
        pytest.skip("finite differences on the scalar prior cases only (the rest compare autograd)")
    p = prior.clone().requires_grad_(True)
    s = noise.clone().requires_grad_(True)
    assert gradcheck(lambda a, b: la.log_marginal_likelihood(a, b), (p, s))


def test_predictive_x_gradients(fitted):
    la, _, (net, X, *_rest) = fitted
    X_new = torch.randn(3, X.shape[1], dtype=torch.float64, requires_grad=True)
    assert gradcheck(lambda x: la.predictive_variance(x), (X_new,))
    assert gradcheck(lambda x: la.predictive(x), (X_new,))


@pytest.mark.parametrize("structure", [Full(), Diagonal(), Kron(), Functional()], ids=repr)
def test_batched_inputs_are_independent_t_batches(structure):
    net, X, Y = make_problem("regression", (3, 6, 2))
    la = fit_laplace(net, X, Y, structure=structure, noise_std=0.5)
    Xb = torch.randn(2, 4, 3, 3, dtype=torch.float64)
    mean, cov = la.predictive(Xb)
    assert mean.shape == (2, 4, 3, 2) and cov.shape == (2, 4, 3, 2, 3, 2)
    m01, c01 = la.predictive(Xb[0, 1])
    torch.testing.assert_close(mean[0, 1], m01)
    torch.testing.assert_close(cov[0, 1], c01)
    var = la.predictive_variance(Xb)
    torch.testing.assert_close(var, cov.reshape(2, 4, 6, 6).diagonal(dim1=-2, dim2=-1).reshape(2, 4, 3, 2))


def test_kron_is_exact_for_single_output_last_layer():
    """K-FAC of the last layer with K = 1 is exact: Kron equals Full."""
    net, X, Y = make_problem("regression", (2, 8, 8, 1), n=20)
    kw = dict(weights=LastLayer(), prior_precision=0.5, noise_std=0.3)
    full = fit_laplace(net, X, Y, structure=Full(), **kw)
    kron = fit_laplace(net, X, Y, structure=Kron(), **kw)
    torch.testing.assert_close(kron.posterior_precision().precision(), full.posterior_precision().precision())
    torch.testing.assert_close(kron.log_marginal_likelihood(), full.log_marginal_likelihood())


@pytest.mark.parametrize("structure", [Full(), Diagonal(), Kron(), Functional()], ids=repr)
@pytest.mark.parametrize("likelihood", ["regression", "classification"])
def test_optimize_hyperparameters_increases_lml(structure, likelihood):
    net, X, Y = make_problem(likelihood, (3, 6, 3), n=30)
    la = fit_laplace(net, X, Y, likelihood, structure=structure, prior_precision=10.0, noise_std=2.0)
    before = float(la.log_marginal_likelihood())
    history = optimize_hyperparameters(la, n_steps=200, lr=0.1)
    after = float(la.log_marginal_likelihood())
    assert history[0] == pytest.approx(before)
    assert after > before + 1.0
    assert after >= max(history) - 1e-9
    # at the optimum of a scalar prior the gradient is (nearly) zero
    p = la.prior_precision.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(la.log_marginal_likelihood(p), p)
    assert abs(float((g * p).detach())) < 0.05 * abs(after)


@pytest.mark.parametrize("structure", ["full", "diagonal", "kron", "functional"])
def test_predictive_differentiable_wrt_hyperparameters(structure):
    """Setting requires_grad on la.prior_precision / la.noise_std makes predictive differentiable."""
    net, X, Y = make_problem("regression", (2, 8, 8, 1), n=12)
    la = fit_laplace(net, X, Y, structure=STRUCTURES[structure](), prior_precision=0.7, noise_std=0.4)
    la.prior_precision.requires_grad_(True)
    la.noise_std.requires_grad_(True)
    X_new = torch.randn(4, 2, dtype=torch.float64)
    _, cov = la.predictive(X_new)
    var = la.predictive_variance(X_new)
    g = torch.autograd.grad(cov.sum() + var.sum(), (la.prior_precision, la.noise_std))
    p = torch.tensor(0.7, dtype=torch.float64, requires_grad=True)
    s = torch.tensor(0.4, dtype=torch.float64, requires_grad=True)
    H = ref.dense_precision(net, X, Y, "regression", AllWeights(), structure, p, s)
    _, cov_ref = ref.dense_predictive(net, X_new, AllWeights(), H)
    var_ref = cov_ref.reshape(4, 4).diagonal()
    g_ref = torch.autograd.grad(cov_ref.sum() + var_ref.sum(), (p, s))
    for a, b in zip(g, g_ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-10)
    # and a second backward works (no cached graph)
    lml = la.log_marginal_likelihood()
    lml.backward()
    la.log_marginal_likelihood().backward()
    assert la.prior_precision.grad is not None


@pytest.mark.parametrize("structure", ["full", "diagonal", "kron", "functional"])
def test_fixed_heteroscedastic_noise_matches_reference(structure):
    """fit(..., noise_var=v): GGN Σ Jᵀ diag(1/v) J, likelihood Π N(y | f, v); noise_std unused."""
    net, X, Y = make_problem("regression", (3, 6, 2), n=10)
    v = 0.05 + torch.rand(10, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    la = LaplaceApproximation(net, "regression", AllWeights(), STRUCTURES[structure](), 0.8, 123.0)
    la.fit(X, Y, noise_var=v)
    # reference: scale the rows of Y and of the network output by 1/sqrt(v): same GGN and residuals
    F, J = ref.subset_jacobian(net, X, AllWeights())
    Jw = J / v.sqrt().unsqueeze(-1)
    if structure in ("full", "functional"):
        H = torch.einsum("nks,nkt->st", Jw, Jw) + 0.8 * torch.eye(la.n_weights, dtype=torch.float64)
    elif structure == "diagonal":
        H = torch.diag(Jw.pow(2).sum((0, 1)) + 0.8)
    else:
        H = None
    if H is not None:
        torch.testing.assert_close(la.posterior_precision().precision(), H)
        loglik = torch.distributions.Normal(F.detach(), v.sqrt()).log_prob(Y).sum()
        theta = ref.theta_subset(net, AllWeights())
        lml = (
            loglik
            - 0.4 * theta.pow(2).sum()
            - 0.5 * (torch.linalg.slogdet(H)[1] - la.n_weights * math.log(0.8))
        )
        torch.testing.assert_close(la.log_marginal_likelihood(), lml)
    # noise_std plays no role, and is not tuned
    lml0 = la.log_marginal_likelihood()
    la.noise_std = 0.01
    torch.testing.assert_close(la.log_marginal_likelihood(), lml0)
    optimize_hyperparameters(la, n_steps=5)
    assert float(la.noise_std) == pytest.approx(0.01)
