"""Regret curves, summary tables and PNG plots of a stored study (matplotlib, Agg backend).

Curves are computed from the store alone, so ``labo plot STUDY`` can redraw them
after (or during) a run. For a named benchmark problem the curve is the log10
simple regret of the best point after each evaluation (failed evaluations count
as evaluations and improve nothing); for a user objective it is the best
observed value.

Each plot says what a reader needs without the code: the study's name and
direction (title), the metric and which way is better (y label), where the Sobol
initial design ends and BO begins (a dashed line), and what the shaded band is
(mean ± standard error over seeds, in the legend).
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import torch

from labo.bench.problems import get_problem, is_problem_name
from labo.bench.store import Evaluation, StudyStore

_FLOOR = 1e-12  # regret 0 is plotted as 1e-12 (log10 = -12)


@dataclass
class Summary:
    """Final results of one (problem, method) over seeds.

    Attributes:
        problem, method: The pair.
        seeds: Number of seeds with at least one evaluation.
        final_mean, final_se: Mean and standard error over seeds of the final curve value
            (log10 regret for benchmark problems, best value otherwise).
        fit_seconds, acq_seconds: Mean seconds per BO iteration (model fit, acquisition).
        failed: Failed evaluations over all seeds.
        metric: ``"log10 regret"``, ``"log10 hypervolume gap"`` (multi-objective problems) or
            ``"best value"``.
    """

    problem: str
    method: str
    seeds: int
    final_mean: float
    final_se: float
    fit_seconds: float
    acq_seconds: float
    failed: int
    metric: str


def _curve(problem: str, rows: list[Evaluation], minimize: bool) -> list[float]:
    """Curve value after each evaluation (rows in insertion order)."""
    done = [r for r in rows if r.status != "running"]
    if not is_problem_name(problem):
        best, out, sign = -math.inf, [], -1.0 if minimize else 1.0
        for r in done:
            if r.status == "ok":
                best = max(best, sign * r.y[0])
            out.append(sign * best if math.isfinite(best) else math.nan)
        return out
    prob = get_problem(problem)
    # float64: float32 spacing is 6e-5 near 1000 (BBOB's f_opt), a floor under small regrets
    rows = [r.y if r.status == "ok" else [math.nan] * prob.num_objectives for r in done]
    Y = torch.tensor(rows, dtype=torch.float64)
    if Y.numel() == 0:
        return []
    if prob.num_objectives == 1:
        best = torch.nan_to_num(Y[:, 0], nan=-math.inf).cummax(0).values
        regret = (prob.optimum - best).clamp_min(_FLOOR)
        return regret.log10().tolist()
    return [math.log10(max(prob.regret(Y[: i + 1]), _FLOOR)) for i in range(Y.shape[0])]


def curves(store: StudyStore, study: str) -> dict[tuple[str, str], dict[int, list[float]]]:
    """``{(problem, method): {seed: curve}}`` of every run of ``study``."""
    minimize = bool(store.study_config(study).get("minimize", False))
    runs: dict[tuple[str, str, int], list[Evaluation]] = defaultdict(list)
    for row in store.evaluations(study):
        runs[(row.problem, row.method, row.seed)].append(row)
    out: dict[tuple[str, str], dict[int, list[float]]] = defaultdict(dict)
    for (problem, method, seed), rows in runs.items():
        out[(problem, method)][seed] = _curve(problem, rows, minimize)
    return dict(out)


def _metric(problem: str) -> str:
    if not is_problem_name(problem):
        return "best value"
    return "log10 regret" if get_problem(problem).num_objectives == 1 else "log10 hypervolume gap"


def _y_label(problem: str, minimize: bool) -> str:
    """The metric and which way is better: regrets fall; a best value falls when minimising."""
    if is_problem_name(problem):
        return f"{_metric(problem)} (lower is better)"
    return "best value so far " + (
        "(minimised: lower is better)" if minimize else "(maximised: higher is better)"
    )


def initial_design_sizes(store: StudyStore, study: str) -> dict[str, int]:
    """``{problem: n}``: the size of the Sobol initial design (iteration 0) of its runs (the largest)."""
    sizes: dict[tuple[str, str, int], int] = defaultdict(int)
    for row in store.evaluations(study):
        if row.iteration == 0 and row.status != "running":
            sizes[(row.problem, row.method, row.seed)] += 1
    out: dict[str, int] = {}
    for (problem, _, _), n in sizes.items():
        out[problem] = max(out.get(problem, 0), n)
    return out


def _mean_se(values: list[float]) -> tuple[float, float]:
    values = [v for v in values if math.isfinite(v)]
    if not values:
        return math.nan, math.nan
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, math.nan
    var = sum((v - mean) ** 2 for v in values) / (len(values) - 1)
    return mean, math.sqrt(var / len(values))


def summarize(store: StudyStore, study: str) -> list[Summary]:
    """One :class:`Summary` per (problem, method) of ``study``, sorted by problem then method."""
    all_curves = curves(store, study)
    timing: dict[tuple[str, str], dict[tuple[int, int], tuple[float, float]]] = defaultdict(dict)
    failed: dict[tuple[str, str], int] = defaultdict(int)
    for row in store.evaluations(study):
        key = (row.problem, row.method)
        failed[key] += row.status == "failed"
        if row.iteration > 0 and row.fit_seconds is not None:
            timing[key].setdefault((row.seed, row.iteration), (row.fit_seconds, row.acq_seconds or 0.0))
    out = []
    for (problem, method), by_seed in sorted(all_curves.items()):
        mean, se = _mean_se([c[-1] for c in by_seed.values() if c])
        times = list(timing[(problem, method)].values())
        fit = sum(t[0] for t in times) / len(times) if times else 0.0
        acq = sum(t[1] for t in times) / len(times) if times else 0.0
        metric = _metric(problem)
        out.append(
            Summary(problem, method, len(by_seed), mean, se, fit, acq, failed[(problem, method)], metric)
        )
    return out


def format_table(summaries: list[Summary]) -> str:
    """A Markdown table of summaries (final value ± standard error, seconds per iteration)."""
    lines = [
        "| problem | method | seeds | final (mean ± se) | fit s/iter | acq s/iter | failed |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for s in summaries:
        mean = "n/a" if math.isnan(s.final_mean) else f"{s.final_mean:.2f}"
        se = "n/a" if math.isnan(s.final_se) else f"{s.final_se:.2f}"
        lines.append(
            f"| {s.problem} | {s.method} | {s.seeds} | {mean} ± {se} ({s.metric}) | "
            f"{s.fit_seconds:.2f} | {s.acq_seconds:.2f} | {s.failed} |"
        )
    return "\n".join(lines)


def plot_study(store: StudyStore, study: str, path: str | Path) -> Path:
    """Draw the study (see :func:`draw_study`) into a PNG file.

    Args:
        store: The study store.
        study: Study name.
        path: Output PNG path (its folder is created if needed).

    Returns:
        The PNG path.
    """
    import matplotlib.pyplot as plt

    fig = draw_study(store, study)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def failed_positions(store: StudyStore, study: str) -> dict[tuple[str, str], list[int]]:
    """``{(problem, method): sorted evaluation numbers (1-based) that failed in some seed}``."""
    runs: dict[tuple[str, str, int], list[Evaluation]] = defaultdict(list)
    for row in store.evaluations(study):
        if row.status != "running":
            runs[(row.problem, row.method, row.seed)].append(row)
    out: dict[tuple[str, str], set[int]] = defaultdict(set)
    for (problem, method, _), rows in runs.items():
        out[(problem, method)].update(i + 1 for i, r in enumerate(rows) if r.status == "failed")
    return {k: sorted(v) for k, v in out.items() if v}


def draw_study(store: StudyStore, study: str):
    """One panel per problem: the curve's mean over seeds vs evaluations, ± one standard error.

    The figure is titled with the study's name and direction; each panel has the
    problem as title, the metric and which way is better as y label, a dashed line
    where the initial design ends and BO begins, crosses on a method's curve at the
    evaluations that failed (in any seed), and a legend with the methods, the line, the
    crosses and the meaning of the shaded band.

    Args:
        store: The study store.
        study: Study name.

    Returns:
        The matplotlib ``Figure`` (Agg backend); close it with ``plt.close(fig)``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch
    from matplotlib.ticker import MaxNLocator

    minimize = bool(store.study_config(study).get("minimize", False))
    all_curves = curves(store, study)
    failed = failed_positions(store, study)
    n_init = initial_design_sizes(store, study)
    problems = sorted({p for p, _ in all_curves})
    # At most 6 panels a row: a suite of many problems (BBOB) wraps into a grid.
    cols = min(max(len(problems), 1), 6)
    rows = max(math.ceil(len(problems) / cols), 1)
    fig, axes = plt.subplots(rows, cols, figsize=(4.5 * cols, 3.6 * rows + 0.4), squeeze=False)
    for ax in axes.flat[len(problems) :]:
        ax.set_axis_off()
    for ax, problem in zip(axes.flat, problems, strict=False):
        n_seeds, longest = 0, 0
        for (p, method), by_seed in sorted(all_curves.items()):
            if p != problem:
                continue
            length = min(len(c) for c in by_seed.values())
            if length == 0:
                continue
            data = torch.tensor([c[:length] for c in by_seed.values()], dtype=torch.float64)
            data = torch.where(torch.isfinite(data), data, torch.full_like(data, math.nan))
            mean = data.nanmean(0)
            se = data.std(0) / math.sqrt(data.shape[0]) if data.shape[0] > 1 else torch.zeros_like(mean)
            xs = range(1, length + 1)
            (line,) = ax.plot(xs, mean, label=method)
            ax.fill_between(xs, mean - se, mean + se, alpha=0.2, color=line.get_color())
            at = [i for i in failed.get((p, method), []) if i <= length]
            if at:
                marks = [float(mean[i - 1]) for i in at]
                ax.plot(at, marks, "x", color=line.get_color(), label=f"{method}: failed evaluations")
            n_seeds, longest = max(n_seeds, data.shape[0]), max(longest, length)
        n0 = n_init.get(problem, 0)
        if 0 < n0 < longest:
            ax.axvline(
                n0 + 0.5,
                color="0.4",
                linestyle="--",
                linewidth=1,
                label=f"BO starts after {n0} initial points",
            )
        ax.set(title=problem, xlabel="evaluations", ylabel=_y_label(problem, minimize))
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        band = f"band: mean ± s.e. over {n_seeds} seeds" if n_seeds > 1 else "1 seed: no band"
        handles, _ = ax.get_legend_handles_labels()
        ax.legend(handles=[*handles, Patch(color="0.5", alpha=0.2, label=band)], fontsize=8)
    if problems and all(is_problem_name(p) for p in problems):
        what = "regret on benchmark problems, lower is better"
    else:
        what = "minimisation" if minimize else "maximisation"
    fig.suptitle(f"Study {study!r}: {what}")
    fig.tight_layout()
    return fig
