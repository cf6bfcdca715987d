"""COCO's BBOB suite (issue 23 §3): labo vs SingleTaskGP vs Sobol on f1-f24, instances 1-5.

Every (function, instance, method, seed) run follows the suite's protocol
(``labo.bench.runner``) on the problems of ``labo.bench.bbob``: the box [-5, 5]^d,
``min(2d, 20)`` Sobol points, then BO up to 100 evaluations in batches of q = 4
(d = 20: 20 Sobol points + 80 evaluations). Runs go into a resumable SQLite study;
then the script prints the table of final log10(f_best - f_opt), mean ± standard
error over instances (and seeds), per function and method, and how often each labo
method beats Sobol / equals or beats SingleTaskGP on the paired differences over
instances (definitions in ``labo.bench.bbob_report``: beats = mean difference below
-2 s.e.; equals or beats = mean difference at most +1 s.e.). Writes
``benchmarks/results/bbob_<tag>.json`` and ``bbob_<tag>.png``. Needs
``pip install coco-experiment`` (``labo[bbob]``).

The full protocol (24 functions x 5 instances x 3 methods = 360 runs, d = 20; meant for
a 16-core machine, one torch thread per run):

    PYTHONPATH=. python benchmarks/bbob_suite.py --methods laplace,gp,sobol --jobs 16 --tag bbob20

After an interruption, the same command with ``--resume`` finishes the missing runs
(``--only gp,sobol`` restricts that to some of the study's methods).
Studies run separately combine in one report with ``--include``, e.g. a new labo method
against baselines stored earlier on the same instances and seeds:

    PYTHONPATH=. python benchmarks/bbob_suite.py --methods laplace --tag new --db new.db \\
        --report-only --include old.db:bbob20:gp,sobol

A reduced check on 2 cores (a minute or two):

    PYTHONPATH=. .venv/bin/python benchmarks/bbob_suite.py --functions 1,8 --instances 1,2 \\
        --methods sobol,laplace --dim 5 --budget-scale 0.1 --jobs 2 --tag smoke
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import platform
import time
from pathlib import Path

import torch

from labo.bench.bbob import bbob_name, parse_index_ranges
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
from labo.bench.problems import ProblemObjective, get_problem
from labo.bench.runner import run_bo, spec_from_problem
from labo.bench.store import open_store
from labo.exceptions import BenchmarkError

RESULTS = Path(__file__).parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--functions", default="1-24", help="BBOB functions, e.g. '1-24' or '1,8,15'")
    parser.add_argument("--instances", default="1-5", help="BBOB instances, e.g. '1-5'")
    parser.add_argument("--dim", type=int, default=20, help="2, 3, 5, 10, 20 or 40")
    parser.add_argument("--methods", default="laplace,gp,sobol")
    parser.add_argument("--seeds", type=int, default=1, help="seeds per instance (paired across methods)")
    parser.add_argument("--budget-scale", type=float, default=1.0)
    parser.add_argument("--num-restarts", type=int, default=10)
    parser.add_argument("--raw-samples", type=int, default=512)
    parser.add_argument("--tag", default="bbob20")
    parser.add_argument("--db", default=None, help="study database (default: results/bbob_<tag>.db)")
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run")
    parser.add_argument(
        "--jobs", type=int, default=1, help="runs in parallel (processes, one torch thread each)"
    )
    parser.add_argument("--no-plot", action="store_true", help="skip the PNG")
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="run nothing: the table, JSON and PNG of the runs already finished in --db",
    )
    parser.add_argument(
        "--only",
        default=None,
        metavar="METHODS",
        help="run only these of the study's --methods this time (comma-separated), e.g. to finish "
        "the baselines of a stored study without rerunning a method that was replaced",
    )
    parser.add_argument(
        "--include",
        action="append",
        default=[],
        metavar="DB:STUDY:METHODS",
        help="add the finished runs of METHODS (comma-separated) of another study to the report, "
        "e.g. baselines run earlier on the same instances and seeds; repeatable",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    RESULTS.mkdir(parents=True, exist_ok=True)
    db = args.db or str(RESULTS / f"bbob_{args.tag}.db")
    functions, instances = (
        parse_index_ranges(args.functions, "--functions"),
        parse_index_ranges(args.instances, "--instances"),
    )
    methods = args.methods.split(",")
    includes = [_parse_include(source) for source in args.include]  # before hours of runs
    run_methods = methods if args.only is None else args.only.split(",")
    if not set(run_methods) <= set(methods):
        raise BenchmarkError(f"--only {args.only!r} must name methods of --methods {args.methods!r}.")
    # Instance-major: an interrupted study already covers every function on its first
    # instances, and resuming fills in the rest.
    names = [bbob_name(f, i, args.dim) for i in instances for f in functions]  # validates early
    skip = ("db", "resume", "threads", "jobs", "no_plot", "report_only", "include", "only")
    config = {k: v for k, v in vars(args).items() if k not in skip}
    t0 = time.perf_counter()
    with open_store(db) as store:
        store.create_study(args.tag, config, args.resume or args.report_only)
    budget = (args.budget_scale, args.num_restarts, args.raw_samples, args.threads)
    jobs = [
        (db, args.tag, name, method, seed, *budget)
        for name in names
        for seed in range(args.seeds)
        for method in run_methods  # methods side by side on the same instance and seed (paired)
    ]
    if args.report_only:
        jobs = []
    if args.jobs > 1 and jobs:
        with multiprocessing.get_context("spawn").Pool(args.jobs, maxtasksperchild=1) as pool:
            for line in pool.imap_unordered(_run_one, jobs):
                print(line, flush=True)
    else:
        for job in jobs:
            print(_run_one(job), flush=True)

    with open_store(db) as store:
        # finished runs only: an interrupted study's unfinished runs stop short of the budget
        budget = get_problem(names[0]).scaled_budget(args.budget_scale)
        finals = bbob_finals(store, args.tag, budget)
    for other_db, study, wanted in includes:
        with open_store(other_db) as other:
            finals = merge_finals(finals, bbob_finals(other, study, budget), wanted)
    summaries, differences = summarize_bbob(finals), paired_differences(finals)
    print()
    print(format_bbob_table(summaries))
    print()
    print(format_bbob_counts(differences))
    png = None if args.no_plot else plot_bbob(summaries, RESULTS / f"bbob_{args.tag}.png")
    payload = {
        "config": config,
        "included": args.include,
        "seconds_total": time.perf_counter() - t0,
        "machine": {"cpus": multiprocessing.cpu_count(), "python": platform.python_version()},
        **bbob_payload(summaries, differences),
    }
    out = RESULTS / f"bbob_{args.tag}.json"
    out.write_text(json.dumps(payload, indent=1))
    print(f"wrote {out}" + (f" and {png}" if png else "") + f" (database {db})")


def _parse_include(source: str) -> tuple[str, str, list[str]]:
    """``"DB:STUDY:METHODS"`` → ``(db, study, [method, ...])``."""
    parts = source.rsplit(":", 2)
    if len(parts) != 3 or not all(parts) or not Path(parts[0]).is_file():
        raise BenchmarkError(f"--include wants DB:STUDY:METHODS with an existing database, got {source!r}.")
    return parts[0], parts[1], parts[2].split(",")


def _run_one(job: tuple) -> str:
    """One (problem, method, seed) run into the study at ``db``; returns its log line."""
    db, tag, name, method, seed, budget_scale, num_restarts, raw_samples, threads = job
    torch.set_num_threads(threads)
    problem = get_problem(name)
    spec = spec_from_problem(
        tag, problem, method, seed, budget_scale, num_restarts=num_restarts, raw_samples=raw_samples
    )
    t_run = time.perf_counter()
    with open_store(db) as store:
        result = run_bo(spec, ProblemObjective(name), store)
    ys = [e.y for e in result.evaluations if e.status == "ok"]
    regret = problem.regret(torch.tensor(ys, dtype=torch.float64).reshape(-1, 1))
    return f"{name} {method} seed {seed}: {time.perf_counter() - t_run:.1f} s, regret {regret:.3g}"


if __name__ == "__main__":
    main()
