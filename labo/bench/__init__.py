"""BO runner, benchmark problems, SQLite study store, Dask evaluation and plots (``labo`` CLI)."""

from labo.bench.methods import METHODS, RESEARCH_METHODS
from labo.bench.problems import PROBLEM_NAMES, Problem, ProblemObjective, get_problem
from labo.bench.runner import RunResult, RunSpec, run_bo, spec_from_problem
from labo.bench.store import Evaluation, StudyStore, open_store

__all__ = [
    "METHODS",
    "PROBLEM_NAMES",
    "Evaluation",
    "Problem",
    "ProblemObjective",
    "RESEARCH_METHODS",
    "RunResult",
    "RunSpec",
    "StudyStore",
    "get_problem",
    "open_store",
    "run_bo",
    "spec_from_problem",
]
