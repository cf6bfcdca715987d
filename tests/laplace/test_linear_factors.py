"""The Jacobian-free (per-layer factor) path equals the Jacobian path: values and x-gradients."""

import pytest
import torch
from torch import nn

from labo.laplace import AllWeights, Diagonal, Full, Functional, Kron, LastLayer, WeightMask, fit_laplace
from labo.laplace.linearization.linear_factors import factor_plan, linear_factors
from tests.conftest import make_problem


def _both(la, X):
    fast = la.predictive(X), la.predictive_variance(X)
    plan, la.factor_plan = la.factor_plan, None
    slow = la.predictive(X), la.predictive_variance(X)
    la.factor_plan = plan
    return fast, slow


@pytest.mark.parametrize("n_rows", [3, 9])
@pytest.mark.parametrize("structure", [Kron(), Diagonal(), Full(), Functional()], ids=repr)
@pytest.mark.parametrize("weights", [AllWeights(), LastLayer()], ids=repr)
@pytest.mark.parametrize(
    ("likelihood", "sizes"),
    [("regression", (3, 6, 5, 1)), ("regression", (3, 6, 5, 3)), ("classification", (3, 6, 4))],
)
def test_factor_path_equals_jacobian_path(structure, weights, likelihood, sizes, n_rows):
    net, X, Y = make_problem(likelihood, sizes, n=15)
    prior = torch.tensor([0.5, 2.0] * (len(list(weights.resolve(net).selected)) // 2), dtype=torch.float64)
    la = fit_laplace(net, X, Y, likelihood, weights, structure, prior, 0.3)
    assert la.factor_plan is not None and la.posterior_precision().supports_factors
    # 3 rows per t-batch: pairwise contraction; 9 rows (> layer inputs): per-row Kron rotations
    Xt = torch.randn(2, n_rows, sizes[0], dtype=torch.float64, requires_grad=True)
    ((m1, c1), v1), ((m2, c2), v2) = _both(la, Xt)
    for a, b in ((m1, m2), (c1, c2), (v1, v2)):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    g1 = torch.autograd.grad((c1.sum() + v1.sum() + m1.sum()), Xt)[0]
    g2 = torch.autograd.grad((c2.sum() + v2.sum() + m2.sum()), Xt)[0]
    torch.testing.assert_close(g1, g2, rtol=1e-9, atol=1e-11)


def test_factor_plan_applicability():
    net, X, Y = make_problem("regression", (3, 6, 1))
    assert factor_plan(net, AllWeights().resolve(net)) == [("0", True), ("2", True)]
    mask = {n: torch.ones(p.shape, dtype=torch.bool) for n, p in net.named_parameters()}
    mask["0.weight"][0, 0] = False
    assert factor_plan(net, WeightMask(mask).resolve(net)) is None
    only_w = {"2.weight": torch.ones(1, 6, dtype=torch.bool)}
    assert factor_plan(net, WeightMask(only_w).resolve(net)) is None  # bias of the layer not selected

    class Shared(nn.Module):  # a Linear used twice: no factor path
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(3, 3).double()

        def forward(self, x):
            return self.lin(torch.tanh(self.lin(x)))[:, :1]

    shared = Shared()
    plan = factor_plan(shared, AllWeights().resolve(shared))
    assert plan is not None and linear_factors(shared, plan, X) is None
    la = fit_laplace(shared, X, Y, structure=Functional())
    m, c = la.predictive(X[:2])  # falls back to the Jacobian path
    assert c.shape == (2, 1, 2, 1)
