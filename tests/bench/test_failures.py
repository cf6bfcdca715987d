"""Failure-aware BO in the runner: proposals keep away from a region where the objective fails."""

import pytest
import torch

from labo.bench.runner import RunSpec, failed_inputs, propose, run_bo
from labo.bench.store import open_store


def fails_right_of_07(x):
    """Raises for x0 > 0.7; its maximum without failures would be at (0.8, 0.4), inside that region."""
    if x[0] > 0.7:
        raise RuntimeError("simulation diverged")
    return -((x[0] - 0.8) ** 2 + (x[1] - 0.4) ** 2)


@pytest.fixture
def store(tmp_path):
    with open_store(tmp_path / "f.db") as s:
        s.create_study("t", {}, resume=False)
        yield s


def spec(method="laplace", budget=25, **kw):
    base = {"bounds": ((0.0, 1.0), (0.0, 1.0)), "budget": budget, "n_init": 6, "num_restarts": 2}
    return RunSpec("t", "fails", method, 0, **{**base, "raw_samples": 32, **kw})


@pytest.mark.slow
def test_default_method_learns_where_the_objective_fails(store):
    # before failure-aware BO: 15 of 19 proposals failed (laplace), 18 of 19 (gp); after: 2 and 0
    res = run_bo(spec(), fails_right_of_07, store)
    bo = [r for r in res.evaluations if r.iteration > 0]
    failed = [r.status == "failed" for r in bo]
    assert len(bo) == 19
    assert sum(failed) / len(bo) < 0.2, "".join("x" if f else "." for f in failed)
    longest = max(len(run) for run in "".join("x" if f else "." for f in failed).split("."))
    assert longest <= 2  # no failing point proposed again and again (before: 15 in a row)
    assert res.best().y[0] > -0.05  # and it still closes in on the boundary (best -0.01 at x0 = 0.7)
    summary = res.failure_summary()
    assert summary.startswith(f"{len(res.failed)} of 25 evaluations failed (first error: RuntimeError")


def test_pending_fallback_keeps_a_single_failure_out_of_the_proposals():
    sp = spec("gp")
    X = torch.tensor([[0.1, 0.1], [0.3, 0.6], [0.5, 0.2], [0.6, 0.9]], dtype=torch.float64)
    Y = -((X - torch.tensor([0.8, 0.4], dtype=torch.float64)) ** 2).sum(-1, keepdim=True)
    X_failed = torch.tensor([[0.8, 0.4]], dtype=torch.float64)
    torch.manual_seed(0)
    plain, *_ = propose(sp, X, Y, 1)
    aware, *_ = propose(sp, X, Y, 1, X_failed=X_failed)
    assert torch.cdist(aware, X_failed).min() > torch.cdist(plain, X_failed).min()


def test_failed_inputs_are_the_failed_rows_in_the_unit_cube(store):
    sp = spec("sobol", budget=6, bounds=((0.0, 2.0), (0.0, 1.0)))
    res = run_bo(sp, lambda x: 1 / 0 if x[0] > 1.4 else x[0], store)
    F = failed_inputs(sp, res.evaluations)
    expected = [[r.x[0] / 2, r.x[1]] for r in res.failed]
    assert F.shape == (len(res.failed), 2) and len(res.failed) > 0
    torch.testing.assert_close(F, torch.tensor(expected, dtype=torch.float64))
    assert "first error: ZeroDivisionError" in res.failure_summary()
