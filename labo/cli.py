"""The ``labo`` command line: demo, optimize, bench, plot, export.

Run ``labo --help`` or ``labo COMMAND --help`` for the options. Every evaluation
is written to an SQLite study store (``--db``, a path or ``sqlite:///`` URL; one
default, ``labo_studies.db``, for every command) before the next point is
proposed; ``--resume`` continues a study after a crash or Ctrl-C, or extends its
budget. ``plot`` and ``export`` only read: they never create a database.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable
from pathlib import Path

import typer

from labo.bench.cli_support import (
    DEFAULT_DB,
    LEGACY_DB,
    check_resume_location,
    option_for,
    progress_bar,
    report_bbob,
    report_study,
    resumable,
    resume_command,
    run_bench,
    stored_config,
    study_location,
)
from labo.bench.methods import METHODS
from labo.bench.problems import PROBLEM_NAMES
from labo.bench.runner import RunSpec, check_bounds, run_bo
from labo.bench.store import open_store
from labo.exceptions import BenchmarkError, LaboError, ObjectiveImportError

_DB_HELP = f"Study database: a file path or sqlite:/// URL (default {DEFAULT_DB}, shared by every command)."
_READ_DB_HELP = (
    "Study database: a file path or sqlite:/// URL "
    f"(default {DEFAULT_DB}, or {LEGACY_DB} if the study is there)."
)

app = typer.Typer(
    help="Bayesian optimisation with Laplace-approximated neural-network surrogates.",
    no_args_is_help=True,
    add_completion=False,
)


@app.callback()
def _main(
    threads: int = typer.Option(
        1,
        help="torch threads of this process. The surrogates are small: one thread is fastest; "
        "use --workers for parallelism.",
    ),
) -> None:
    """Bayesian optimisation with Laplace-approximated neural-network surrogates."""
    if threads < 1:
        _fail(BenchmarkError(f"threads must be a positive integer, got {threads}."))
    import torch

    torch.set_num_threads(threads)


def _fail(err: Exception) -> None:
    typer.echo(f"Error: {err}", err=True)
    raise typer.Exit(code=2)


def parse_bounds(text: str) -> tuple[tuple[float, float], ...]:
    """``"lo:hi,lo:hi,..."`` (or ``"lo:hi*d"`` for ``d`` equal dimensions) to ``d`` pairs."""
    pairs = []
    for part in text.replace(" ", "").split(","):
        times = 1
        if "*" in part:
            part, count = part.split("*", 1)
            times = int(count) if count.isdigit() and int(count) > 0 else -1
        pieces = part.split(":")
        try:
            if len(pieces) != 2 or times < 1:
                raise ValueError
            pair = (float(pieces[0]), float(pieces[1]))
        except ValueError:
            raise BenchmarkError(
                f"bounds must look like 'lo:hi,lo:hi' or 'lo:hi*d', got {text!r} (bad part {part!r})."
            ) from None
        pairs.extend([pair] * times)
    check_bounds(pairs)
    return tuple(pairs)


def load_objective(target: str) -> Callable:
    """Import ``MODULE:FUNCTION`` (the current directory is importable)."""
    if target.count(":") != 1 or not all(target.split(":")):
        raise ObjectiveImportError(f"objective must be given as MODULE:FUNCTION, got {target!r}.")
    module_name, attr = target.split(":")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except Exception as err:
        raise ObjectiveImportError(f"cannot import module {module_name!r} of {target!r}: {err}") from err
    function = getattr(module, attr, None)
    if not callable(function):
        raise ObjectiveImportError(
            f"{module_name!r} has no callable named {attr!r} (got {type(function).__name__})."
        )
    return function


def _split(text: str, allowed: tuple[str, ...], what: str) -> list[str]:
    items = [t for t in text.replace(" ", "").split(",") if t]
    bad = [t for t in items if t not in allowed]
    if bad or not items:
        raise BenchmarkError(
            f"{what} must be a comma-separated subset of {', '.join(allowed)}, got {text!r}."
        )
    return items


@app.command()
def demo(
    ctx: typer.Context,
    out: str = typer.Option("labo-demo", help="Folder for the plot, table, export and database."),
    seeds: int = typer.Option(3, help="Seeds per (problem, method)."),
    budget_scale: float = typer.Option(0.25, help="Fraction of the suite's BO evaluations to run."),
    resume: bool = typer.Option(False, help="Continue an interrupted demo instead of starting over."),
    workers: int = typer.Option(
        min(2, os.cpu_count() or 1),
        help="Runs in parallel (Dask worker processes, one thread each); 1 runs them one after another.",
    ),
) -> None:
    """LaplaceModel vs SingleTaskGP vs Sobol on Branin, Hartmann6 and Hartmann6 in 100 D.

    A reduced version of `labo bench` (fewer seeds, a quarter of the BO budget, 7.5 % for
    the 100-D problem, i.e. two iterations of q = 5, and a lighter acquisition
    optimisation: 4 restarts, 128 raw samples). The runs go on two worker processes where
    the machine has two cores: BO at these sizes is bound by Python overhead, so two
    single-thread runs side by side finish sooner than two-thread runs one after another.
    Prints a table of final log10 regret and seconds per iteration, and writes a PNG plot,
    the table, a JSON export and the study database into OUT.
    """
    try:
        db = str(Path(out) / "study.db")
        if not resume and Path(db).exists():
            Path(db).unlink()
        problems, methods = ["branin", "hartmann6", "hartmann6_100d"], ["laplace", "gp", "sobol"]
        args = (seeds, budget_scale, db, "demo", resume, Path(out), workers, None, 4, 128)
        scales = {"hartmann6_100d": budget_scale * 0.3}  # 2 iterations of q = 5 at 0.25
        run_bench(problems, methods, *args, resume_command=resume_command(ctx), problem_scales=scales)
    except LaboError as err:
        _fail(err)


@app.command()
def optimize(
    ctx: typer.Context,
    objective: str = typer.Argument(
        ..., help="Your function as MODULE:FUNCTION; it takes a list of d floats."
    ),
    bounds: str = typer.Option(..., help="Search box 'lo:hi,lo:hi,...' (or 'lo:hi*d' for d equal ranges)."),
    budget: int = typer.Option(30, help="Total number of evaluations, initial design included."),
    q: int = typer.Option(1, help="Points proposed per iteration (without workers)."),
    workers: int = typer.Option(1, help="Parallel evaluations on a Dask LocalCluster (asynchronous BO)."),
    scheduler: str = typer.Option(
        None, help="Address of an existing Dask scheduler instead of a LocalCluster."
    ),
    minimize: bool = typer.Option(
        False, "--minimize/--maximize", help="Minimise (e.g. a loss) or maximise; maximise is the default."
    ),
    method: str = typer.Option("laplace", help=f"Surrogate: one of {', '.join(METHODS)}."),
    n_init: int = typer.Option(0, help="Sobol initial design size (default: 2d, at most 20)."),
    seed: int = typer.Option(0, help="Seed of the initial design and the acquisition optimisation."),
    db: str = typer.Option(DEFAULT_DB, help=_DB_HELP),
    study: str = typer.Option("optimize", help="Study name inside the database."),
    resume: bool = typer.Option(
        False,
        help="Continue an existing study (after a crash, kill or Ctrl-C); with a larger --budget, extend it.",
    ),
) -> None:
    """Maximise (the default) or minimise (--minimize) your Python function with BO.

    The Laplace surrogate is the default method. Example:

        labo optimize mymodule:loss --bounds "-5:10,0:15" --minimize --budget 40
    """
    try:
        fn = load_objective(objective)
        box = parse_bounds(bounds)
        check_resume_location(db, study, resume)
        stored = stored_config(db, study) if resume else {}
        # A resumed study keeps its initial design, also when --budget extends it.
        n0 = n_init or stored.get("n_init") or min(2 * len(box), 20, budget)
        spec = RunSpec(study, objective, method, seed, box, budget, q, n0, minimize)
        config = {"kind": "optimize", **spec.to_dict()}
        config.pop("study")
        direction = "Minimising" if minimize else "Maximising (the default; --minimize for a loss)"
        typer.echo(
            f"{direction} {objective} over {len(box)} dimensions, budget {budget}: study {study!r} in {db}."
        )
        with open_store(db) as store, resumable(db, study, budget, resume_command(ctx)):
            store.create_study(study, config, resume, option=option_for)
            done = sum(r.status != "running" for r in store.evaluations(study, objective, method, seed))
            bar, update = progress_bar(max(budget - done, 0), objective)
            try:
                if workers > 1 or scheduler:
                    from labo.bench.distributed import make_client, run_async

                    with make_client(workers, scheduler) as client:
                        result = run_async(spec, fn, store, client, workers, progress=update)
                else:
                    result = run_bo(spec, fn, store, progress=update)
            finally:
                bar.close()
    except LaboError as err:
        _fail(err)
    for row in result.failed[:5]:
        typer.echo(f"failed evaluation at x={row.x}: {row.error}")
    if result.failed:
        typer.echo(result.failure_summary())
    best = result.best()
    if best is None:
        typer.echo("No successful evaluation.")
        raise typer.Exit(code=1)
    found = "the minimum found" if minimize else "the maximum found"
    typer.echo(f"Best value: {best.y[0]:.6g} ({found}) at x = {[round(v, 6) for v in best.x]}")
    typer.echo(f"Database: {db} (study {study!r})")


@app.command()
def bench(
    ctx: typer.Context,
    problems: str = typer.Option(
        "branin,hartmann6", help=f"Comma-separated from: {', '.join(PROBLEM_NAMES)}."
    ),
    suite: str = typer.Option(
        None,
        help="'bbob': COCO's BBOB functions instead of --problems (pip install coco-experiment), "
        "f1-f24 x instances 1-5 at d=20 unless --bbob-functions/--bbob-instances/--bbob-dim say otherwise.",
    ),
    bbob_functions: str = typer.Option("1-24", help="With --suite bbob: functions, e.g. '1-24' or '1,8'."),
    bbob_instances: str = typer.Option("1-5", help="With --suite bbob: instances, e.g. '1-5'."),
    bbob_dim: int = typer.Option(20, help="With --suite bbob: dimension (2, 3, 5, 10, 20 or 40)."),
    methods: str = typer.Option("laplace,gp,sobol", help=f"Comma-separated from: {', '.join(METHODS)}."),
    seeds: int = typer.Option(
        None,
        help="Seeds 0..N-1 per (problem, method); paired across methods "
        "(default 10; 1 with --suite bbob, whose instances are the replicates).",
    ),
    budget_scale: float = typer.Option(
        1.0, help="Scale the suite's BO evaluations (after the initial design)."
    ),
    workers: int = typer.Option(
        1, help="Run (problem, method, seed) runs in parallel on a Dask LocalCluster."
    ),
    scheduler: str = typer.Option(None, help="Address of an existing Dask scheduler."),
    db: str = typer.Option(DEFAULT_DB, help=_DB_HELP),
    study: str = typer.Option("bench", help="Study name inside the database."),
    resume: bool = typer.Option(
        False,
        help="Continue an existing study (after a crash or Ctrl-C); a larger --budget-scale extends it.",
    ),
    out: str = typer.Option("labo-bench", help="Folder for the plot, table and exports."),
    num_restarts: int = typer.Option(10, help="optimize_acqf restarts (protocol: 10)."),
    raw_samples: int = typer.Option(512, help="optimize_acqf raw samples (protocol: 512)."),
) -> None:
    """Run the benchmark suite: every problem x method x seed, then a regret table and plot.

    `labo bench --suite bbob` runs COCO's BBOB functions (labo.bench.bbob) and also prints
    final log10(f_best - f_opt) per function, mean ± s.e. over instances, with a plot.
    """
    try:
        if suite not in (None, "bbob"):
            raise BenchmarkError(f"suite must be 'bbob' (or left out), got {suite!r}.")
        if suite == "bbob":
            from labo.bench.bbob import bbob_names, parse_index_ranges

            functions = parse_index_ranges(bbob_functions, "bbob_functions")
            instances = parse_index_ranges(bbob_instances, "bbob_instances")
            names = bbob_names(functions, instances, bbob_dim)
        else:
            names = _split(problems, PROBLEM_NAMES, "problems")
        chosen = _split(methods, METHODS, "methods")
        args = (
            seeds if seeds is not None else (1 if suite == "bbob" else 10),
            budget_scale,
            db,
            study,
            resume,
            Path(out),
            workers,
            scheduler,
            num_restarts,
            raw_samples,
        )
        run_bench(names, chosen, *args, resume_command=resume_command(ctx))
        if suite == "bbob":
            report_bbob(db, study, Path(out))
    except LaboError as err:
        _fail(err)


@app.command()
def plot(
    study: str = typer.Argument(..., help="Study name."),
    db: str = typer.Option(None, help=_READ_DB_HELP),
    out: str = typer.Option(".", help="Folder for the PNG, table and JSON export."),
) -> None:
    """Redraw the plot and table of a stored study (reads the database, never creates one)."""
    try:
        report_study(study_location(db, study), study, Path(out))
    except LaboError as err:
        _fail(err)


@app.command()
def export(
    study: str = typer.Argument(..., help="Study name."),
    path: str = typer.Argument(..., help="Output file ending in .json or .csv."),
    db: str = typer.Option(None, help=_READ_DB_HELP),
) -> None:
    """Export every evaluation of a study to JSON or CSV (CSV: one column per input, x0, x1, ...)."""
    try:
        with open_store(study_location(db, study), read_only=True) as store:
            written = store.export(study, path)
    except LaboError as err:
        _fail(err)
    typer.echo(f"Wrote {written}")


if __name__ == "__main__":
    app()
