import pytest
import torch

from labo.bench import distributed
from labo.bench.distributed import make_client, run_async, run_many
from labo.bench.problems import get_problem
from labo.bench.runner import RunSpec, spec_from_problem
from labo.bench.store import open_store
from labo.exceptions import BenchmarkError


@pytest.fixture(scope="module")
def client():
    with make_client(workers=2, processes=False) as c:
        yield c


def test_async_bo_keeps_both_workers_busy_with_pending_points(tmp_path, objectives, client, monkeypatch):
    seen = []
    real_propose = distributed.propose

    def recording_propose(spec, X, Y, q, X_pending=None, previous=None, n_rows=0, X_failed=None):
        seen.append((X.shape[0], None if X_pending is None else X_pending.clone()))
        return real_propose(spec, X, Y, q, X_pending, previous, n_rows, X_failed)

    monkeypatch.setattr(distributed, "propose", recording_propose)
    spec = RunSpec(
        "a", "quad", "gp", 0, ((0.0, 1.0), (0.0, 1.0)), budget=8, n_init=4, num_restarts=2, raw_samples=16
    )
    with open_store(tmp_path / "d.db") as store:
        store.create_study("a", {}, resume=False)
        calls = []
        result = run_async(
            spec, objectives.slow_sphere, store, client, workers=2, progress=lambda r, s: calls.append(s)
        )
    rows = result.evaluations
    assert len(rows) == 8 and all(r.status == "ok" for r in rows) and calls == ["ok"] * 8
    assert len(seen) == 4
    # Proposals are made while the other worker is busy: its point is pending (a stored
    # point still being evaluated). Only when both workers finished at the same moment
    # (the two initial evaluations start together) is a proposal made with none pending,
    # and then the next one has the first as pending.
    stored = torch.tensor([r.x for r in rows], dtype=torch.float64)
    with_pending = [p for _, p in seen if p is not None]
    assert len(with_pending) >= len(seen) - 1
    for X_pending in with_pending:
        assert X_pending.shape == (1, 2)
        assert torch.cdist(X_pending, stored).min() < 1e-9
    # The two workers overlap: the next proposal is stored before the previous one finishes.
    bo = [r for r in rows if r.iteration > 0]
    assert any(b.created < a.finished for a, b in zip(bo[:-1], bo[1:], strict=True))
    assert sum(r.eval_seconds for r in rows) > 8 * 0.3 - 1e-6


def test_run_many_distributes_benchmark_runs(tmp_path, client):
    problem = get_problem("branin")
    specs = [spec_from_problem("b", problem, "sobol", seed, budget_scale=0.05) for seed in range(3)]
    with open_store(tmp_path / "m.db") as store:
        store.create_study("b", {}, resume=False)
    done = []
    summaries = run_many(specs, str(tmp_path / "m.db"), client, on_done=done.append)
    assert sorted(s[2] for s in summaries) == [0, 1, 2] and len(done) == 3
    with open_store(tmp_path / "m.db") as store:
        for seed in range(3):
            rows = store.evaluations("b", "branin", "sobol", seed)
            assert len(rows) == specs[seed].budget == 6 and all(r.status == "ok" for r in rows)


def test_make_client_rejects_bad_workers():
    with pytest.raises(BenchmarkError, match="workers must be a positive integer, got 0"):
        with make_client(workers=0):
            pass
