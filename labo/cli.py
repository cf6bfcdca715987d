"""The ``labo`` command line: demo, optimize, bench, plot, export.

Run ``labo --help`` or ``labo COMMAND --help`` for the options. Every evaluation
is written to an SQLite study store (``--db``, a path or ``sqlite:///`` URL; one
default, ``labo_studies.db``, for every command) before the next point is
proposed; ``--resume`` continues a study after a crash or Ctrl-C, or extends its
budget. ``plot`` and ``export`` only read: they never create a database.
"""

from __future__ import annotations

import importlib
import json
import os
import shlex
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import typer
from tqdm import tqdm

from labo.bench.plots import format_table, plot_study, summarize
from labo.bench.problems import PROBLEM_NAMES, get_problem
from labo.bench.runner import METHODS, RunSpec, check_bounds, run_bo, spec_from_problem
from labo.bench.store import open_store, to_json
from labo.exceptions import BenchmarkError, LaboError, ObjectiveImportError, StudyError

DEFAULT_DB = "labo_studies.db"
# The former default of `labo bench` and `labo plot`: still searched by the reading commands.
LEGACY_DB = "labo_bench.db"
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


def _progress_bar(total: int, desc: str) -> tuple[tqdm, Callable]:
    bar = tqdm(total=total, desc=desc, unit="eval", dynamic_ncols=True)
    failed = [0]

    def update(row, status: str) -> None:
        failed[0] += status == "failed"
        bar.update(1)
        if failed[0]:
            bar.set_postfix(failed=failed[0])

    return bar, update


def _report(location: str, study: str, out: Path) -> None:
    with open_store(location, read_only=True) as store:
        store.study_config(study)
        out.mkdir(parents=True, exist_ok=True)
        summaries = summarize(store, study)
        table = format_table(summaries)
        png = plot_study(store, study, out / f"{study}.png")
        json_path = store.export(study, out / f"{study}.json")
    (out / f"{study}_table.md").write_text(table + "\n")
    summary_json = out / f"{study}_summary.json"
    summary_json.write_text(to_json([s.__dict__ for s in summaries], indent=1))
    typer.echo("\n" + table + "\n")
    typer.echo(f"Plot:     {png}")
    typer.echo(f"Table:    {out / f'{study}_table.md'} (summary {summary_json})")
    typer.echo(f"Export:   {json_path}")
    typer.echo(f"Database: {location} (study {study!r}; `labo plot {study} --db {location}` redraws)")


def _study_location(db: str | None, study: str) -> str:
    """The database to read ``study`` from: ``db`` if given, else the default, else the legacy one.

    Never creates a file: a missing database or study raises ``StudyError``.
    """
    if db is not None:
        return db
    for candidate in (DEFAULT_DB, LEGACY_DB):
        if Path(candidate).is_file():
            with open_store(candidate, read_only=True) as store:
                if study in store.study_names():
                    return candidate
    found = [c for c in (DEFAULT_DB, LEGACY_DB) if Path(c).is_file()]
    if not found:
        raise StudyError(
            f"no study database here ({DEFAULT_DB} or {LEGACY_DB}); run `labo optimize` or "
            "`labo bench` first, or pass --db with the database that holds the study."
        )
    with open_store(found[0], read_only=True) as store:
        store.study_config(study)  # raises "not found", listing the known studies
    return found[0]


def _check_resume_location(db: str, study: str, resume: bool) -> None:
    """Refuse to start afresh in the default database a study that lives in the legacy one."""
    if not resume or db != DEFAULT_DB or not Path(LEGACY_DB).is_file():
        return
    if Path(DEFAULT_DB).is_file():
        with open_store(DEFAULT_DB, read_only=True) as store:
            if study in store.study_names():
                return
    with open_store(LEGACY_DB, read_only=True) as store:
        if study in store.study_names():
            raise StudyError(
                f"study {study!r} is in {LEGACY_DB} (the former default database), not in {DEFAULT_DB}; "
                f"pass --db {LEGACY_DB} to resume it."
            )


