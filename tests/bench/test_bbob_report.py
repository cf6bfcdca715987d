import math

import pytest
import torch

from labo.bench.bbob_report import (
    bbob_finals,
    bbob_payload,
    format_bbob_counts,
    format_bbob_table,
    merge_finals,
    paired_differences,
    plot_bbob,
    summarize_bbob,
)
from labo.bench.store import open_store
from labo.exceptions import BenchmarkError

# {(function, dim, method): {(instance, seed): final log10 regret}}
FINALS = {
    (1, 20, "laplace"): {(1, 0): 1.0, (2, 0): 2.0, (3, 0): 3.0},
    (1, 20, "sobol"): {(1, 0): 2.0, (2, 0): 3.5, (3, 0): 4.0},  # d = -1, -1.5, -1: beats
    (1, 20, "gp"): {(1, 0): 0.5, (2, 0): 2.0, (3, 0): 3.0},  # d = 0.5, 0, 0: mean 1/6, se 1/6: equal
    (2, 20, "laplace"): {(1, 0): 1.0, (2, 0): 1.0, (3, 0): math.inf},
    (2, 20, "sobol"): {(1, 0): 1.5, (2, 0): 0.9, (3, 0): 0.0},  # d = -0.5, 0.1: mean -0.2, se 0.3
    (2, 20, "gp"): {(1, 0): 0.0, (2, 0): 0.5},  # d = 1, 0.5: mean 0.75, se 0.25: worse
}


def test_summaries_are_mean_and_standard_error_over_finite_runs():
    by_key = {(s.function, s.method): s for s in summarize_bbob(FINALS)}
    s = by_key[(1, "sobol")]
    assert s.runs == 3 and s.mean == pytest.approx(9.5 / 3)
    values = torch.tensor([2.0, 3.5, 4.0], dtype=torch.float64)
    assert s.se == pytest.approx(float(values.std() / math.sqrt(3)))
    assert by_key[(2, "laplace")].runs == 2 and by_key[(2, "laplace")].mean == 1.0  # inf left out


def test_paired_rules():
    diffs = {(d.function, d.method, d.baseline): d for d in paired_differences(FINALS)}
    assert set(diffs) == {(f, "laplace", b) for f in (1, 2) for b in ("sobol", "gp")}
    d = diffs[(1, "laplace", "sobol")]
    assert d.pairs == 3 and d.mean == pytest.approx(-7 / 6) and d.beats and d.equals_or_beats
    d = diffs[(1, "laplace", "gp")]
    assert d.mean == pytest.approx(1 / 6) and d.se == pytest.approx(1 / 6)
    assert d.equals_or_beats and not d.beats  # worse by exactly one standard error
    d = diffs[(2, "laplace", "sobol")]
    assert d.pairs == 2 and d.mean == pytest.approx(-0.2) and d.se == pytest.approx(0.3)
    assert not d.beats and d.equals_or_beats
    d = diffs[(2, "laplace", "gp")]
    assert d.mean == pytest.approx(0.75) and d.se == pytest.approx(0.25) and not d.equals_or_beats
    counts = format_bbob_counts(list(diffs.values()))
    assert "laplace beats sobol on 1 of 2 functions (not on f2)" in counts
    assert "equals or beats it on 1 of 2 (not on f2)" in counts  # against gp


def test_merging_adds_the_chosen_methods_of_another_study():
    new = {key: runs for key, runs in FINALS.items() if key[2] == "laplace"}
    old = {
        **{key: runs for key, runs in FINALS.items() if key[2] != "laplace"},
        (1, 20, "laplace"): {(1, 0): 9.0},  # an earlier default's run under the same name
    }
    merged = merge_finals(new, old, ["gp", "sobol"])
    assert merged == FINALS  # the old laplace run is left out
    assert paired_differences(merged) == paired_differences(FINALS)
    assert new == {key: runs for key, runs in FINALS.items() if key[2] == "laplace"}  # not mutated
    # replicates of the same method from two studies add up
    more = merge_finals({(1, 20, "gp"): {(1, 0): 0.5}}, {(1, 20, "gp"): {(2, 0): 2.0}})
    assert more == {(1, 20, "gp"): {(1, 0): 0.5, (2, 0): 2.0}}


def test_merging_refuses_clashes_and_missing_methods():
    with pytest.raises(BenchmarkError, match=r"f1 d=20 'laplace' has runs \(instance, seed\) \[\(1, 0\)\]"):
        merge_finals(FINALS, {(1, 20, "laplace"): {(1, 0): 9.0}})
    with pytest.raises(BenchmarkError, match=r"no finished run of \['gpx'\]"):
        merge_finals(FINALS, FINALS, ["gpx"])


def test_table_payload_and_plot(tmp_path):
    summaries = summarize_bbob(FINALS)
    table = format_bbob_table(summaries)
    assert table.splitlines()[0] == "| function | d | laplace | gp | sobol |"
    assert "| f1 Sphere | 20 | 2.00 ± 0.58 (3) |" in table
    payload = bbob_payload(summaries, paired_differences(FINALS))
    assert sum(p["beats"] for p in payload["paired"]) == 1
    assert plot_bbob(summaries, tmp_path / "b.png").stat().st_size > 1000


def test_finals_come_from_the_stored_regret_curves(tmp_path):
    pytest.importorskip("cocoex")
    from labo.bench.bbob import bbob_optimum

    x_opt, f_opt = bbob_optimum(1, 1, 2)
    with open_store(tmp_path / "s.db") as store:
        store.create_study("st", {}, resume=False)
        for method, ys in [("sobol", [f_opt + 10.0, f_opt + 0.01]), ("gp", [f_opt + 1.0, None])]:
            for y in ys:
                row = store.add_running("st", "bbob_f01_i1_d2", method, 0, 0, list(x_opt))
                store.finish(row, None if y is None else [-y], 0.0, "boom" if y is None else None)
        finals = bbob_finals(store, "st")
    assert finals[(1, 2, "sobol")][(1, 0)] == pytest.approx(-2.0, abs=1e-6)
    assert finals[(1, 2, "gp")][(1, 0)] == pytest.approx(0.0, abs=1e-9)
    # an unfinished run (one of a budget of two evaluations) is left out when the budget is given
    with open_store(tmp_path / "s.db") as store:
        row = store.add_running("st", "bbob_f01_i2_d2", "sobol", 0, 0, list(x_opt))
        store.finish(row, [-(f_opt + 1.0)], 0.0, None)
        assert (2, 0) in bbob_finals(store, "st")[(1, 2, "sobol")]
        complete = bbob_finals(store, "st", budget=2)
    assert set(complete[(1, 2, "sobol")]) == {(1, 0)} and set(complete[(1, 2, "gp")]) == {(1, 0)}
