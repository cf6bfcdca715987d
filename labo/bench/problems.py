"""Benchmark problems of the BO suite, all in the maximisation convention.

Each :class:`Problem` holds its search box, the evaluation budget of the suite's
protocol (Sobol initial design of ``2d`` points, capped at 20, unless stated),
the batch size ``q`` and the optimum used to compute simple regret. Objectives
are BoTorch test functions negated so that larger is better; regret is
``optimum - best observed value`` (single objective) or ``max hypervolume -
hypervolume of the observed Pareto front`` (multi-objective).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from botorch.test_functions import Ackley, Branin, Hartmann, Rosenbrock
from botorch.test_functions.multi_objective import BraninCurrin
from botorch.utils.multi_objective.hypervolume import Hypervolume
from botorch.utils.multi_objective.pareto import is_non_dominated
from torch import Tensor

from labo.exceptions import BenchmarkError


def initial_design_size(dim: int) -> int:
    """The protocol's Sobol initial design size: ``2 d`` points, capped at 20."""
    return min(2 * dim, 20)


@dataclass(frozen=True)
class Problem:
    """A benchmark problem (maximised).

    Attributes:
        name: Identifier used on the command line and in the study store.
        bounds: ``2 x d`` box (lower row, upper row).
        budget: Total number of evaluations, initial design included.
        q: Candidates proposed per BO iteration.
        n_init: Size of the Sobol initial design.
        function: Maps ``n x d`` inputs to ``n x m`` outputs (to be maximised).
        optimum: Best attainable value (``m = 1``) or maximal hypervolume (``m > 1``).
        ref_point: Hypervolume reference point (``m > 1`` only).
    """

    name: str
    bounds: Tensor
    budget: int
    q: int
    n_init: int
    function: Callable[[Tensor], Tensor] = field(repr=False)
    optimum: float
    ref_point: tuple[float, ...] | None = None

    @property
    def dim(self) -> int:
        return self.bounds.shape[-1]

    @property
    def num_objectives(self) -> int:
        return 1 if self.ref_point is None else len(self.ref_point)

    def scaled_budget(self, budget_scale: float) -> int:
        """Budget with the post-initial-design part scaled (at least one BO iteration)."""
        if not (budget_scale > 0 and math.isfinite(budget_scale)):
            raise BenchmarkError(f"budget_scale must be a positive number, got {budget_scale!r}.")
        bo_evals = max(self.q, round((self.budget - self.n_init) * budget_scale / self.q) * self.q)
        return self.n_init + bo_evals

    def regret(self, Y: Tensor) -> float:
        """Simple regret of the observed ``n x m`` values (NaN rows ignored).

        Returns:
            ``optimum - max Y`` for one objective; ``max hypervolume - hypervolume``
            of the observed Pareto front for several. ``inf`` if nothing is valid.
        """
        Y = Y[~torch.isnan(Y).any(-1)]
        if Y.shape[0] == 0:
            return math.inf
        if self.ref_point is None:
            return max(self.optimum - float(Y.max()), 0.0)
        ref = torch.tensor(self.ref_point, dtype=Y.dtype)
        front = Y[is_non_dominated(Y)]
        front = front[(front > ref).all(-1)]
        hv = Hypervolume(ref).compute(front) if front.shape[0] else 0.0
        return max(self.optimum - hv, 0.0)


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
        from labo.bench.bbob import bbob_problem_from_name  # lazily: cocoex is optional

        return bbob_problem_from_name(name)
    return _make(name)


def is_problem_name(name: str) -> bool:
    """Whether ``name`` is a benchmark problem's name (a suite name or a BBOB name)."""
    if name in PROBLEM_NAMES:
        return True
    from labo.bench.bbob import is_bbob_name  # lazily: labo.bench.bbob imports this module

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