def _option_for(field: str, value) -> str:
    """How to pass a stored configuration value on the command line (for resume messages)."""
    if field == "kind":
        return f"`labo {value}`"
    if field == "problem":
        return f"objective {shlex.quote(str(value))}"
    if field == "minimize":
        return "--minimize" if value else "--maximize"
    if field == "bounds":
        return "--bounds " + shlex.quote(",".join(f"{lo!r}:{hi!r}" for lo, hi in value))
    if isinstance(value, list):
        value = ",".join(map(str, value))
    return f"--{field.replace('_', '-')} {shlex.quote(str(value))}"


def _resume_command(ctx: typer.Context) -> str:
    """The command line of ``ctx``'s command with ``--resume`` added (its non-default options kept)."""
    words = ["labo"]
    threads = ctx.parent.params.get("threads", 1) if ctx.parent is not None else 1
    if threads != 1:
        words += ["--threads", str(threads)]
    words.append(ctx.info_name or "")
    for param in ctx.command.params:
        value = ctx.params.get(param.name)
        if param.name == "resume" or value is None:
            continue
        if param.param_type_name == "argument":
            words.append(str(value))
        elif value == param.default:
            continue
        elif getattr(param, "is_flag", False):
            words.append(param.opts[0] if value else (param.secondary_opts or param.opts)[0])
        else:
            words += [param.opts[0], str(value)]
    return shlex.join([*words, "--resume"])


@contextmanager
def _resumable(db: str, study: str, total: int, command: str) -> Iterator[None]:
    """On Ctrl-C, exit (code 130) with one line: where the study is and ``command`` to resume it."""
    try:
        yield
    except KeyboardInterrupt:
        with open_store(db, read_only=True) as store:
            done = sum(r.status != "running" for r in store.evaluations(study))
        typer.echo(
            f"\nInterrupted: study {study!r} is saved in {db} ({done} of {total} evaluations done); "
            f"resume with: {command}",
            err=True,
        )
        raise typer.Exit(code=130) from None


def _bench(
    problems: list[str],
    methods: list[str],
    seeds: int,
    budget_scale: float,
    db: str,
    study: str,
    resume: bool,
    out: Path,
    workers: int,
    scheduler: str | None,
    num_restarts: int,
    raw_samples: int,
    resume_command: str = "labo bench --resume",
    problem_scales: dict[str, float] | None = None,
) -> None:
    scales = problem_scales or {}
    for name in problems:
        get_problem(name)
    if seeds < 1:
        raise BenchmarkError(f"seeds must be a positive integer, got {seeds}.")
    specs = [
        spec_from_problem(
            study,
            get_problem(p),
            m,
            s,
            scales.get(p, budget_scale),
            num_restarts=num_restarts,
            raw_samples=raw_samples,
        )
        for p in problems
        for s in range(seeds)
        for m in methods
    ]
    config = {
        "kind": "bench",
        "problems": problems,
        "methods": methods,
        "seeds": seeds,
        "budget_scale": budget_scale,
        "num_restarts": num_restarts,
        "raw_samples": raw_samples,
    }
    if scales:
        config["problem_scales"] = scales
    _check_resume_location(db, study, resume)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with open_store(db) as store, _resumable(db, study, sum(sp.budget for sp in specs), resume_command):
        store.create_study(study, config, resume, option=_option_for)
        done = {(r.problem, r.method, r.seed) for r in store.evaluations(study) if r.status != "running"}
        counts = {k: 0 for k in done}
        for r in store.evaluations(study):
            if r.status != "running":
                counts[(r.problem, r.method, r.seed)] += 1
        todo = sum(sp.budget - counts.get((sp.problem, sp.method, sp.seed), 0) for sp in specs)
        if workers > 1 or scheduler:
            from labo.bench.distributed import make_client, run_many

            bar = tqdm(total=len(specs), desc="runs", unit="run", dynamic_ncols=True)
            try:
                with make_client(workers, scheduler) as client:
                    run_many(specs, db, client, on_done=lambda summary: bar.update(1))
            finally:
                bar.close()
        else:
            bar, update = _progress_bar(todo, "evaluations")
            try:
                for spec in specs:
                    bar.set_description(f"{spec.problem}/{spec.method}/seed {spec.seed}")
                    run_bo(spec, _objective_of(spec.problem), store, progress=update)
            finally:
                bar.close()
    typer.echo(f"Finished in {time.perf_counter() - t0:.0f} s.")
    _report(db, study, out)


