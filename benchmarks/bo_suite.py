"""The BO benchmark suite (issue 7): labo's surrogates vs SingleTaskGP vs Sobol, side by side.

Runs every (problem, method, seed) with the suite's protocol (``labo.bench.runner``),
stores every evaluation in an SQLite study, then prints the table of final log10
regret (mean ± standard error over seeds) and seconds per iteration, and writes
``benchmarks/results/bo_suite_<tag>.json`` (summary + config) and ``.png`` (curves).

Example (the full protocol takes hours on 2 cores; the documented runs are reduced):

    .venv/bin/python benchmarks/bo_suite.py --problems branin,hartmann6 \
        --methods laplace,gp,sobol --seeds 3 --budget-scale 0.3 --tag small
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import platform
import time
from pathlib import Path

import torch

from labo.bench.methods import METHODS, RESEARCH_METHODS
from labo.bench.plots import format_table, plot_study, summarize
from labo.bench.problems import ProblemObjective, get_problem
from labo.bench.runner import run_bo, spec_from_problem
from labo.bench.store import open_store

RESULTS = Path(__file__).parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--problems", default="branin,hartmann6")
    parser.add_argument(
        "--methods",
        default="laplace,gp,sobol",
        help=f"product methods {','.join(METHODS)} or research variants {','.join(RESEARCH_METHODS)}"
        " (labo.bench.methods)",
    )
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--first-seed", type=int, default=0, help="seeds first-seed, ..., + seeds - 1")
    parser.add_argument("--budget-scale", type=float, default=1.0)
    parser.add_argument("--num-restarts", type=int, default=10)
    parser.add_argument("--raw-samples", type=int, default=512)
    parser.add_argument("--tag", default="suite")
    parser.add_argument("--db", default=None, help="study database (default: results/bo_suite_<tag>.db)")
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (as `labo --threads`)")
    parser.add_argument(
        "--jobs", type=int, default=1, help="runs in parallel (processes, one torch thread each)"
    )
    parser.add_argument("--no-plot", action="store_true", help="skip the PNG (no matplotlib needed)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    RESULTS.mkdir(parents=True, exist_ok=True)
    db = args.db or str(RESULTS / f"bo_suite_{args.tag}.db")
    problems, methods = args.problems.split(","), args.methods.split(",")
    config = {k: v for k, v in vars(args).items() if k not in ("db", "resume", "threads", "jobs", "no_plot")}
    t0 = time.perf_counter()
    with open_store(db) as store:
        store.create_study(args.tag, config, args.resume)
    jobs = [
        (
            db,
            args.tag,
            name,
            method,
            seed,
            args.budget_scale,
            args.num_restarts,
            args.raw_samples,
            args.threads,
        )
        for name in problems
        for seed in range(args.first_seed, args.first_seed + args.seeds)
        for method in methods  # methods side by side on the same seed (paired design)
    ]
    if args.jobs > 1:
        with multiprocessing.get_context("spawn").Pool(args.jobs, maxtasksperchild=1) as pool:
            for line in pool.imap_unordered(_run_one, jobs):
                print(line, flush=True)
    else:
        for job in jobs:
            print(_run_one(job), flush=True)
    with open_store(db) as store:
        summaries = summarize(store, args.tag)
        png = None if args.no_plot else plot_study(store, args.tag, RESULTS / f"bo_suite_{args.tag}.png")
    table = format_table(summaries)
    print(table)
    payload = {
        "config": config,
        "seconds_total": time.perf_counter() - t0,
        "machine": {"cpus": torch.get_num_threads(), "python": platform.python_version()},
        "summary": [s.__dict__ for s in summaries],
    }
    out = RESULTS / f"bo_suite_{args.tag}.json"
    out.write_text(json.dumps(payload, indent=1))
    print(f"wrote {out}" + (f" and {png}" if png else "") + f" (database {db})")


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
        run_bo(spec, ProblemObjective(name), store)
    return f"{name} {method} seed {seed}: {time.perf_counter() - t_run:.1f} s"


if __name__ == "__main__":
    main()
