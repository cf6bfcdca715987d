"""The BO loop: Sobol initial design, then model fit + qLogNEI proposals, every step stored.

One *run* optimises one objective with one method and one seed. The methods, the
product's surrogates and the research variants, are the one table of
:mod:`labo.bench.methods`.

Protocol (identical for every method): the first ``n_init`` points of a scrambled
Sobol sequence seeded by the run's seed (so seeds are paired across methods),
qLogNoisyExpectedImprovement (qLogNEHVI for several objectives), ``optimize_acqf``
on the unit cube. Models see inputs scaled to the unit cube and maximise; a
minimised objective is negated for the model only (the store keeps raw values).

An objective takes a length-``d`` list of floats and returns a float or a sequence
of ``m`` floats. Exceptions and non-finite values are stored as ``failed`` and the
run goes on, and every model-based method keeps its proposals away from the failed
points (``labo.acquisition.failures.failure_rule``): from 2 failures on (with at
least one success), a classification Laplace of ``P(success | x)`` weights the
acquisition (``SuccessWeighted``) and the surrogate is fitted with the worst value
seen imputed at the failed points (as SMAC does); with fewer failures, they are
left out of the surrogate's data. In both cases the failed points are passed to
the acquisition as pending points.
"""

from __future__ import annotations

import math
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
from botorch.acquisition import qLogNoisyExpectedImprovement
from botorch.acquisition.multi_objective import qLogNoisyExpectedHypervolumeImprovement
from botorch.fit import fit_gpytorch_mll
from botorch.models import SingleTaskGP
from botorch.models.transforms import Standardize
from botorch.optim import optimize_acqf
from gpytorch.mlls import ExactMarginalLogLikelihood
from torch import Tensor
from torch.quasirandom import SobolEngine

from labo.acquisition.failures import SuccessWeighted, failure_rule, fit_success_model
from labo.bench.exact_kernel import exact_kernel_gp
from labo.bench.methods import TABLE
from labo.bench.store import Evaluation, StudyStore
from labo.bench.warping import warp_targets, warp_targets_and_reference
from labo.exceptions import BenchmarkError
from labo.surrogates import LaplaceModel, fit_laplace_model
from labo.surrogates.warping import YeoJohnson