def _objective_of(problem: str):
    from labo.bench.problems import ProblemObjective

    return ProblemObjective(problem)


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
) -> None:
    """LaplaceModel vs SingleTaskGP vs Sobol on Branin, Hartmann6 and Hartmann6 in 100 D.

    A reduced version of `labo bench` (fewer seeds, a fraction of the budget, a tenth for
    the 100-D problem, a lighter acquisition optimisation: 4 restarts, 128 raw samples).
    Prints a table of final log10 regret and seconds per iteration, and writes a PNG
    plot, the table, a JSON export and the study database into OUT.
    """
    try:
        db = str(Path(out) / "study.db")
        if not resume and Path(db).exists():
            Path(db).unlink()
        problems, methods = ["branin", "hartmann6", "hartmann6_100d"], ["laplace", "gp", "sobol"]
        args = (seeds, budget_scale, db, "demo", resume, Path(out), 1, None, 4, 128)
        scales = {"hartmann6_100d": budget_scale * 0.4}  # 3 iterations of q = 5 at 0.25
        _bench(problems, methods, *args, resume_command=_resume_command(ctx), problem_scales=scales)
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
        _check_resume_location(db, study, resume)
        stored = _stored_config(db, study) if resume else {}
        # A resumed study keeps its initial design, also when --budget extends it.
        n0 = n_init or stored.get("n_init") or min(2 * len(box), 20, budget)
        spec = RunSpec(study, objective, method, seed, box, budget, q, n0, minimize)
        config = {"kind": "optimize", **spec.to_dict()}
        config.pop("study")
        direction = "Minimising" if minimize else "Maximising (the default; --minimize for a loss)"
        typer.echo(
            f"{direction} {objective} over {len(box)} dimensions, budget {budget}: study {study!r} in {db}."
        )
        with open_store(db) as store, _resumable(db, study, budget, _resume_command(ctx)):
            store.create_study(study, config, resume, option=_option_for)
            done = sum(r.status != "running" for r in store.evaluations(study, objective, method, seed))
            bar, update = _progress_bar(max(budget - done, 0), objective)
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


def _stored_config(db: str, study: str) -> dict:
    """The stored configuration of ``study`` in ``db``, or ``{}`` (nothing is created)."""
    if not _path_exists(db):
        return {}
    with open_store(db, read_only=True) as store:
        return store.study_config(study) if study in store.study_names() else {}


def _path_exists(db: str) -> bool:
    return Path(db[len("sqlite:///") :] if db.startswith("sqlite:///") else db).is_file()


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
        _bench(names, chosen, *args, resume_command=_resume_command(ctx))
        if suite == "bbob":
            _report_bbob(db, study, Path(out))
    except LaboError as err:
        _fail(err)


def _report_bbob(location: str, study: str, out: Path) -> None:
    """The BBOB table (mean ± s.e. over instances), paired counts, plot and JSON of a study."""
    from labo.bench import bbob_report as report

    with open_store(location) as store:
        finals = report.bbob_finals(store, study)
    summaries, differences = report.summarize_bbob(finals), report.paired_differences(finals)
    text = report.format_bbob_table(summaries) + "\n\n" + report.format_bbob_counts(differences)
    png = report.plot_bbob(summaries, out / f"{study}_bbob.png")
    (out / f"{study}_bbob.json").write_text(json.dumps(report.bbob_payload(summaries, differences), indent=1))
    typer.echo("\nBBOB, final log10(f_best - f_opt), mean ± s.e. (runs):\n\n" + text + "\n")
    typer.echo(f"BBOB:     {png} and {out / f'{study}_bbob.json'}")


@app.command()
def plot(
    study: str = typer.Argument(..., help="Study name."),
    db: str = typer.Option(None, help=_READ_DB_HELP),
    out: str = typer.Option(".", help="Folder for the PNG, table and JSON export."),
) -> None:
    """Redraw the plot and table of a stored study (reads the database, never creates one)."""
    try:
        _report(_study_location(db, study), study, Path(out))
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
        with open_store(_study_location(db, study), read_only=True) as store:
            written = store.export(study, path)
    except LaboError as err:
        _fail(err)
    typer.echo(f"Wrote {written}")


if __name__ == "__main__":
    app()
