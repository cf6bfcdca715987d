import math

import pytest
import torch

from labo.bench import runner
from labo.bench.methods import TABLE
from labo.bench.runner import RunSpec, check_bounds, initial_design, run_bo, training_data
from labo.bench.store import open_store
from labo.exceptions import BenchmarkError
from labo.surrogates import FitOptions

FAST = {"num_restarts": 2, "raw_samples": 16}


@pytest.fixture
def store(tmp_path):
    with open_store(tmp_path / "r.db") as s:
        s.create_study("t", {}, resume=False)
        yield s


def spec(method="sobol", budget=8, **kw):
    base = {"bounds": ((-1.0, 1.0), (0.0, 2.0)), "budget": budget, "n_init": 4, **FAST}
    return RunSpec("t", "quad", method, 0, **{**base, **kw})


def test_sobol_run_fills_budget_with_paired_initial_design(store, objectives):
    res = run_bo(spec(q=3), objectives.sphere, store)
    rows = res.evaluations
    assert len(rows) == 8 and all(r.status == "ok" for r in rows)
    assert [r.iteration for r in rows] == [0, 0, 0, 0, 1, 1, 1, 2]  # last batch clipped to the budget
    X0 = torch.tensor([r.x for r in rows[:4]], dtype=torch.float64)
    expected = runner.from_unit(spec(), initial_design(spec(method="gp")))
    torch.testing.assert_close(X0, expected)  # same design for every method of the seed
    assert all(-1 <= r.x[0] <= 1 and 0 <= r.x[1] <= 2 for r in rows)
    assert all(r.y[0] == pytest.approx(objectives.sphere(r.x)) for r in rows)
    assert len({tuple(r.x) for r in rows}) == 8
    best = res.best()
    assert best.y[0] == max(r.y[0] for r in rows)


def test_minimize_flips_model_targets_not_stored_values(store, objectives):
    sp = spec(minimize=True, budget=4)
    res = run_bo(sp, objectives.sphere, store)
    _, Y = training_data(sp, res.evaluations)
    assert torch.equal(Y[:, 0], -torch.tensor([r.y[0] for r in res.evaluations], dtype=torch.float64))
    assert res.best().y[0] == min(r.y[0] for r in res.evaluations)


@pytest.mark.parametrize("method", ["laplace", "laplace-lbfgs", "gp"])
def test_model_methods_propose_inside_bounds_and_record_timings(store, objectives, fast_laplace, method):
    res = run_bo(spec(method, budget=6, q=2), objectives.sphere, store)
    bo_rows = [r for r in res.evaluations if r.iteration > 0]
    assert len(bo_rows) == 2 and all(r.status == "ok" for r in bo_rows)
    assert all(r.fit_seconds > 0 and r.acq_seconds > 0 for r in bo_rows)
    assert all(-1 <= r.x[0] <= 1 and 0 <= r.x[1] <= 2 for r in bo_rows)
    X = torch.tensor([r.x for r in res.evaluations])
    assert torch.cdist(X[4:], X[:4]).min() > 1e-6  # no re-evaluation of the initial design
    if method.startswith("laplace"):
        expected = "lbfgs" if method == "laplace-lbfgs" else "adam"
        assert fast_laplace and all(o.optimizer == expected for o in fast_laplace)


def test_failures_are_recorded_and_the_run_goes_on(store, objectives, fast_laplace):
    sp = spec("laplace", budget=10, q=2, bounds=((0.0, 1.0), (0.0, 1.0)), n_init=6)
    res = run_bo(sp, objectives.flaky, store)
    assert len(res.evaluations) == 10
    failed = res.failed
    assert failed, "the Sobol design hits x0 < 0.5 at least once"
    assert any("simulated crash" in r.error for r in failed) or any("non-finite" in r.error for r in failed)
    assert all(r.y is None for r in failed)
    X, _ = training_data(sp, res.evaluations)
    assert X.shape[0] == 10 - len(failed)


def test_objective_with_wrong_output_count_fails_cleanly(store):
    res = run_bo(spec(budget=4), lambda x: [1.0, 2.0], store)
    assert all(r.status == "failed" and "expected 1" in r.error for r in res.evaluations)
    assert res.best() is None


def test_resume_evaluates_running_rows_and_repeats_nothing(store, objectives):
    sp = spec(budget=7)
    run_bo(RunSpec(**{**sp.to_dict(), "budget": 5}), objectives.sphere, store)
    # A crash between proposal and evaluation leaves a 'running' row behind.
    rid = store.add_running("t", "quad", "sobol", 0, 2, [0.5, 0.5])
    calls = []

    def counted(x):
        calls.append(x)
        return objectives.sphere(x)

    res = run_bo(sp, counted, store)
    assert len(res.evaluations) == 7 and all(r.status == "ok" for r in res.evaluations)
    assert calls[0] == [0.5, 0.5] and len(calls) == 2  # the stale row, then one new point
    assert next(r for r in res.evaluations if r.id == rid).y[0] == pytest.approx(-0.04 - 0.04)


