"""A prior centred away from zero, N(θ₀, Λ₀⁻¹): the log marginal likelihood against a dense
reference (values and gradients), and the validation of ``prior_mean``."""

import pytest
import torch
from torch.autograd import gradcheck

from labo.exceptions import HyperparameterError
from labo.laplace import AllWeights, Diagonal, Full, Functional, Kron, LastLayer, fit_laplace
from tests import _reference as ref
from tests.conftest import make_problem
from tests.laplace.test_laplace import random_mask

STRUCTURES = {"full": Full, "diagonal": Diagonal, "kron": Kron, "functional": Functional}


def _weights(kind, net):
    return {"all": AllWeights(), "last": LastLayer(), "mask": random_mask(net)}[kind]


CASES = [
    (lik, w, s)
    for lik in ("regression", "classification")
    for w in ("all", "last", "mask")
    for s in STRUCTURES
    if not (s == "kron" and w == "mask")
]


@pytest.mark.parametrize(("lik", "wkind", "skind"), CASES)
def test_lml_with_prior_mean_matches_dense_reference(lik, wkind, skind):
    sizes = (2, 8, 8, 1) if lik == "regression" else (3, 6, 4)
    net, X, Y = make_problem(lik, sizes, n=12)
    weights = _weights(wkind, net)
    S = weights.resolve(net).n_weights
    theta0 = 0.3 * torch.randn(S, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    prior = torch.tensor(0.7, dtype=torch.float64)
    noise = torch.tensor(0.4, dtype=torch.float64)
    la = fit_laplace(net, X, Y, lik, weights, STRUCTURES[skind](), prior, noise, prior_mean=theta0)
    torch.testing.assert_close(la.prior_mean, theta0)

    p1, s1 = prior.clone().requires_grad_(True), noise.clone().requires_grad_(True)
    lml = la.log_marginal_likelihood(p1, s1)
    p2, s2 = prior.clone().requires_grad_(True), noise.clone().requires_grad_(True)
    H = ref.dense_precision(net, X, Y, lik, weights, skind, p2, s2)
    lml_ref = ref.dense_log_marginal_likelihood(net, X, Y, lik, weights, H, p2, s2, prior_mean=theta0)
    torch.testing.assert_close(lml, lml_ref, rtol=1e-9, atol=1e-9)
    inputs = (p1, s1) if lik == "regression" else (p1,)
    refs = (p2, s2) if lik == "regression" else (p2,)
    for g, gr in zip(torch.autograd.grad(lml, inputs), torch.autograd.grad(lml_ref, refs), strict=True):
        torch.testing.assert_close(g, gr, rtol=1e-7, atol=1e-9)

    # Moving the centre changes only the prior term: ½‖θ̂‖²_Λ − ½‖θ̂ − θ₀‖²_Λ.
    la_zero = fit_laplace(net, X, Y, lik, weights, STRUCTURES[skind](), prior, noise)
    theta = la.theta_map
    expected = 0.5 * prior * (theta.pow(2).sum() - (theta - theta0).pow(2).sum())
    torch.testing.assert_close(
        la.log_marginal_likelihood() - la_zero.log_marginal_likelihood(), expected, rtol=1e-9, atol=1e-9
    )


def test_lml_gradient_finite_differences_with_prior_mean():
    net, X, Y = make_problem("regression", (2, 8, 8, 1), n=12)
    S = AllWeights().resolve(net).n_weights
    theta0 = torch.linspace(-0.5, 0.5, S, dtype=torch.float64)
    la = fit_laplace(net, X, Y, structure=Kron(), prior_precision=0.7, noise_std=0.4, prior_mean=theta0)
    p = torch.tensor(0.7, dtype=torch.float64, requires_grad=True)
    s = torch.tensor(0.4, dtype=torch.float64, requires_grad=True)
    assert gradcheck(lambda a, b: la.log_marginal_likelihood(a, b), (p, s))


def test_scalar_prior_mean_broadcasts_and_survives_state_dict():
    net, X, Y = make_problem("regression", (2, 8, 8, 1), n=12)
    la = fit_laplace(net, X, Y, weights=LastLayer(), structure=Full(), prior_mean=0.25)
    assert la.prior_mean.shape == (la.n_weights,)
    assert torch.all(la.prior_mean == 0.25)
    assert la.prior_mean.dtype == torch.float64
    other = fit_laplace(net, X, Y, weights=LastLayer(), structure=Full())
    assert torch.all(other.prior_mean == 0)
    other.load_state_dict(la.state_dict())
    torch.testing.assert_close(other.prior_mean, la.prior_mean)
    torch.testing.assert_close(other.log_marginal_likelihood(), la.log_marginal_likelihood())


@pytest.mark.parametrize(
    ("value", "match"),
    [
        (torch.zeros(3, dtype=torch.float64), r"shape \(\) or \(9,\)"),
        (torch.zeros(9, 1, dtype=torch.float64), r"got \(9, 1\)"),
        (torch.tensor([float("nan")] * 9, dtype=torch.float64), "finite"),
        (float("inf"), "finite"),
        ("zero", "got str"),
        (True, "got bool"),
    ],
)
def test_bad_prior_mean_raises(value, match):
    net, X, Y = make_problem("regression", (2, 8, 8, 1), n=12)
    la = fit_laplace(net, X, Y, weights=LastLayer(), structure=Full())
    assert la.n_weights == 9
    with pytest.raises(HyperparameterError, match=match):
        la.prior_mean = value
    with pytest.raises(HyperparameterError, match="prior_mean"):
        fit_laplace(net, X, Y, weights=LastLayer(), structure=Full(), prior_mean=value)
