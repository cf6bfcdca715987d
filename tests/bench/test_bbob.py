import json
import math
import pickle
import sys

import pytest
import torch
from typer.testing import CliRunner

from labo.bench.bbob import (
    BBOBFunction,
    bbob_name,
    bbob_names,
    bbob_optimum,
    bbob_problem,
    parse_bbob_name,
    parse_index_ranges,
)
from labo.bench.problems import ProblemObjective, get_problem, is_problem_name
from labo.bench.runner import run_bo, spec_from_problem
from labo.bench.store import open_store
from labo.exceptions import BenchmarkError


@pytest.fixture
def cocoex():
    return pytest.importorskip("cocoex")


def _uniform(n: int, d: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, d, generator=g, dtype=torch.float64) * 10 - 5


@pytest.mark.parametrize("function, dim", [(1, 2), (8, 5), (15, 2), (21, 5), (24, 20)])
def test_optimum_is_f_at_x_opt_and_random_points_are_worse(cocoex, function, dim):
    problem = bbob_problem(function, 2, dim)
    x_opt, f_opt = bbob_optimum(function, 2, dim)
    assert problem.optimum == -f_opt
    # BBOB draws f_opt rounded to two decimals in [-1000, 1000]: a wrong x_opt breaks this
    assert abs(f_opt - round(f_opt, 2)) < 1e-9 and abs(f_opt) <= 1000
    assert all(-5 <= v <= 5 for v in x_opt)
    Y_opt = problem.function(torch.tensor([x_opt], dtype=torch.float64))
    assert Y_opt.shape == (1, 1) and float(Y_opt) == pytest.approx(-f_opt, abs=1e-9)
    assert problem.regret(Y_opt) < 1e-9
    Y = problem.function(_uniform(256, dim))
    assert (Y < -f_opt).all() and problem.regret(Y) > 1e-6


def test_sphere_regret_is_the_squared_distance_to_x_opt(cocoex):
    """f1(x) = ||x - x_opt||^2 + f_opt: checks x_opt, f_opt and the negation together."""
    problem = bbob_problem(1, 3, 5)
    x_opt = torch.tensor(bbob_optimum(1, 3, 5)[0], dtype=torch.float64)
    X = _uniform(7, 5, seed=1)
    expected = ((X - x_opt) ** 2).sum(-1)
    assert torch.allclose(problem.optimum - problem.function(X)[:, 0], expected, atol=1e-9)


def test_names_parse_and_get_problem_delegates(cocoex):
    assert bbob_name(1, 1, 20) == "bbob_f01_i1_d20"
    assert parse_bbob_name("bbob_f24_i5_d2") == (24, 5, 2)
    assert bbob_names([1, 8], [1, 2], 5) == [
        "bbob_f01_i1_d5",
        "bbob_f01_i2_d5",
        "bbob_f08_i1_d5",
        "bbob_f08_i2_d5",
    ]
    assert get_problem("bbob_f03_i1_d2").name == "bbob_f03_i1_d2"
    assert is_problem_name("bbob_f03_i1_d2") and is_problem_name("branin") and not is_problem_name("mod:fn")
    assert parse_index_ranges("1-3,8") == [1, 2, 3, 8]
    for bad, message in [
        ("bbob_f1_i1_d20", "written 'bbob_f01_i1_d20'"),
        ("bbob_f25_i1_d20", "function must be an integer in 1..24"),
        ("bbob_f01_i0_d20", "instance must be a positive integer"),
        ("bbob_f01_i1_d7", "dimension must be one of 2, 3, 5, 10, 20, 40"),
        ("bbob_sphere", "must look like bbob_fFF_iI_dD"),
    ]:
        with pytest.raises(BenchmarkError, match=message):
            get_problem(bad)
    with pytest.raises(BenchmarkError, match="bbob_fFF_iI_dD"):
        get_problem("levy")
    with pytest.raises(BenchmarkError, match="'1-5' or '1,8,15'"):
        parse_index_ranges("5-1")


def test_bounds_and_budget(cocoex):
    p = get_problem("bbob_f05_i1_d20")
    assert p.bounds.shape == (2, 20) and (p.bounds[0] == -5).all() and (p.bounds[1] == 5).all()
    assert (p.budget, p.q, p.n_init, p.num_objectives) == (100, 4, 20, 1)
    assert p.scaled_budget(1.0) == 100
    small = bbob_problem(5, 1, 2, budget=8, q=2)
    assert (small.dim, small.budget, small.q, small.n_init) == (2, 8, 2, 4)
    with pytest.raises(BenchmarkError, match="n_init <= budget"):
        bbob_problem(5, 1, 2, budget=3)


def test_objectives_pickle_after_use(cocoex):
    fn = BBOBFunction(12, 1, 2)
    x = [[0.3, -1.2]]
    before = fn(torch.tensor(x, dtype=torch.float64))
    again = pickle.loads(pickle.dumps(fn))
    assert again._problem is None and torch.equal(again(torch.tensor(x, dtype=torch.float64)), before)
    objective = ProblemObjective("bbob_f12_i1_d2")
    assert objective(x[0]) == pytest.approx([float(before)])
    assert pickle.loads(pickle.dumps(objective))(x[0]) == objective(x[0])
    with pytest.raises(BenchmarkError, match="batch x 2"):
        fn(torch.zeros(1, 3, dtype=torch.float64))


def test_tiny_sobol_run_gives_finite_regret(cocoex, tmp_path):
    problem = bbob_problem(3, 1, 2, budget=8)
    spec = spec_from_problem("t", problem, "sobol", seed=0)
    assert (spec.budget, spec.n_init, spec.q) == (8, 4, 4)
    with open_store(tmp_path / "s.db") as store:
        store.create_study("t", {}, resume=False)
        result = run_bo(spec, ProblemObjective(problem.name), store)
    assert len(result.evaluations) == 8 and not result.failed
    regret = problem.regret(torch.tensor([e.y for e in result.evaluations], dtype=torch.float64))
    assert math.isfinite(regret) and regret > 0


def test_cli_runs_the_bbob_suite(cocoex, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    from labo.cli import app

    args = ["bench", "--suite", "bbob", "--bbob-functions", "1", "--bbob-instances", "1-2", "--bbob-dim", "2"]
    args += ["--methods", "sobol", "--budget-scale", "0.05", "--db", "b.db", "--out", "out"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "| f1 Sphere | 2 |" in result.output and "(2) |" in result.output
    with open_store("b.db") as store:
        rows = store.evaluations("bench")
    assert {(r.problem, r.seed) for r in rows} == {("bbob_f01_i1_d2", 0), ("bbob_f01_i2_d2", 0)}
    assert len(rows) == 2 * 8
    payload = json.loads((tmp_path / "out" / "bench_bbob.json").read_text())
    assert [(s["function"], s["method"], s["runs"]) for s in payload["summary"]] == [(1, "sobol", 2)]
    assert (tmp_path / "out" / "bench_bbob.png").stat().st_size > 1000
    bad = CliRunner().invoke(app, ["bench", "--suite", "cec", "--db", "c.db"])
    assert bad.exit_code == 2 and "suite must be 'bbob'" in bad.output


def test_missing_cocoex_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "cocoex", None)  # makes `import cocoex` raise ImportError
    with pytest.raises(BenchmarkError, match="pip install coco-experiment"):
        get_problem("bbob_f02_i9_d3")
    with pytest.raises(BenchmarkError, match="pip install coco-experiment"):
        BBOBFunction(2, 9, 3)(torch.zeros(1, 3, dtype=torch.float64))
