import math

import pytest
import torch

from labo.bench.problems import PROBLEM_NAMES, ProblemObjective, get_problem, initial_design_size
from labo.exceptions import BenchmarkError


def test_protocol_sizes():
    expected = {
        "branin": (2, 50, 1, 4),
        "hartmann6": (6, 100, 1, 12),
        "ackley10": (10, 200, 2, 20),
        "hartmann6_100d": (100, 150, 5, 20),
        "rosenbrock20": (20, 200, 4, 20),
        "ackley10_many": (10, 1200, 20, 1000),
        "branincurrin": (2, 50, 1, 4),
    }
    assert set(expected) == set(PROBLEM_NAMES)
    for name, (d, budget, q, n_init) in expected.items():
        p = get_problem(name)
        assert (p.dim, p.budget, p.q, p.n_init) == (d, budget, q, n_init)
    assert initial_design_size(30) == 20


@pytest.mark.parametrize(
    "name, x_opt",
    [
        ("branin", [math.pi, 2.275]),
        ("hartmann6", [0.20169, 0.150011, 0.476874, 0.275332, 0.311652, 0.6573]),
        ("ackley10", [0.0] * 10),
        ("rosenbrock20", [1.0] * 20),
    ],
)
def test_regret_zero_at_optimum(name, x_opt):
    p = get_problem(name)
    y = torch.tensor([ProblemObjective(name)(x_opt)])
    assert p.regret(y) < 1e-4
    assert p.regret(p.function(torch.rand(5, p.dim) * 0 + p.bounds[0])) > 0.1


def test_embedded_hartmann_uses_six_coordinates():
    p = get_problem("hartmann6_100d")
    x = torch.rand(1, 100, dtype=torch.float64)
    active = p.function.active
    x2 = x.clone()
    inactive = torch.ones(100, dtype=torch.bool)
    inactive[active] = False
    x2[0, inactive] = torch.rand(int(inactive.sum()), dtype=torch.float64)
    assert torch.equal(p.function(x), p.function(x2))
    x_opt = x.clone()
    x_opt[0, active] = torch.tensor([0.20169, 0.150011, 0.476874, 0.275332, 0.311652, 0.6573], dtype=x.dtype)
    assert p.regret(p.function(x_opt)) < 1e-4


def test_multi_objective_regret_is_hypervolume_gap():
    p = get_problem("branincurrin")
    X = torch.rand(200, 2, dtype=torch.float64)
    Y = p.function(X)
    r_small, r_all = p.regret(Y[:5]), p.regret(Y)
    assert 0 < r_all <= r_small <= p.optimum
    # NaN rows are ignored; nothing valid gives infinite regret.
    Y_nan = torch.cat([Y, torch.full((3, 2), math.nan, dtype=Y.dtype)])
    assert p.regret(Y_nan) == pytest.approx(r_all)
    assert p.regret(torch.full((2, 2), math.nan)) == math.inf


def test_scaled_budget_and_errors():
    p = get_problem("hartmann6_100d")
    assert p.scaled_budget(1.0) == 150
    assert p.scaled_budget(0.1) == 20 + 15 and p.scaled_budget(1e-6) == 25
    with pytest.raises(BenchmarkError, match="budget_scale"):
        p.scaled_budget(0.0)
    with pytest.raises(BenchmarkError, match="problem must be one of"):
        get_problem("levy")
