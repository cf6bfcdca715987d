"""A benchmark problem: its box, budget, batch size, optimum and regret.

The problems themselves: :mod:`labo.bench.problems` (the suite) and
:mod:`labo.bench.bbob` (COCO's BBOB functions); both build :class:`Problem`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
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
