import math

import pytest
import torch

from labo.bench.plots import curves, draw_study, format_table, initial_design_sizes, plot_study, summarize
from labo.bench.problems import get_problem
from labo.bench.store import open_store


@pytest.fixture
def store(tmp_path):
    with open_store(tmp_path / "p.db") as s:
        s.create_study("st", {"kind": "bench"}, resume=False)
        yield s


def _add(store, problem, method, seed, xs, ys, iteration=0, fit=None, acq=None, study="st"):
    for x, y in zip(xs, ys, strict=True):
        rid = store.add_running(study, problem, method, seed, iteration, x, fit, acq)
        store.finish(rid, y, 0.01, None if y is not None else "boom")


def test_regret_curves_equal_brute_force(store):
    problem = get_problem("branin")
    g = torch.Generator().manual_seed(0)
    for seed in range(3):
        X = problem.bounds[0] + torch.rand(6, 2, generator=g, dtype=torch.float64) * (
            problem.bounds[1] - problem.bounds[0]
        )
        Y = problem.function(X)
        ys = [[float(v)] for v in Y[:, 0]]
        ys[2] = None  # a failed evaluation counts but improves nothing
        _add(store, "branin", "sobol", seed, X.tolist()[:4], ys[:4])
        _add(store, "branin", "sobol", seed, X.tolist()[4:], ys[4:], iteration=1, fit=0.5, acq=1.5)
    out = curves(store, "st")[("branin", "sobol")]
    rows = {s: store.evaluations("st", seed=s) for s in range(3)}
    finals = []
    for seed, curve in out.items():
        expected, best = [], -math.inf
        for r in rows[seed]:
            if r.status == "ok":
                best = max(best, r.y[0])
            expected.append(math.log10(problem.optimum - best))
        assert curve == pytest.approx(expected)
        finals.append(expected[-1])
    (summary,) = summarize(store, "st")
    mean = sum(finals) / 3
    se = math.sqrt(sum((f - mean) ** 2 for f in finals) / 2 / 3)
    assert summary.final_mean == pytest.approx(mean) and summary.final_se == pytest.approx(se)
    assert summary.fit_seconds == pytest.approx(0.5) and summary.acq_seconds == pytest.approx(1.5)
    assert summary.failed == 3 and summary.seeds == 3
    table = format_table([summary])
    assert f"{mean:.2f} ± {se:.2f} (log10 regret)" in table and "| 0.50 | 1.50 | 3 |" in table


def test_multi_objective_curve_is_log10_hypervolume_gap(store):
    """BraninCurrin: the curve is log10(max hypervolume - hypervolume of the front so far)."""
    problem = get_problem("branincurrin")
    ys = [[-20.0, -5.0], [-10.0, -8.0], [-5.0, -2.0]]  # the third dominates the first
    _add(store, "branincurrin", "gp", 0, [[0.1, 0.2], [0.3, 0.4], [0.5, 0.6]], ys)
    ref = problem.ref_point
    # Hypervolume by hand: point 1 lies below the reference in objective 1 (no volume);
    # point 2 is below it in objective 2; point 3 spans (-5 - ref0) x (-2 - ref1).
    hv3 = (-5.0 - ref[0]) * (-2.0 - ref[1])
    expected = [math.log10(problem.optimum), math.log10(problem.optimum), math.log10(problem.optimum - hv3)]
    assert curves(store, "st")[("branincurrin", "gp")][0] == pytest.approx(expected)
    (summary,) = summarize(store, "st")
    assert summary.metric == "log10 hypervolume gap"
    assert "(log10 hypervolume gap)" in format_table([summary])


def test_user_objective_curve_is_best_value(store):
    _add(store, "my:f", "laplace", 0, [[0.0], [1.0], [2.0]], [[3.0], [1.0], [5.0]])
    assert curves(store, "st")[("my:f", "laplace")][0] == [3.0, 3.0, 5.0]
    (summary,) = summarize(store, "st")
    assert summary.metric == "best value" and math.isnan(summary.final_se)