@dataclass(frozen=True)
class RunSpec:
    """Everything that defines one run (stored with the study, checked on resume).

    Attributes:
        study: Study name in the store.
        problem: Problem (or objective) name.
        method: A product method (``METHODS``) or a research variant
            (``RESEARCH_METHODS``), see :mod:`labo.bench.methods`.
        seed: Seed of the initial design and of the acquisition optimisation.
        bounds: ``d`` pairs ``(lower, upper)``.
        budget: Total evaluations, initial design included.
        q: Points proposed per iteration (synchronous) or in flight (asynchronous).
        n_init: Sobol initial design size.
        minimize: Minimise the objective (default: maximise).
        ref_point: Hypervolume reference point (several objectives, maximisation).
        num_restarts: ``optimize_acqf`` restarts.
        raw_samples: ``optimize_acqf`` raw samples.
    """

    study: str
    problem: str
    method: str
    seed: int
    bounds: tuple[tuple[float, float], ...]
    budget: int
    q: int = 1
    n_init: int = 10
    minimize: bool = False
    ref_point: tuple[float, ...] | None = None
    num_restarts: int = 10
    raw_samples: int = 512

    def __post_init__(self) -> None:
        check_bounds(self.bounds)
        if self.method not in TABLE:
            raise BenchmarkError(f"method must be one of {', '.join(TABLE)}, got {self.method!r}.")
        for name in ("budget", "q", "n_init", "num_restarts", "raw_samples"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise BenchmarkError(f"{name} must be a positive integer, got {value!r}.")
        if self.n_init > self.budget:
            raise BenchmarkError(f"n_init must be at most budget={self.budget}, got {self.n_init}.")

    @property
    def num_objectives(self) -> int:
        return 1 if self.ref_point is None else len(self.ref_point)

    def to_dict(self) -> dict:
        return asdict(self)


def check_bounds(bounds) -> Tensor:
    """Validate ``d`` pairs ``(lower, upper)``; returns them as a ``2 x d`` float64 tensor."""
    try:
        t = torch.as_tensor(bounds, dtype=torch.float64)
    except (TypeError, ValueError) as err:
        raise BenchmarkError(f"bounds must be d pairs (lower, upper) of numbers, got {bounds!r}.") from err
    if t.ndim != 2 or t.shape[-1] != 2 or t.shape[0] == 0:
        raise BenchmarkError(f"bounds must be d pairs (lower, upper), got shape {tuple(t.shape)}.")
    if not torch.isfinite(t).all() or not (t[:, 0] < t[:, 1]).all():
        raise BenchmarkError(f"bounds must be finite with lower < upper in every dimension, got {bounds!r}.")
    return t.T.contiguous()


@dataclass
class RunResult:
    """Summary of a finished run (all rows, including those of earlier resumed sessions)."""

    spec: RunSpec
    evaluations: list[Evaluation]

    @property
    def failed(self) -> list[Evaluation]:
        return [e for e in self.evaluations if e.status == "failed"]

    def best(self) -> Evaluation | None:
        """The best successful evaluation (first objective; min if ``minimize``)."""
        ok = [e for e in self.evaluations if e.status == "ok"]
        if not ok:
            return None
        sign = -1.0 if self.spec.minimize else 1.0
        return max(ok, key=lambda e: sign * e.y[0])

    def failure_summary(self) -> str | None:
        """``"k of n evaluations failed (first error: ...)"``, or ``None`` if none failed."""
        failed = self.failed
        if not failed:
            return None
        return f"{len(failed)} of {len(self.evaluations)} evaluations failed (first error: {failed[0].error})"


def evaluate(objective: Callable, x: list[float]) -> tuple[list[float] | None, float, str | None]:
    """Call ``objective(x)``; returns ``(values or None, seconds, error message or None)``."""
    t0 = time.perf_counter()
    try:
        raw = objective(x)
        values = [float(v) for v in (raw if hasattr(raw, "__len__") else [raw])]
        error = None
    except Exception as err:  # noqa: BLE001 - a failing objective is recorded, not fatal
        values = None
        error = "".join(traceback.format_exception_only(type(err), err)).strip()
    return values, time.perf_counter() - t0, error


def fit_model(method: str, X: Tensor, Y: Tensor, previous=None):
    """Fit the surrogate of ``method`` on unit-cube inputs ``n x d`` and targets ``n x m``."""
    m, entry = Y.shape[-1], TABLE[method]
    if entry.model == "gp":
        model = SingleTaskGP(X, Y, outcome_transform=_outcome_transform(entry, m))
        fit_gpytorch_mll(ExactMarginalLogLikelihood(model.likelihood, model))
        return model
    if entry.model == "choice":  # one fit per family member, the best-supported one proposes
        sources = getattr(previous, "family_fits", None) or [None] * len(entry.family)
        members = zip(sources, entry.family, strict=True)
        fits = [_fit_laplace(entry, X, Y, source, net) for source, net in members]
        scores = [fit.fit_info["hyper_log_posterior"] for fit in fits]
        best = max(range(len(fits)), key=scores.__getitem__)
        fits[best].fit_info["family_choice"], fits[best].fit_info["family_scores"] = best, scores
        fits[best].__dict__["family_fits"] = fits  # the next fits' warm starts; not submodules
        return fits[best]
    if entry.model == "exact-kernel":  # the kernel's exact GP at the LaplaceModel's hyperparameters
        previous = getattr(previous, "laplace_source", None)
    model = _fit_laplace(entry, X, Y, previous, entry.network)
    if entry.model == "exact-kernel":
        gp = exact_kernel_gp(model, X, Y)
        gp.__dict__["laplace_source"] = model  # the next fit's warm start; not a submodule
        return gp
    return model


def _fit_laplace(entry, X: Tensor, Y: Tensor, previous, network: Callable | None) -> LaplaceModel:
    """``fit_laplace_model`` of one ``LaplaceModel`` of ``entry``, warm-started from ``previous``."""
    m = Y.shape[-1]
    warm = previous if isinstance(previous, LaplaceModel) else None
    options = dict(entry.options)
    if network is not None:
        options["network"] = network(X.shape[-1], m, X.dtype)
    model = LaplaceModel(X, Y, outcome_transform=_outcome_transform(entry, m), warm_start=warm, **options)
    return fit_laplace_model(model, entry.fit)


def _outcome_transform(entry, m: int):
    if entry.outcome.startswith("yeo-johnson"):
        return YeoJohnson(m, linearized=entry.outcome.endswith("-lin"))
    return Standardize(m)


def propose(
    spec: RunSpec,
    X: Tensor,
    Y: Tensor,
    q: int,
    X_pending: Tensor | None = None,
    previous=None,
    n_rows: int = 0,
    X_failed: Tensor | None = None,
) -> tuple[Tensor, float, float, object]:
    """Propose ``q`` unit-cube points from the data of a run.

    Args:
        spec: The run.
        X: ``n x d`` successful inputs (unit cube).
        Y: ``n x m`` their values, in the maximisation convention.
        q: Number of points.
        X_pending: ``p x d`` points being evaluated (unit cube), or ``None``.
        previous: The previous iteration's model (warm start), or ``None``.
        n_rows: Points proposed so far in the run (position in the Sobol sequence).
        X_failed: ``f x d`` inputs whose evaluation failed (unit cube), or ``None``: the
            proposals keep away from them (:func:`~labo.acquisition.failures.failure_rule`).

    Returns:
        ``(q x d candidates, fit seconds, acquisition seconds, model or None)``.
    """
    d = X.shape[-1] if X.numel() else len(spec.bounds)
    if TABLE[spec.method].model == "sobol" or X.shape[0] < 2:
        engine = SobolEngine(d, scramble=True, seed=spec.seed)
        engine.fast_forward(n_rows)
        return engine.draw(q).to(torch.float64), 0.0, 0.0, None
    torch.manual_seed(1_000_003 * spec.seed + n_rows)
    t0 = time.perf_counter()
    rule = failure_rule(X.shape[0], 0 if X_failed is None else X_failed.shape[0])
    X_fit, Y_fit = X, Y
    if rule == "classifier":  # impute the worst value seen at the failed points (as SMAC does)
        X_fit = torch.cat([X, X_failed])
        Y_fit = torch.cat([Y, Y.min(0).values.expand(len(X_failed), -1)])
    ref = None if spec.num_objectives == 1 else torch.tensor(spec.ref_point, dtype=X.dtype)
    warp = TABLE[spec.method].warp
    if warp is not None and len(Y_fit) >= 2:  # the acquisition then runs on the warped scale
        if ref is None:
            Y_fit = warp_targets(Y_fit, warp)
        else:
            Y_fit, ref = warp_targets_and_reference(Y_fit, ref, warp)
    model = fit_model(spec.method, X_fit, Y_fit, previous)
    if rule != "none":  # the classifier rule too: no creeping back to failed points
        X_pending = X_failed if X_pending is None else torch.cat([X_pending, X_failed])
    success_model = None
    if rule == "classifier":
        success = torch.cat(
            [torch.ones(len(X), dtype=torch.bool), torch.zeros(len(X_failed), dtype=torch.bool)]
        )
        success_model = fit_success_model(torch.cat([X, X_failed]), success, seed=spec.seed)
    t1 = time.perf_counter()
    if spec.num_objectives == 1:
        acqf = qLogNoisyExpectedImprovement(model, X_baseline=X, X_pending=X_pending, prune_baseline=True)
    else:
        acqf = qLogNoisyExpectedHypervolumeImprovement(
            model, ref_point=ref, X_baseline=X, X_pending=X_pending, prune_baseline=True
        )
    if success_model is not None:
        acqf = SuccessWeighted(acqf, success_model)
    unit = torch.stack([torch.zeros(d), torch.ones(d)]).to(X)
    cand, _ = optimize_acqf(
        acqf, bounds=unit, q=q, num_restarts=spec.num_restarts, raw_samples=spec.raw_samples
    )
    return cand.detach(), t1 - t0, time.perf_counter() - t1, model


def initial_design(spec: RunSpec) -> Tensor:
    """The run's ``n_init x d`` Sobol initial design in the unit cube (paired across methods)."""
    engine = SobolEngine(len(spec.bounds), scramble=True, seed=spec.seed)
    return engine.draw(spec.n_init).to(torch.float64)


def to_unit(spec: RunSpec, X: Tensor) -> Tensor:
    b = check_bounds(spec.bounds)
    return (X - b[0]) / (b[1] - b[0])


def from_unit(spec: RunSpec, U: Tensor) -> Tensor:
    b = check_bounds(spec.bounds)
    return b[0] + U.clamp(0, 1) * (b[1] - b[0])


def training_data(spec: RunSpec, rows: list[Evaluation]) -> tuple[Tensor, Tensor]:
    """Unit-cube inputs ``n x d`` and maximisation-convention targets ``n x m`` of the ``ok`` rows."""
    ok = [r for r in rows if r.status == "ok" and len(r.y) == spec.num_objectives]
    d = len(spec.bounds)
    if not ok:
        return torch.zeros(0, d, dtype=torch.float64), torch.zeros(
            0, spec.num_objectives, dtype=torch.float64
        )
    X = to_unit(spec, torch.tensor([r.x for r in ok], dtype=torch.float64))
    Y = torch.tensor([r.y for r in ok], dtype=torch.float64)
    return X, -Y if spec.minimize else Y


def failed_inputs(spec: RunSpec, rows: list[Evaluation]) -> Tensor:
    """Unit-cube inputs ``f x d`` of the ``failed`` rows (the points to keep away from)."""
    failed = [r.x for r in rows if r.status == "failed"]
    if not failed:
        return torch.zeros(0, len(spec.bounds), dtype=torch.float64)
    return to_unit(spec, torch.tensor(failed, dtype=torch.float64))


def _evaluate_row(store: StudyStore, spec: RunSpec, objective: Callable, row_id: int, x: list[float]) -> str:
    y, seconds, error = evaluate(objective, x)
    if error is None and y is not None and len(y) != spec.num_objectives:
        y, error = None, f"objective returned {len(y)} values, expected {spec.num_objectives}"
    return store.finish(row_id, y, seconds, error)


def run_bo(
    spec: RunSpec,
    objective: Callable,
    store: StudyStore,
    progress: Callable[[Evaluation | None, str], None] | None = None,
) -> RunResult:
    """Run (or resume) one synchronous BO run, storing each evaluation as it completes.

    Resuming: rows left ``running`` by a crash are evaluated first, then the run
    continues from the stored data up to ``spec.budget`` rows; nothing stored is
    proposed or evaluated again.

    Args:
        spec: The run.
        objective: ``x (list of d floats) -> float or m floats``.
        store: The study store (the study must exist, see ``StudyStore.create_study``).
        progress: Called as ``progress(row, status)`` after each evaluation.

    Returns:
        The :class:`RunResult` with every row of the run.
    """

    def rows() -> list[Evaluation]:
        return store.evaluations(spec.study, spec.problem, spec.method, spec.seed)

    def run_rows(pending: list[Evaluation]) -> None:
        for row in pending:
            status = _evaluate_row(store, spec, objective, row.id, row.x)
            if progress is not None:
                progress(row, status)

    key = (spec.study, spec.problem, spec.method, spec.seed)
    run_rows([r for r in rows() if r.status == "running"])
    existing = rows()
    if len(existing) < spec.n_init:
        X0 = from_unit(spec, initial_design(spec))
        for i in range(len(existing), spec.n_init):
            store.add_running(*key, 0, X0[i].tolist())
        run_rows([r for r in rows() if r.status == "running"])
    model = None
    while len(existing := rows()) < spec.budget:
        q = min(spec.q, spec.budget - len(existing))
        X, Y = training_data(spec, existing)
        iteration = max(r.iteration for r in existing) + 1
        X_failed = failed_inputs(spec, existing)
        cand, fit_s, acq_s, model = propose(
            spec, X, Y, q, previous=model, n_rows=len(existing), X_failed=X_failed
        )
        for x in from_unit(spec, cand):
            store.add_running(*key, iteration, x.tolist(), fit_s, acq_s)
        run_rows([r for r in rows() if r.status == "running"])
    return RunResult(spec, rows())


def spec_from_problem(
    study: str, problem, method: str, seed: int, budget_scale: float = 1.0, **kw
) -> RunSpec:
    """The :class:`RunSpec` of a benchmark :class:`~labo.bench.problems.Problem` run."""
    bounds = tuple((float(lo), float(hi)) for lo, hi in problem.bounds.T.tolist())
    if not math.isfinite(budget_scale) or budget_scale <= 0:
        raise BenchmarkError(f"budget_scale must be a positive number, got {budget_scale!r}.")
    return RunSpec(
        study=study,
        problem=problem.name,
        method=method,
        seed=seed,
        bounds=bounds,
        budget=problem.scaled_budget(budget_scale),
        q=problem.q,
        n_init=problem.n_init,
        ref_point=problem.ref_point,
        **kw,
    )
