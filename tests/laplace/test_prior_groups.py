"""Tied prior precisions (prior_groups) and ARD groups for the first layer's inputs."""

import pytest
import torch

from labo.laplace import (
    Full,
    Functional,
    LastLayer,
    fit_laplace,
    input_relevance_groups,
    optimize_hyperparameters,
)
from tests.conftest import make_problem


def _groups_by_hand(net):
    """Column j of the first weight -> group j; every other tensor its own group."""
    params = list(net.named_parameters())
    d = params[0][1].shape[1]
    out, g = [], d
    for i, (_, p) in enumerate(params):
        if i == 0:
            out.append(torch.arange(d).repeat(p.shape[0]))  # row-major (out, in): entry (i, j) -> j
        else:
            out.append(torch.full((p.numel(),), g))
            g += 1
    return torch.cat(out)


def test_input_relevance_groups_match_a_hand_built_index():
    net, X, Y = make_problem("regression", (3, 6, 4), n=20)
    la = fit_laplace(net, X, Y, structure=Full())
    groups = input_relevance_groups(la)
    assert torch.equal(groups, _groups_by_hand(net))
    assert int(groups.max()) + 1 == 3 + 3  # three inputs + first bias, second weight, second bias


@pytest.mark.parametrize("structure", [Full(), Functional()], ids=repr)
def test_grouped_tuning_improves_on_the_scalar_optimum_and_ties_within_groups(structure):
    net, X, Y = make_problem("regression", (3, 6, 4), n=30)
    la = fit_laplace(net, X, Y, structure=structure, prior_precision=1.0, noise_std=1.0)
    optimize_hyperparameters(la, n_steps=300, tol=0.0)
    scalar = float(la.log_marginal_likelihood())
    groups = input_relevance_groups(la)
    history = optimize_hyperparameters(la, n_steps=300, tol=0.0, prior_groups=groups)
    grouped = float(la.log_marginal_likelihood())
    assert history[0] == pytest.approx(scalar, abs=1e-9)  # starts from the scalar prior
    assert grouped > scalar + 1e-3
    prior = la.prior_precision
    assert prior.shape == (la.n_weights,)
    for g in range(int(groups.max()) + 1):
        values = prior[groups == g]
        assert torch.all(values == values[0])
    # Stationary in the group log-precisions: the gradient through the tying is ~ 0.
    v = torch.stack([prior[groups == g][0] for g in range(int(groups.max()) + 1)]).log().requires_grad_(True)
    (grad,) = torch.autograd.grad(la.log_marginal_likelihood(v.exp()[groups]), v)
    assert float(grad.abs().max()) < 1e-2 * abs(grouped)


def test_functional_and_full_agree_with_a_grouped_prior():
    net, X, Y = make_problem("regression", (3, 6, 4), n=25)
    res = {}
    for name, structure in (("full", Full()), ("functional", Functional())):
        la = fit_laplace(net, X, Y, structure=structure, prior_precision=2.0, noise_std=0.5)
        optimize_hyperparameters(la, n_steps=50, tol=0.0, prior_groups=input_relevance_groups(la))
        res[name] = la
    torch.testing.assert_close(res["full"].prior_precision, res["functional"].prior_precision)
    torch.testing.assert_close(
        res["full"].log_marginal_likelihood(), res["functional"].log_marginal_likelihood()
    )
    Xs = torch.randn(5, 3, dtype=torch.float64)
    _, cov_full = res["full"].predictive(Xs)
    _, cov_fun = res["functional"].predictive(Xs)
    torch.testing.assert_close(cov_full, cov_fun)


def test_bad_prior_groups():
    net, X, Y = make_problem("regression", (3, 6, 4), n=20)
    la = fit_laplace(net, X, Y, structure=Full())
    S = la.n_weights
    for bad, match in [
        (torch.zeros(S), "integer"),
        (torch.zeros(S - 1, dtype=torch.long), "selected weights"),
        (torch.zeros(S, 1, dtype=torch.long), "1-D"),
        (torch.cat([torch.zeros(S - 1, dtype=torch.long), torch.tensor([2])]), "every group"),
        (torch.full((S,), -1, dtype=torch.long), "every group"),
    ]:
        with pytest.raises(ValueError, match=match):
            optimize_hyperparameters(la, n_steps=1, prior_groups=bad)


def test_ard_needs_the_first_layer_in_the_subset():
    net, X, Y = make_problem("regression", (3, 6, 4), n=20)
    la = fit_laplace(net, X, Y, structure=Full(), weights=LastLayer())
    with pytest.raises(ValueError, match="first layer"):
        input_relevance_groups(la)


def test_functional_gradient_wrt_a_tensor_constant_per_weight_prior():
    """Regression: a per-weight prior whose values happen to be constant per tensor used the
    layer-factor path, which put each tensor's whole derivative on its first entry."""
    net, X, Y = make_problem("regression", (3, 6, 4), n=25)
    grads = {}
    for name, structure in (("full", Full()), ("functional", Functional())):
        la = fit_laplace(net, X, Y, structure=structure, prior_precision=2.0, noise_std=0.5)
        p = torch.full((la.n_weights,), 2.0, dtype=torch.float64, requires_grad=True)
        (grads[name],) = torch.autograd.grad(la.log_marginal_likelihood(p), p)
    torch.testing.assert_close(grads["functional"], grads["full"])
    assert grads["full"][:18].std() > 1e-3  # the entries of the first weight differ