@pytest.mark.parametrize(
    "bounds, match",
    [
        (((0.0, 1.0), (2.0, 1.0)), "lower < upper"),
        (((0.0, math.inf),), "finite"),
        ((), "pairs"),
        (((0.0, 1.0, 2.0),), "pairs"),
        ("abc", "pairs"),
    ],
)
def test_bad_bounds(bounds, match):
    with pytest.raises(BenchmarkError, match=match):
        check_bounds(bounds)
    with pytest.raises(BenchmarkError, match=match):
        spec(bounds=bounds)


def test_bad_spec_values():
    with pytest.raises(BenchmarkError, match="method must be one of"):
        spec(method="tpe")
    with pytest.raises(BenchmarkError, match="budget must be a positive integer, got 0"):
        spec(budget=0)
    with pytest.raises(BenchmarkError, match="n_init must be at most budget=3"):
        spec(budget=3)


@pytest.mark.slow
def test_default_laplace_improves_on_its_initial_design(store, objectives):
    """With LaplaceModel's default fit, BO on a 2-D quadratic beats the best Sobol design point."""
    sp = spec("laplace", budget=12, n_init=4, num_restarts=4, raw_samples=64)
    res = run_bo(sp, objectives.sphere, store)
    init_best = max(r.y[0] for r in res.evaluations[:4])
    assert res.best().y[0] > init_best
    assert res.best().y[0] > -0.05


@pytest.mark.parametrize(
    ("method", "bayesian"),
    [
        ("laplace-rbf", {"1.weight", "1.bias", "3.weight", "3.bias"}),
        ("laplace-rbf-all", {"0.centres", "0.log_lengthscale", "1.weight", "1.bias", "3.weight", "3.bias"}),
    ],
)
def test_rbf_methods_make_the_documented_weights_bayesian(fast_laplace, method, bayesian):
    torch.manual_seed(0)
    X = torch.rand(12, 2, dtype=torch.float64)
    Y = -(X - 0.3).pow(2).sum(-1, keepdim=True)
    model = runner.fit_model(method, X, Y)
    subset = model.laplace.subset
    assert {s.name for s in subset.selected} == bayesian
    assert all(s.index is None for s in subset.selected)  # whole tensors
    assert subset.n_weights == sum(p.numel() for n, p in model.network.named_parameters() if n in bayesian)


@pytest.mark.parametrize(
    ("method", "n_features", "kind", "orthogonal"),
    [
        ("laplace-rff-sc", 1024, "sincos", False),
        ("laplace-rff-sc-orth", 1024, "sincos", True),
        ("laplace-rff2048-sc", 2048, "sincos", False),
        ("laplace-rff256", 256, "cos", False),
        ("laplace-rff-sc-orth-kernel", 1024, "sincos", True),
        ("laplace-rff4096-kernel", 4096, "cos", False),
        ("laplace-rff-matern52", 1024, "cos", False),
        ("laplace-rff-matern32", 1024, "cos", False),
    ],
)
def test_rff_research_methods_build_their_features_and_warm_start(method, n_features, kind, orthogonal):
    torch.manual_seed(0)
    X = torch.rand(12, 3, dtype=torch.float64)
    Y = -(X - 0.3).pow(2).sum(-1, keepdim=True)
    # as these variants were measured; the one named "-kernel" has the default's fit
    assert (TABLE[method].fit or FitOptions()).evidence == (
        "kernel" if method.endswith("kernel") or "matern" in method else "features"
    )
    model = runner.fit_model(method, X, Y)
    features = model.network[0]
    assert features.n_features == n_features and features.kind == kind and model.evidence_fit
    assert features.kernel == (method.split("-")[-1] if "matern" in method else "rbf")
    block = features.omega[:3]
    off_diagonal = (block @ block.T) - torch.diag(torch.diagonal(block @ block.T))
    assert (off_diagonal.abs().max() < 1e-10) == orthogonal
    # the next iteration's model starts from this one's lengthscales and has the same frequencies
    X2 = torch.cat([X, torch.rand(2, 3, dtype=torch.float64)])
    Y2 = -(X2 - 0.3).pow(2).sum(-1, keepdim=True)
    again = runner.fit_model(method, X2, Y2, previous=model)
    assert torch.equal(again.network[0].omega, features.omega)


@pytest.mark.parametrize(
    ("method", "evidence", "pinned"),
    [
        ("laplace", "kernel", False),
        ("laplace-rff", "features", False),
        ("laplace-rff-pin1", "features", True),
        ("laplace-rff-kernel", "kernel", False),
        ("laplace-rff-kernel-pin1", "kernel", True),
    ],
)
def test_rff_evidence_research_methods_pass_their_fit_options(method, evidence, pinned):
    fit = TABLE[method].fit or FitOptions()  # None: fit_laplace_model's defaults
    assert fit.evidence == evidence and TABLE[method].research == (method != "laplace")
    torch.manual_seed(0)
    X = torch.rand(12, 3, dtype=torch.float64)
    model = runner.fit_model(method, X, -(X - 0.3).pow(2).sum(-1, keepdim=True))
    assert model.evidence_fit
    assert (float(model.laplace.prior_precision) == pytest.approx(1.0)) == pinned
