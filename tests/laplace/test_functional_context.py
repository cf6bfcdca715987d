"""Functional() with a subset of context points: selection rules and the subset posterior."""

import pytest
import torch

from labo.exceptions import HyperparameterError
from labo.laplace import Full, Functional, WeightMask, fit_laplace
from labo.laplace.structures.functional import select_context
from tests._reference import subset_jacobian
from tests.conftest import make_problem


def _brute_force_greedy(J, size):
    """Greedy max conditional variance on the dense trace-NTK Gram matrix, by explicit solves."""
    Kmat = torch.einsum("nks,mks->nm", J, J)
    chosen = []
    for _ in range(size):
        if chosen:
            Kc = Kmat[chosen][:, chosen]
            var = Kmat.diagonal() - (Kmat[:, chosen] @ torch.linalg.solve(Kc, Kmat[chosen])).diagonal()
        else:
            var = Kmat.diagonal().clone()
        var[chosen] = -float("inf")
        chosen.append(int(var.argmax()))
    return sorted(chosen)


@pytest.mark.parametrize("weights", ["all", "mask"])
def test_greedy_selection_equals_brute_force(weights):
    net, X, Y = make_problem("regression", (2, 6, 2), n=30)
    if weights == "all":
        w = None
        la = fit_laplace(net, X, Y, structure=Functional())
    else:
        masks = {
            n: torch.rand(p.shape, generator=torch.Generator().manual_seed(1)) < 0.6
            for n, p in net.named_parameters()
        }
        w = WeightMask(masks)
        la = fit_laplace(net, X, Y, weights=w, structure=Functional())
    idx = select_context(net, la.subset, la.factor_plan, X, 2, 8, "greedy")
    _, J = subset_jacobian(net, X, la.weights)
    assert idx.tolist() == _brute_force_greedy(J, 8)


def test_random_selection_is_seeded_and_without_replacement():
    net, X, Y = make_problem("regression", (2, 6, 1), n=40)
    la = fit_laplace(net, X, Y, structure=Functional())
    a = select_context(net, la.subset, la.factor_plan, X, 1, 10, "random", seed=3)
    b = select_context(net, la.subset, la.factor_plan, X, 1, 10, "random", seed=3)
    c = select_context(net, la.subset, la.factor_plan, X, 1, 10, "random", seed=4)
    assert a.tolist() == b.tolist() and a.tolist() != c.tolist()
    assert len(set(a.tolist())) == 10 and int(a.max()) < 40


@pytest.mark.parametrize("method", ["greedy", "random"])
def test_context_posterior_is_the_exact_posterior_of_the_subset(method):
    net, X, Y = make_problem("regression", (2, 6, 1), n=40)
    la = fit_laplace(net, X, Y, structure=Functional(context_points=12, context=method), noise_std=0.3)
    idx = la.curvature.context_index
    assert idx.numel() == 12
    ref = fit_laplace(net, X[idx], Y[idx], structure=Full(), noise_std=0.3)
    Xt = torch.randn(5, 2, dtype=torch.float64)
    torch.testing.assert_close(la.predictive(Xt)[1], ref.predictive(Xt)[1], rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(la.posterior_precision().logdet(), ref.posterior_precision().logdet())
    # the exact posterior over all 40 points is more certain than the subset's
    exact = fit_laplace(net, X, Y, structure=Functional(), noise_std=0.3)
    assert (exact.predictive_variance(Xt) <= la.predictive_variance(Xt) + 1e-12).all()


def test_fewer_rows_than_context_points_is_exact():
    net, X, Y = make_problem("regression", (2, 6, 1), n=10)
    la = fit_laplace(net, X, Y, structure=Functional(context_points=50))
    exact = fit_laplace(net, X, Y, structure=Functional())
    Xt = torch.randn(3, 2, dtype=torch.float64)
    torch.testing.assert_close(la.predictive(Xt)[1], exact.predictive(Xt)[1])
    assert la.curvature.context_index.tolist() == list(range(10))


def test_state_dict_round_trip_keeps_the_context():
    net, X, Y = make_problem("regression", (2, 6, 1), n=30)
    la = fit_laplace(net, X, Y, structure=Functional(context_points=7))
    from labo.laplace import LaplaceApproximation

    other = LaplaceApproximation(net, structure=Functional(context_points=7))
    other.load_state_dict(la.state_dict())
    Xt = torch.randn(3, 2, dtype=torch.float64)
    torch.testing.assert_close(other.predictive(Xt)[1], la.predictive(Xt)[1])
    assert other.curvature.context_index.tolist() == la.curvature.context_index.tolist()


def test_bad_options():
    for bad in (0, -3, 2.5, True):
        with pytest.raises(HyperparameterError, match="context_points"):
            Functional(context_points=bad)
    with pytest.raises(HyperparameterError, match="context must be one of"):
        Functional(context_points=5, context="kmeans")
    assert repr(Functional()) == "Functional()"
    assert repr(Functional(context_points=5)) == "Functional(context_points=5, context='greedy')"
