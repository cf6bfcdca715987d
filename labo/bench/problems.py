"""Benchmark problems of the BO suite, all in the maximisation convention.

Each :class:`Problem` holds its search box, the evaluation budget of the suite's
protocol (Sobol initial design of ``2d`` points, capped at 20, unless stated),
the batch size ``q`` and the optimum used to compute simple regret. Objectives
are BoTorch test functions negated so that larger is better; regret is
``optimum - best observed value`` (single objective) or ``max hypervolume -
hypervolume of the observed Pareto front`` (multi-objective).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from botorch.test_functions import Ackley, Branin, Hartmann, Rosenbrock
from botorch.test_functions.multi_objective import BraninCurrin
from torch import Tensor

from labo.bench.bbob import bbob_problem_from_name, is_bbob_name
from labo.bench.problem import Problem, initial_design_size
from labo.exceptions import BenchmarkError


def _negated(fn) -> Callable[[Tensor], Tensor]:
    def f(X: Tensor) -> Tensor:
        return -fn(X).unsqueeze(-1)

    return f


class _Embedded:
    """Hartmann6 on 6 fixed coordinates of a higher-dimensional unit cube."""

    def __init__(self, dim: int, seed: int = 1234) -> None:
        g = torch.Generator().manual_seed(seed)
        self.active = torch.randperm(dim, generator=g)[:6].sort().values
        self.hartmann = Hartmann(dim=6)

    def __call__(self, X: Tensor) -> Tensor:
        return -self.hartmann(X[..., self.active]).unsqueeze(-1)


def _box(lower: list[float], upper: list[float]) -> Tensor:
    return torch.tensor([lower, upper], dtype=torch.float64)


def _make(name: str) -> Problem:
    if name == "branin":
        fn = Branin()
        return Problem(name, fn.bounds, 50, 1, initial_design_size(2), _negated(fn), -fn.optimal_value)
    if name == "hartmann6":
        fn = Hartmann(dim=6)
        return Problem(name, fn.bounds, 100, 1, initial_design_size(6), _negated(fn), -fn.optimal_value)
    if name == "ackley10":
        fn = Ackley(dim=10)
        return Problem(name, fn.bounds, 200, 2, initial_design_size(10), _negated(fn), 0.0)
    if name == "hartmann6_100d":
        emb = _Embedded(100)
        return Problem(name, _box([0.0] * 100, [1.0] * 100), 150, 5, 20, emb, 3.32237)
    if name == "rosenbrock20":
        fn = Rosenbrock(dim=20)
        return Problem(name, fn.bounds, 200, 4, initial_design_size(20), _negated(fn), 0.0)
    if name == "ackley10_many":
        fn = Ackley(dim=10)
        return Problem(name, fn.bounds, 1000 + 10 * 20, 20, 1000, _negated(fn), 0.0)
    if name == "branincurrin":
        fn = BraninCurrin(negate=True)
        ref = tuple(float(r) for r in fn.ref_point)
        return Problem(name, fn.bounds, 50, 1, initial_design_size(2), fn, fn.max_hv, ref)
    raise BenchmarkError(
        f"problem must be one of {', '.join(PROBLEM_NAMES)}, or a BBOB name "
        f"bbob_fFF_iI_dD (e.g. bbob_f01_i1_d20; pip install coco-experiment), got {name!r}."
    )


PROBLEM_NAMES = (
    "branin",
    "hartmann6",
    "ackley10",
    "hartmann6_100d",
    "rosenbrock20",
    "ackley10_many",
    "branincurrin",
)


def get_problem(name: str) -> Problem:
    """The benchmark problem called ``name``: one of :data:`PROBLEM_NAMES`, or a BBOB
    function named ``bbob_fFF_iI_dD`` (see :mod:`labo.bench.bbob`; needs ``cocoex``)."""
    if isinstance(name, str) and name.startswith("bbob_"):
        return bbob_problem_from_name(name)  # needs cocoex (optional), imported on use
    return _make(name)


def is_problem_name(name: str) -> bool:
    """Whether ``name`` is a benchmark problem's name (a suite name or a BBOB name)."""
    if name in PROBLEM_NAMES:
        return True
    return is_bbob_name(name)


class ProblemObjective:
    """A picklable point-wise objective for a named problem (for the runner and Dask).

    Calling it with a length-``d`` sequence returns the ``m`` objective values as floats.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self._problem: Problem | None = None

    def __getstate__(self) -> dict:
        return {"name": self.name, "_problem": None}

    def __call__(self, x) -> list[float]:
        if self._problem is None:
            self._problem = get_problem(self.name)
        X = torch.as_tensor(x, dtype=torch.float64).reshape(1, -1)
        return self._problem.function(X).reshape(-1).tolist()
