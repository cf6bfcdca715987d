"""COCO's BBOB functions f1-f24 as benchmark :class:`~labo.bench.problems.Problem` objects.

BBOB (the noiseless single-objective suite of the COCO platform, Hansen et al. 2021,
"COCO: a platform for comparing continuous optimizers in a black-box setting") is a
suite nobody in this project wrote: 24 functions (separable, ill-conditioned,
multi-modal, weakly structured...), each with numbered *instances* that shift and
rotate it. The functions come from COCO's own C code through its Python package
``cocoex`` (``pip install coco-experiment``, an optional dependency: labo imports it
only when a BBOB problem is evaluated).

A problem is named ``bbob_f{function:02d}_i{instance}_d{dim}``, e.g. ``bbob_f08_i3_d20``
(Rosenbrock, instance 3, 20-D); :func:`labo.bench.problems.get_problem` understands
these names. BBOB minimises; the :class:`Problem` is negated (maximised) like the rest
of the suite, with ``optimum = -f_opt``, so its regret ``optimum - max Y`` is
``f_best - f_opt`` of the BBOB function, and the curves of ``labo.bench.plots`` are
``log10(f_best - f_opt)``.

``f_opt`` comes from the optimum COCO knows: ``Problem._best_parameter("print")``
writes ``x_opt`` to ``._bbob_problem_best_parameter.txt`` in the current directory
(the C library has no other way to give it), and ``f_opt = f(x_opt)``. The file is
written by a short child process in a temporary directory, so this process's current
directory is never changed (a ``chdir`` would race with the threads of a Dask worker
and with relative database paths). Results are cached per process.
"""

from __future__ import annotations

import functools
import json
import re
import subprocess
import sys
import tempfile

import torch
from torch import Tensor

from labo.bench.problem import Problem, initial_design_size
from labo.exceptions import BenchmarkError

BBOB_FUNCTIONS = tuple(range(1, 25))
BBOB_FUNCTION_NAMES = {
    1: "Sphere",
    2: "Separable ellipsoid",
    3: "Rastrigin (separable)",
    4: "Bueche-Rastrigin",
    5: "Linear slope",
    6: "Attractive sector",
    7: "Step ellipsoid",
    8: "Rosenbrock",
    9: "Rosenbrock (rotated)",
    10: "Ellipsoid",
    11: "Discus",
    12: "Bent cigar",
    13: "Sharp ridge",
    14: "Different powers",
    15: "Rastrigin",
    16: "Weierstrass",
    17: "Schaffer F7",
    18: "Schaffer F7 (ill-conditioned)",
    19: "Griewank-Rosenbrock",
    20: "Schwefel",
    21: "Gallagher 101 peaks",
    22: "Gallagher 21 peaks",
    23: "Katsuura",
    24: "Lunacek bi-Rastrigin",
}
BBOB_DIMENSIONS = (2, 3, 5, 10, 20, 40)  # the dimensions COCO's "bbob" suite defines
BBOB_NAME_PATTERN = "bbob_fFF_iI_dD (COCO's BBOB function FF in 01..24, instance I >= 1, dimension D)"
_NAME = re.compile(r"bbob_f(\d+)_i(\d+)_d(\d+)")
_INSTALL = "pip install coco-experiment (or pip install 'labo[bbob]')"


def bbob_name(function: int, instance: int, dim: int = 20) -> str:
    """The problem name of BBOB ``function`` (1-24), ``instance`` (>= 1) in ``dim`` dimensions."""
    _check(function, instance, dim)
    return f"bbob_f{function:02d}_i{instance}_d{dim}"


def is_bbob_name(name: str) -> bool:
    """Whether ``name`` looks like a BBOB problem name (``bbob_...``); it may still be invalid."""
    return isinstance(name, str) and name.startswith("bbob_")