def test_plot_writes_png(store, tmp_path):
    _add(store, "branin", "gp", 0, [[0.0, 0.0], [1.0, 1.0]], [[-10.0], [-5.0]])
    _add(store, "my:f", "gp", 0, [[0.0]], [[1.0]])
    path = plot_study(store, "st", tmp_path / "sub" / "p.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _legend_texts(ax):
    return [t.get_text() for t in ax.get_legend().get_texts()]


def test_plot_of_a_benchmark_says_what_it_shows(store):
    """Title with the study, direction, labels, the end of the initial design and the band, named."""
    import matplotlib.pyplot as plt

    for seed in range(2):
        _add(store, "branin", "gp", seed, [[0.1, 0.1], [0.2, 0.2], [0.3, 0.3]], [[-9.0], [-7.0], [-5.0]])
        _add(store, "branin", "gp", seed, [[0.4, 0.4], [0.5, 0.5]], [[-3.0], [-2.0 - seed]], iteration=1)
        _add(store, "branin", "sobol", seed, [[0.6, 0.6]] * 3, [[-8.0]] * 3)
        _add(store, "branin", "sobol", seed, [[0.7, 0.7]] * 2, [[-8.0]] * 2, iteration=1 + seed)
    store.add_running("st", "branin", "gp", 0, 0, [0.5, 0.5])  # running rows do not count
    assert initial_design_sizes(store, "st") == {"branin": 3}
    fig = draw_study(store, "st")
    try:
        assert fig._suptitle.get_text() == "Study 'st': regret on benchmark problems, lower is better"
        ax = next(a for a in fig.axes if a.get_title() == "branin")
        assert ax.get_xlabel() == "evaluations" and ax.get_ylabel() == "log10 regret (lower is better)"
        assert _legend_texts(ax) == [
            "gp",
            "sobol",
            "BO starts after 3 initial points",
            "band: mean ± s.e. over 2 seeds",
        ]
        (boundary,) = [line for line in ax.get_lines() if line.get_linestyle() == "--"]
        assert list(boundary.get_xdata()) == [3.5, 3.5]
        assert len(ax.collections) == 2  # one shaded band per method
    finally:
        plt.close(fig)


def test_plot_of_a_minimised_user_objective_says_minimisation(tmp_path):
    import matplotlib.pyplot as plt

    with open_store(tmp_path / "m.db") as store:
        store.create_study("loss", {"kind": "optimize", "minimize": True}, resume=False)
        _add(store, "my:loss", "laplace", 0, [[0.1], [0.9]], [[3.0], [2.0]], study="loss")
        _add(store, "my:loss", "laplace", 0, [[0.5]], [[1.0]], iteration=1, study="loss")
        fig = draw_study(store, "loss")
    try:
        assert fig._suptitle.get_text() == "Study 'loss': minimisation"
        (ax,) = [a for a in fig.axes if a.get_title()]
        assert ax.get_title() == "my:loss"
        assert ax.get_ylabel() == "best value so far (minimised: lower is better)"
        assert _legend_texts(ax) == ["laplace", "BO starts after 2 initial points", "1 seed: no band"]
        assert list(ax.get_lines()[0].get_ydata()) == [3.0, 2.0, 1.0]
    finally:
        plt.close(fig)


def test_plot_marks_failed_evaluations(tmp_path):
    import matplotlib.pyplot as plt

    with open_store(tmp_path / "f.db") as store:
        store.create_study("fails", {"kind": "optimize"}, resume=False)
        _add(store, "my:f", "laplace", 0, [[0.1], [0.9]], [[1.0], [2.0]], study="fails")
        _add(store, "my:f", "laplace", 0, [[0.5], [0.6]], [None, [3.0]], iteration=1, study="fails")
        fig = draw_study(store, "fails")
    try:
        (ax,) = [a for a in fig.axes if a.get_title()]
        assert "laplace: failed evaluations" in _legend_texts(ax)
        crosses = [line for line in ax.get_lines() if line.get_marker() == "x"]
        assert len(crosses) == 1 and list(crosses[0].get_xdata()) == [3]
        assert list(crosses[0].get_ydata()) == [2.0]  # on the curve: best so far after evaluation 3
    finally:
        plt.close(fig)


def test_plot_without_failures_has_no_crosses(store):
    import matplotlib.pyplot as plt

    _add(store, "branin", "gp", 0, [[0.1, 0.2]], [[-5.0]])
    fig = draw_study(store, "st")
    try:
        assert not [line for a in fig.axes for line in a.get_lines() if line.get_marker() == "x"]
    finally:
        plt.close(fig)
