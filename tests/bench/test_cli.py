import json
import os
import signal
import sqlite3
import subprocess
import sys
import time

import pytest
from typer.testing import CliRunner

from labo.bench.store import open_store
from labo.cli import app, parse_bounds
from labo.exceptions import BenchmarkError

runner = CliRunner()


def test_parse_bounds():
    assert parse_bounds("-5:10, 0:15") == ((-5.0, 10.0), (0.0, 15.0))
    assert parse_bounds("0:1*3") == ((0.0, 1.0),) * 3
    for bad in ["0-1", "1:0", "0:1*x", "a:b", ""]:
        with pytest.raises(BenchmarkError, match="bounds"):
            parse_bounds(bad)


def test_optimize_reports_best_point_and_failures(objectives):
    args = ["optimize", "labo_test_objectives:flaky", "--bounds", "0:1,0:1", "--budget", "8"]
    result = runner.invoke(app, args + ["--method", "sobol", "--db", "o.db", "--minimize"])
    assert result.exit_code == 0, result.output
    assert "evaluations failed" in result.output and "simulated crash" in result.output
    with open_store("o.db") as store:
        rows = store.evaluations("optimize")
    ok = [r for r in rows if r.status == "ok"]
    best = min(ok, key=lambda r: r.y[0])
    assert f"Best value: {best.y[0]:.6g}" in result.output
    # Same study again without --resume is refused, with --resume it is already complete.
    again = runner.invoke(app, args + ["--method", "sobol", "--db", "o.db", "--minimize"])
    assert again.exit_code == 2 and "--resume" in again.output
    resumed = runner.invoke(app, args + ["--method", "sobol", "--db", "o.db", "--minimize", "--resume"])
    assert resumed.exit_code == 0 and len(open_store("o.db").evaluations("optimize")) == 8


@pytest.mark.parametrize(
    "target, bounds, message",
    [
        ("labo_test_objectives:sphere", "0:1,3:2", "lower < upper"),
        ("no_such_module_xyz:f", "0:1", "cannot import module 'no_such_module_xyz'"),
        ("labo_test_objectives:missing", "0:1", "no callable named 'missing'"),
        ("labo_test_objectives", "0:1", "MODULE:FUNCTION"),
    ],
)
def test_optimize_bad_input_fails_before_running(objectives, target, bounds, message):
    result = runner.invoke(app, ["optimize", target, "--bounds", bounds, "--db", "bad.db"])
    assert result.exit_code == 2
    assert message in result.output
    assert not os.path.exists("bad.db")


def test_bench_then_plot_and_export(objectives, tmp_path):
    args = ["bench", "--problems", "branin,branincurrin", "--methods", "sobol", "--seeds", "2"]
    result = runner.invoke(app, args + ["--budget-scale", "0.1", "--db", "b.db", "--out", "out"])
    assert result.exit_code == 0, result.output
    assert "| branin | sobol | 2 |" in result.output and "| branincurrin | sobol | 2 |" in result.output
    assert (tmp_path / "out" / "bench.png").stat().st_size > 1000
    summary = json.loads((tmp_path / "out" / "bench_summary.json").read_text())
    assert {s["problem"] for s in summary} == {"branin", "branincurrin"}
    replot = runner.invoke(app, ["plot", "bench", "--db", "b.db", "--out", "again"])
    assert replot.exit_code == 0 and (tmp_path / "again" / "bench.png").exists()
    exported = runner.invoke(app, ["export", "bench", "rows.csv", "--db", "b.db"])
    assert exported.exit_code == 0 and len((tmp_path / "rows.csv").read_text().splitlines()) == 1 + 2 * 9 * 2
    bad = runner.invoke(app, ["bench", "--problems", "levy", "--db", "b2.db"])
    assert bad.exit_code == 2 and "problems must be a comma-separated subset" in bad.output
    missing = runner.invoke(app, ["plot", "nope", "--db", "b.db"])
    assert missing.exit_code == 2 and "not found" in missing.output


def test_help_texts():
    for command in ["demo", "optimize", "bench", "plot", "export"]:
        result = runner.invoke(app, [command, "--help"])
        assert result.exit_code == 0 and "Usage" in result.output


def _ok_rows(db):
    try:
        with sqlite3.connect(db) as conn:
            return conn.execute("SELECT id, x, y FROM evaluations WHERE status = 'ok' ORDER BY id").fetchall()
    except sqlite3.OperationalError:
        return []


def test_resume_after_sigkill_loses_and_repeats_nothing(objectives, tmp_path):
    cmd = [sys.executable, "-m", "labo.cli", "optimize", "labo_test_objectives:slow_sphere"]
    cmd += ["--bounds", "0:1,0:1", "--budget", "14", "--method", "sobol", "--db", "k.db", "--study", "k"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), *sys.path])}
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 180
    while len(_ok_rows(tmp_path / "k.db")) < 5 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    before = _ok_rows(tmp_path / "k.db")
    assert 5 <= len(before) < 14, "killed mid-run"
    done = subprocess.run(
        cmd + ["--resume"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180
    )
    assert done.returncode == 0, done.stderr[-2000:]
    after = _ok_rows(tmp_path / "k.db")
    assert after[: len(before)] == before  # nothing completed was lost or rewritten
    assert len(after) == 14 and len({x for _, x, _ in after}) == 14  # budget met, no point evaluated twice
    with sqlite3.connect(tmp_path / "k.db") as conn:
        assert conn.execute("SELECT COUNT(*) FROM evaluations").fetchone()[0] == 14
    assert "Best value" in done.stdout


def test_optimize_on_an_existing_scheduler(objectives):
    """``--scheduler ADDRESS`` runs the evaluations on that cluster's workers, not a new one."""
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None) as cluster:
        args = ["optimize", "labo_test_objectives:slow_sphere", "--bounds", "0:1,0:1", "--budget", "6"]
        args += ["--method", "sobol", "--db", "s.db", "--scheduler", cluster.scheduler_address]
        result = runner.invoke(app, args)
        assert result.exit_code == 0, result.output
        with Client(cluster.scheduler_address) as client:
            done = client.run_on_scheduler(
                lambda dask_scheduler: sorted(
                    {
                        str(entry[0])
                        for entry in dask_scheduler.transition_log
                        if "evaluate_remote" in str(entry[0]) and entry[2] == "memory"
                    }
                )
            )
    # The six evaluations ran as six distinct tasks of this scheduler (its transition log).
    assert len(done) == 6, done
    with open_store("s.db") as store:
        rows = store.evaluations("optimize")
    assert len(rows) == 6 and all(r.status == "ok" for r in rows)
    assert "Best value" in result.output