def parse_bbob_name(name: str) -> tuple[int, int, int]:
    """``(function, instance, dim)`` of a name made by :func:`bbob_name`.

    Raises:
        BenchmarkError: The name is not of the form ``bbob_fFF_iI_dD`` or names no BBOB problem.
    """
    match = _NAME.fullmatch(name) if isinstance(name, str) else None
    if match is None:
        raise BenchmarkError(f"a BBOB problem name must look like {BBOB_NAME_PATTERN}, got {name!r}.")
    function, instance, dim = (int(g) for g in match.groups())
    canonical = bbob_name(function, instance, dim)
    if canonical != name:  # one name per problem, so the study store never splits a problem in two
        raise BenchmarkError(f"BBOB problem names are written {canonical!r}, got {name!r}.")
    return function, instance, dim


def bbob_names(functions=BBOB_FUNCTIONS, instances=range(1, 6), dim: int = 20) -> list[str]:
    """Names of every (function, instance) pair at ``dim``, function-major."""
    return [bbob_name(f, i, dim) for f in functions for i in instances]


def parse_index_ranges(text: str, what: str = "indices") -> list[int]:
    """``"1-5,8"`` to ``[1, 2, 3, 4, 5, 8]`` (for function and instance lists on command lines)."""
    out: list[int] = []
    for part in str(text).replace(" ", "").split(","):
        lo, dash, hi = part.partition("-")
        if not (lo.isdigit() and (hi.isdigit() or not dash)) or int(hi or lo) < int(lo):
            raise BenchmarkError(
                f"{what} must look like '1-5' or '1,8,15', got {text!r} (bad part {part!r})."
            )
        out.extend(range(int(lo), int(hi or lo) + 1))
    return out


def _check(function: int, instance: int, dim: int) -> None:
    if not (isinstance(function, int) and function in BBOB_FUNCTIONS):
        raise BenchmarkError(f"BBOB function must be an integer in 1..24, got {function!r}.")
    if not (isinstance(instance, int) and instance >= 1):
        raise BenchmarkError(f"BBOB instance must be a positive integer, got {instance!r}.")
    if dim not in BBOB_DIMENSIONS:
        raise BenchmarkError(
            f"BBOB dimension must be one of {', '.join(map(str, BBOB_DIMENSIONS))}, got {dim!r}."
        )


def _cocoex():
    try:
        import cocoex
    except ImportError as err:
        raise BenchmarkError(f"BBOB problems need COCO's Python package cocoex: {_INSTALL}.") from err
    return cocoex


def _coco_problem(function: int, instance: int, dim: int):
    """The ``cocoex`` problem (unobserved, so nothing is logged to disk)."""
    cocoex = _cocoex()
    suite = cocoex.Suite("bbob", f"instances: {instance}", f"function_indices: {function} dimensions: {dim}")
    return suite.get_problem_by_function_dimension_instance(function, dim, instance)


_X_OPT_SCRIPT = """
import json, sys
import numpy as np
import cocoex
f, i, d = (int(a) for a in sys.argv[1:4])
suite = cocoex.Suite("bbob", f"instances: {i}", f"function_indices: {f} dimensions: {d}")
suite.get_problem_by_function_dimension_instance(f, d, i)._best_parameter("print")
x = np.loadtxt("._bbob_problem_best_parameter.txt", ndmin=1)
print(json.dumps([float(v) for v in x]))
"""


@functools.cache  # a pure function of three integers; one child process each
def bbob_optimum(function: int, instance: int, dim: int) -> tuple[tuple[float, ...], float]:
    """``(x_opt, f_opt)`` of a BBOB problem, in BBOB's own (minimisation) convention.

    ``x_opt`` is what COCO's ``_best_parameter("print")`` writes; ``f_opt = f(x_opt)``.

    Raises:
        BenchmarkError: Bad function/instance/dimension, or cocoex missing or failing.
    """
    _check(function, instance, dim)
    _cocoex()  # a clear error here rather than a child's traceback
    with tempfile.TemporaryDirectory(prefix="labo_bbob_") as tmp:
        done = subprocess.run(
            [sys.executable, "-c", _X_OPT_SCRIPT, str(function), str(instance), str(dim)],
            cwd=tmp,
            capture_output=True,
            text=True,
            check=False,
        )
    if done.returncode != 0:
        raise BenchmarkError(
            f"cocoex could not give x_opt of {bbob_name(function, instance, dim)}: {done.stderr.strip()}"
        )
    x_opt = tuple(json.loads(done.stdout.strip().splitlines()[-1]))
    if len(x_opt) != dim:
        raise BenchmarkError(f"cocoex gave an x_opt of length {len(x_opt)} for dimension {dim}.")
    return x_opt, float(_coco_problem(function, instance, dim)(list(x_opt)))


