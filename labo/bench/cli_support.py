"""The CLI's study plumbing: where studies live (the default database, the former one
that reading commands still search), resume checks and messages, running a benchmark
study with its progress bar, and the report written after it.

Used by ``labo/cli.py``; kept apart so the command definitions stay readable.
"""

from __future__ import annotations

import json
import shlex
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import typer
from tqdm import tqdm

from labo.bench.plots import format_table, plot_study, summarize
from labo.bench.problems import ProblemObjective, get_problem
from labo.bench.runner import run_bo, spec_from_problem
from labo.bench.store import open_store, to_json
from labo.exceptions import BenchmarkError, StudyError

DEFAULT_DB = "labo_studies.db"
# The former default of `labo bench` and `labo plot`: still searched by the reading commands.
LEGACY_DB = "labo_bench.db"


def study_location(db: str | None, study: str) -> str:
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


def check_resume_location(db: str, study: str, resume: bool) -> None:
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


def option_for(field: str, value) -> str:
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


def resume_command(ctx: typer.Context) -> str:
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
def resumable(db: str, study: str, total: int, command: str) -> Iterator[None]:
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


def stored_config(db: str, study: str) -> dict:
    """The stored configuration of ``study`` in ``db``, or ``{}`` (nothing is created)."""
    if not path_exists(db):
        return {}
    with open_store(db, read_only=True) as store:
        return store.study_config(study) if study in store.study_names() else {}


def path_exists(db: str) -> bool:
    return Path(db[len("sqlite:///") :] if db.startswith("sqlite:///") else db).is_file()


def progress_bar(total: int, desc: str) -> tuple[tqdm, Callable]:
    bar = tqdm(total=total, desc=desc, unit="eval", dynamic_ncols=True)
    failed = [0]

    def update(row, status: str) -> None:
        failed[0] += status == "failed"
        bar.update(1)
        if failed[0]:
            bar.set_postfix(failed=failed[0])

    return bar, update


def report_study(location: str, study: str, out: Path) -> None:
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


def run_bench(
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
    check_resume_location(db, study, resume)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with open_store(db) as store, resumable(db, study, sum(sp.budget for sp in specs), resume_command):
        store.create_study(study, config, resume, option=option_for)
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
                # Longest runs first (dimension x budget), so that no long run starts last
                # and leaves the other workers idle at the end.
                order = sorted(specs, key=lambda sp: -len(sp.bounds) * sp.budget)
                with make_client(workers, scheduler) as client:
                    run_many(order, db, client, on_done=lambda summary: bar.update(1))
            finally:
                bar.close()
        else:
            bar, update = progress_bar(todo, "evaluations")
            try:
                for spec in specs:
                    bar.set_description(f"{spec.problem}/{spec.method}/seed {spec.seed}")
                    run_bo(spec, objective_of(spec.problem), store, progress=update)
            finally:
                bar.close()
    typer.echo(f"Finished in {time.perf_counter() - t0:.0f} s.")
    report_study(db, study, out)


def objective_of(problem: str):

    return ProblemObjective(problem)


def report_bbob(location: str, study: str, out: Path) -> None:
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
