import csv
import json
import os
import shlex
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
    assert "Minimising labo_test_objectives:flaky over 2 dimensions, budget 8" in result.output
    assert f"Best value: {best.y[0]:.6g} (the minimum found)" in result.output
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
    # optimize's direction: the default in the first line of its help
    lines = [line.strip() for line in runner.invoke(app, ["optimize", "--help"]).output.splitlines()]
    first = next(line for line in lines if line and not line.startswith("Usage"))
    assert first == "Maximise (the default) or minimise (--minimize) your Python function with BO."


def test_optimize_says_it_maximises_by_default(objectives):
    args = [
        "optimize",
        "labo_test_objectives:sphere",
        "--bounds",
        "0:1",
        "--budget",
        "3",
        "--method",
        "sobol",
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "Maximising (the default; --minimize for a loss) labo_test_objectives:sphere" in result.output
    assert "(the maximum found)" in result.output


def test_one_default_database_for_every_command(objectives, tmp_path):
    """optimize writes labo_studies.db; plot and export find the study there without --db."""
    args = ["optimize", "labo_test_objectives:sphere", "--bounds", "0:1,0:1,0:1", "--budget", "4"]
    assert runner.invoke(app, args + ["--method", "sobol"]).exit_code == 0
    assert (tmp_path / "labo_studies.db").is_file()
    replot = runner.invoke(app, ["plot", "optimize", "--out", "plots"])
    assert replot.exit_code == 0, replot.output
    assert (tmp_path / "plots" / "optimize.png").is_file()
    # one seed: no standard error, written as null (bare NaN is not JSON)
    text = (tmp_path / "plots" / "optimize_summary.json").read_text()
    (summary,) = json.loads(text, parse_constant=pytest.fail)
    assert summary["final_se"] is None and summary["final_mean"] == pytest.approx(
        max(r.y[0] for r in open_store("labo_studies.db").evaluations("optimize"))
    )
    exported = runner.invoke(app, ["export", "optimize", "rows.csv"])
    assert exported.exit_code == 0, exported.output
    with open(tmp_path / "rows.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 4 and all(0 <= float(r[f"x{i}"]) <= 1 for r in rows for i in range(3))
    assert "x" not in rows[0] and "x3" not in rows[0]


def test_reading_commands_never_create_a_database(objectives, tmp_path):
    before = sorted(os.listdir(tmp_path))
    for args, message in [
        (["plot", "optimize"], "no study database here"),
        (["export", "optimize", "rows.csv"], "no study database here"),
        (["plot", "optimize", "--db", "missing.db", "--out", "plots"], "no study database at 'missing.db'"),
        (["export", "optimize", "rows.json", "--db", "sqlite:///missing.db"], "no study database at"),
    ]:
        result = runner.invoke(app, args)
        assert result.exit_code == 2 and message in result.output, result.output
    assert sorted(os.listdir(tmp_path)) == before  # no database, no output folder, no export
    with open_store("labo_studies.db") as store:
        store.create_study("other", {"kind": "optimize"}, resume=False)
    missing = runner.invoke(app, ["plot", "optimize", "--out", "plots"])
    assert missing.exit_code == 2 and "study 'optimize' not found" in missing.output
    assert "known studies: ['other']" in missing.output and not (tmp_path / "plots").exists()


def test_plot_finds_a_study_in_the_former_bench_default(objectives, tmp_path):
    with open_store("labo_bench.db") as store:
        store.create_study("old", {"kind": "optimize", "minimize": False}, resume=False)
        store.finish(store.add_running("old", "f", "sobol", 0, 0, [0.5]), [1.0], 0.1)
    result = runner.invoke(app, ["plot", "old", "--out", "plots"])
    assert result.exit_code == 0, result.output
    assert "Database: labo_bench.db" in result.output and not (tmp_path / "labo_studies.db").exists()
    resumed = runner.invoke(
        app, ["optimize", "labo_test_objectives:sphere", "--bounds", "0:1", "--study", "old", "--resume"]
    )
    assert resumed.exit_code == 2 and "pass --db labo_bench.db to resume it" in resumed.output


def test_resume_with_another_configuration_names_the_field(objectives):
    args = ["optimize", "labo_test_objectives:sphere", "--bounds", "0:1,0:1", "--budget", "3"]
    assert runner.invoke(app, args + ["--method", "sobol"]).exit_code == 0
    result = runner.invoke(app, args + ["--method", "gp", "--seed", "2", "--resume"])
    assert result.exit_code == 2
    assert "differs in method: stored 'sobol', given 'gp'; seed: stored 0, given 2." in result.output
    assert "rerun with the stored values: --method sobol --seed 0" in result.output
    assert "'kind'" not in result.output and "'bounds'" not in result.output  # not two whole dicts


def test_resume_with_a_larger_budget_extends_a_finished_study(objectives):
    # d = 3: the default initial design is min(2d, budget) = 4 here, and stays 4 when extended
    args = ["optimize", "labo_test_objectives:sphere", "--bounds", "0:1*3", "--method", "sobol"]
    assert runner.invoke(app, args + ["--budget", "4"]).exit_code == 0
    first = [r.x for r in open_store("labo_studies.db").evaluations("optimize")]
    extended = runner.invoke(app, args + ["--budget", "9", "--resume"])
    assert extended.exit_code == 0, extended.output
    rows = open_store("labo_studies.db").evaluations("optimize")
    assert len(rows) == 9 and [r.x for r in rows[:4]] == first and all(r.status == "ok" for r in rows)
    assert open_store("labo_studies.db").study_config("optimize")["budget"] == 9
    shrunk = runner.invoke(app, args + ["--budget", "5", "--resume"])
    assert (
        shrunk.exit_code == 2 and "budget: stored 9, given 5 (--resume can extend a budget" in shrunk.output
    )


def test_ctrl_c_says_where_the_study_is_and_how_to_resume(objectives):
    args = ["optimize", "labo_test_objectives:interrupted_on_third_call", "--bounds", "0:1,0:1"]
    args += ["--budget", "6", "--method", "sobol", "--minimize"]
    result = runner.invoke(app, args)
    assert result.exit_code == 130
    (line,) = [line for line in result.output.splitlines() if line.startswith("Interrupted")]
    command = "labo optimize labo_test_objectives:interrupted_on_third_call --bounds 0:1,0:1 --budget 6"
    assert line == (
        "Interrupted: study 'optimize' is saved in labo_studies.db (2 of 6 evaluations done); "
        f"resume with: {command} --minimize --method sobol --resume"
    )
    words = shlex.split(line.split("resume with: ")[1])
    resumed = runner.invoke(app, words[1:])
    assert resumed.exit_code == 0, resumed.output
    rows = open_store("labo_studies.db").evaluations("optimize")
    assert len(rows) == 6 and all(r.status == "ok" for r in rows)


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


def test_ctrl_c_in_bench_names_the_bench_command(objectives, monkeypatch):
    from labo.bench import cli_support
    from labo.bench.problems import get_problem

    def interrupted(spec, objective, store, progress=None):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli_support, "run_bo", interrupted)
    args = ["bench", "--problems", "branin", "--methods", "sobol", "--seeds", "1", "--db", "b.db"]
    result = runner.invoke(app, args)
    assert result.exit_code == 130
    assert result.output.strip().splitlines()[-1] == (
        f"Interrupted: study 'bench' is saved in b.db (0 of {get_problem('branin').scaled_budget(1.0)} "
        "evaluations done); resume with: "
        "labo bench --problems branin --methods sobol --seeds 1 --db b.db --resume"
    )


def test_per_problem_budget_scales_of_the_demo(tmp_path):
    """`labo demo` runs its 100-D problem at a smaller share of the BO budget than the others."""
    from pathlib import Path

    from labo.bench.cli_support import run_bench
    from labo.bench.problems import get_problem

    db = str(tmp_path / "s.db")
    run_bench(["branin", "hartmann6"], ["sobol"], 1, 0.25, db, "s", False, Path(tmp_path), 1, None, 2, 16,
           problem_scales={"hartmann6": 0.1})  # fmt: skip
    with open_store(db) as store:
        rows = store.evaluations("s")
    counts = {p: sum(r.problem == p for r in rows) for p in ("branin", "hartmann6")}
    assert counts == {
        "branin": get_problem("branin").scaled_budget(0.25),
        "hartmann6": get_problem("hartmann6").scaled_budget(0.1),
    }


def test_demo_runs_on_two_workers_by_default(monkeypatch):
    """`labo demo` passes --workers to the bench runner: two where the machine has two cores."""
    import labo.cli as cli

    seen = {}
    monkeypatch.setattr(cli, "run_bench", lambda problems, methods, *args, **kw: seen.update(args=args))
    assert runner.invoke(app, ["demo", "--out", "d"]).exit_code == 0
    assert seen["args"][6] == min(2, os.cpu_count() or 1)
    assert runner.invoke(app, ["demo", "--out", "d", "--workers", "1"]).exit_code == 0
    assert seen["args"][6] == 1


def test_parallel_bench_submits_the_longest_runs_first(tmp_path, monkeypatch):
    """With several workers the runs are submitted by dimension x budget, largest first."""
    from contextlib import contextmanager
    from pathlib import Path

    import labo.bench.distributed as distributed
    from labo.bench.cli_support import run_bench
    from labo.bench.problems import ProblemObjective
    from labo.bench.runner import run_bo

    order = []

    def sequential(specs, location, client, on_done=None):  # the runs, in submission order
        for spec in specs:
            order.append(spec.problem)
            with open_store(location) as store:
                run_bo(spec, ProblemObjective(spec.problem), store)

    monkeypatch.setattr(distributed, "make_client", contextmanager(lambda workers, scheduler: (yield None)))
    monkeypatch.setattr(distributed, "run_many", sequential)
    db = str(tmp_path / "s.db")
    run_bench(["branin", "hartmann6"], ["sobol"], 1, 0.25, db, "s", False, Path(tmp_path), 2, None, 2, 16,
              problem_scales={"hartmann6": 0.1})  # fmt: skip
    with open_store(db) as store:
        assert {r.problem for r in store.evaluations("s")} == {"branin", "hartmann6"}
    assert order == ["hartmann6", "branin"]  # 6 x 21 evaluations before 2 x 16