class BBOBFunction:
    """BBOB function ``function``/``instance`` in ``dim`` dimensions, negated (to be maximised).

    Picklable (for multiprocessing and Dask): only the three integers travel; the
    ``cocoex`` problem is built on first call in each process.
    """

    def __init__(self, function: int, instance: int, dim: int) -> None:
        _check(function, instance, dim)
        self.function, self.instance, self.dim = function, instance, dim
        self._problem = None

    def __getstate__(self) -> dict:
        return {"function": self.function, "instance": self.instance, "dim": self.dim, "_problem": None}

    def __call__(self, X: Tensor) -> Tensor:
        """Negated BBOB values.

        Args:
            X: ``batch_shape x d`` inputs (``d = dim``).

        Returns:
            ``batch_shape x 1`` values ``-f(x)``, float64.
        """
        if X.shape[-1] != self.dim:
            raise BenchmarkError(f"Expected X with shape batch x {self.dim}, got {tuple(X.shape)}.")
        if self._problem is None:
            self._problem = _coco_problem(self.function, self.instance, self.dim)
        rows = X.detach().to(torch.float64).reshape(-1, self.dim).cpu().numpy()
        values = torch.tensor([-float(self._problem(row)) for row in rows], dtype=torch.float64)
        return values.reshape(*X.shape[:-1], 1)


def bbob_problem(
    function: int,
    instance: int,
    dim: int = 20,
    budget: int = 100,
    q: int = 4,
    n_init: int | None = None,
) -> Problem:
    """BBOB ``function`` (1-24), ``instance`` at ``dim`` as a maximised :class:`Problem`.

    The box is BBOB's ``[-5, 5]^d`` (every optimum lies inside). Defaults: the issue-23
    protocol, 20 Sobol points then 80 evaluations in batches of ``q = 4`` at ``d = 20``.

    Args:
        function: BBOB function index, 1-24.
        instance: Instance index, >= 1 (the suite uses 1-5).
        dim: One of 2, 3, 5, 10, 20, 40.
        budget: Total evaluations, initial design included.
        q: Candidates per BO iteration.
        n_init: Sobol initial design size (default ``min(2 d, 20)``, the suite's rule).

    Returns:
        The problem, named :func:`bbob_name` and with ``optimum = -f_opt``.
    """
    _check(function, instance, dim)
    n_init = initial_design_size(dim) if n_init is None else n_init
    if not (isinstance(n_init, int) and isinstance(budget, int) and 1 <= n_init <= budget):
        raise BenchmarkError(
            f"need integers 1 <= n_init <= budget, got n_init={n_init!r}, budget={budget!r}."
        )
    if not (isinstance(q, int) and q >= 1):
        raise BenchmarkError(f"q must be a positive integer, got {q!r}.")
    _, f_opt = bbob_optimum(function, instance, dim)
    bounds = torch.tensor([[-5.0] * dim, [5.0] * dim], dtype=torch.float64)
    fn = BBOBFunction(function, instance, dim)
    return Problem(bbob_name(function, instance, dim), bounds, budget, q, n_init, fn, -f_opt)


def bbob_problem_from_name(name: str) -> Problem:
    """The :class:`Problem` of a :func:`bbob_name` name, with the default protocol."""
    return bbob_problem(*parse_bbob_name(name))
