"""Results of a BBOB study: final log10 regret per function and method, paired comparisons, one plot.

The score of a run is its final ``log10(f_best - f_opt)`` (the last point of its
:func:`labo.bench.plots.curves` curve; regret 0 counts as ``1e-12``). The replicates
of a (function, dimension, method) are its (instance, seed) runs: the suite runs
instances 1-5 with one seed, so the mean ± standard error is over instances, as in
COCO. Methods run the same instances and seeds, so they are compared on the paired
differences ``d = score(method) - score(baseline)`` (lower is better), with ``s.e.``
the standard error of the mean of ``d`` over the replicates both methods finished:

- *beats*: ``mean d < -2 s.e.`` (the regret is lower by more than two standard errors);
- *equals or beats*: ``mean d <= +1 s.e.`` (not worse by more than one standard error).

With a single replicate the standard error is taken as 0 and only the sign counts.
The baselines are ``sobol`` and ``gp``; every other method is compared to each baseline
present in the study.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

from labo.bench.bbob import BBOB_FUNCTION_NAMES, is_bbob_name, parse_bbob_name
from labo.bench.plots import curves
from labo.bench.store import StudyStore
from labo.exceptions import BenchmarkError

BASELINES = ("sobol", "gp")

Finals = dict[tuple[int, int, str], dict[tuple[int, int], float]]


@dataclass(frozen=True)
class BBOBSummary:
    """Final log10 regret of one (function, dimension, method) over its replicates.

    Attributes:
        function, dim, method: The triple.
        runs: Replicates with a finite score ((instance, seed) pairs).
        mean, se: Mean and standard error of the scores (``se`` NaN below 2 runs).
    """

    function: int
    dim: int
    method: str
    runs: int
    mean: float
    se: float


@dataclass(frozen=True)
class PairedDifference:
    """``score(method) - score(baseline)`` on one function, over the shared replicates.

    Attributes:
        function, dim: The function.
        method, baseline: The compared pair.
        pairs: Replicates both finished with a finite score.
        mean, se: Mean and standard error of the paired differences (``se = 0`` for one pair).
    """

    function: int
    dim: int
    method: str
    baseline: str
    pairs: int
    mean: float
    se: float

    @property
    def beats(self) -> bool:
        return self.pairs > 0 and self.mean < -2.0 * self.se

    @property
    def equals_or_beats(self) -> bool:
        return self.pairs > 0 and self.mean <= self.se


def bbob_finals(store: StudyStore, study: str, budget: int | None = None) -> Finals:
    """``{(function, dim, method): {(instance, seed): final log10 regret}}`` of the BBOB runs.

    With ``budget``, only runs with at least that many evaluations count: the unfinished
    runs of an interrupted study would otherwise enter with a regret from before their end.
    """
    out: Finals = defaultdict(dict)
    for (problem, method), by_seed in curves(store, study).items():
        if not is_bbob_name(problem):
            continue
        function, instance, dim = parse_bbob_name(problem)
        for seed, curve in by_seed.items():
            if curve and (budget is None or len(curve) >= budget):
                out[(function, dim, method)][(instance, seed)] = curve[-1]
    return dict(out)


def merge_finals(base: Finals, other: Finals, methods: Iterable[str] | None = None) -> Finals:
    """``base`` with the runs of ``other`` added: those of ``methods`` (all when ``None``).

    Lets a report combine studies run separately, e.g. the baselines of one study with a
    new labo method of another, run later on the same instances and seeds.

    Raises:
        BenchmarkError: If a method in ``methods`` has no run in ``other``, or if both
            hold a run of the same (function, dimension, method, instance, seed): the
            report would not know which to keep.
    """
    wanted = None if methods is None else set(methods)
    present = {m for _, _, m in other}
    if wanted is not None and wanted - present:
        raise BenchmarkError(
            f"merge_finals: no finished run of {sorted(wanted - present)} to add "
            f"(the other study has {sorted(present) or 'none'})."
        )
    out: Finals = {key: dict(runs) for key, runs in base.items()}
    for key, runs in other.items():
        if wanted is not None and key[2] not in wanted:
            continue
        mine = out.setdefault(key, {})
        clash = sorted(mine.keys() & runs.keys())
        if clash:
            raise BenchmarkError(
                f"merge_finals: f{key[0]} d={key[1]} {key[2]!r} has runs (instance, seed) {clash} "
                "in both studies; keep them in one."
            )
        mine.update(runs)
    return out


def _mean_se(values: list[float], single_se: float) -> tuple[float, float]:
    n = len(values)
    if n == 0:
        return math.nan, math.nan
    mean = sum(values) / n
    if n == 1:
        return mean, single_se
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1) / n)


def summarize_bbob(finals: Finals) -> list[BBOBSummary]:
    """One :class:`BBOBSummary` per (function, dim, method), sorted."""
    out = []
    for (function, dim, method), scores in sorted(finals.items()):
        values = [v for v in scores.values() if math.isfinite(v)]
        out.append(BBOBSummary(function, dim, method, len(values), *_mean_se(values, math.nan)))
    return out


def paired_differences(finals: Finals) -> list[PairedDifference]:
    """Every non-baseline method against every baseline of :data:`BASELINES` in the study."""
    methods = sorted({m for _, _, m in finals})
    out = []
    for function, dim in sorted({(f, d) for f, d, _ in finals}):
        for method in (m for m in methods if m not in BASELINES):
            for baseline in (b for b in BASELINES if b in methods):
                a = finals.get((function, dim, method), {})
                b = finals.get((function, dim, baseline), {})
                diffs = [a[k] - b[k] for k in sorted(a.keys() & b.keys()) if math.isfinite(a[k] - b[k])]
                mean, se = _mean_se(diffs, 0.0)
                out.append(PairedDifference(function, dim, method, baseline, len(diffs), mean, se))
    return out


def format_bbob_table(summaries: list[BBOBSummary]) -> str:
    """Markdown table: one row per function (and dimension), one column per method."""
    methods = _ordered({s.method for s in summaries})
    cells = {(s.function, s.dim, s.method): s for s in summaries}
    lines = [
        "| function | d | " + " | ".join(methods) + " |",
        "|---|---:|" + "---:|" * len(methods),
    ]
    for function, dim in sorted({(s.function, s.dim) for s in summaries}):
        row = []
        for method in methods:
            s = cells.get((function, dim, method))
            if s is None or s.runs == 0:
                row.append("–")
            else:
                se = "n/a" if math.isnan(s.se) else f"{s.se:.2f}"
                row.append(f"{s.mean:.2f} ± {se} ({s.runs})")
        name = f"f{function} {BBOB_FUNCTION_NAMES[function]}"
        lines.append(f"| {name} | {dim} | " + " | ".join(row) + " |")
    return "\n".join(lines)


def format_bbob_counts(differences: list[PairedDifference]) -> str:
    """One line per (method, baseline, dimension): on how many functions it beats / equals-or-beats."""
    groups: dict[tuple[str, str, int], list[PairedDifference]] = defaultdict(list)
    for d in differences:
        if d.pairs:
            groups[(d.method, d.baseline, d.dim)].append(d)
    lines = []
    for (method, baseline, dim), diffs in sorted(groups.items()):
        n = len(diffs)
        beats = [d.function for d in diffs if d.beats]
        equal = [d.function for d in diffs if d.equals_or_beats]
        lines.append(
            f"d={dim}: {method} beats {baseline} on {len(beats)} of {n} functions "
            f"(not on {_missing(diffs, beats)}); equals or beats it on {len(equal)} of {n} "
            f"(not on {_missing(diffs, equal)})"
        )
    return "\n".join(lines) or "No paired comparison: it needs sobol or gp and another method."


def _missing(diffs: list[PairedDifference], chosen: list[int]) -> str:
    return ", ".join(f"f{d.function}" for d in diffs if d.function not in chosen) or "none"


def _ordered(methods: set[str]) -> list[str]:
    """labo's methods first (alphabetically), then the baselines gp, sobol."""
    return sorted(m for m in methods if m not in BASELINES) + [b for b in ("gp", "sobol") if b in methods]


def bbob_payload(summaries: list[BBOBSummary], differences: list[PairedDifference]) -> dict:
    """JSON-ready summaries and paired comparisons (with their ``beats`` flags)."""
    return {
        "metric": "log10(f_best - f_opt), final",
        "summary": [asdict(s) for s in summaries],
        "paired": [
            {**asdict(d), "beats": d.beats, "equals_or_beats": d.equals_or_beats} for d in differences
        ],
    }


def plot_bbob(summaries: list[BBOBSummary], path: str | Path) -> Path:
    """One panel per dimension: final log10 regret (mean ± s.e.) per function, methods side by side.

    Args:
        summaries: From :func:`summarize_bbob`.
        path: Output PNG path.

    Returns:
        The PNG path.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dims = sorted({s.dim for s in summaries}) or [0]
    methods = _ordered({s.method for s in summaries})
    fig, axes = plt.subplots(len(dims), 1, figsize=(13, 4.2 * len(dims)), squeeze=False)
    width = 0.6 / max(len(methods), 1)
    for ax, dim in zip(axes[:, 0], dims, strict=True):
        functions = sorted({s.function for s in summaries if s.dim == dim})
        for k, method in enumerate(methods):
            rows = [s for s in summaries if s.dim == dim and s.method == method and s.runs]
            xs = [functions.index(s.function) + (k - (len(methods) - 1) / 2) * width for s in rows]
            errs = [0.0 if math.isnan(s.se) else s.se for s in rows]
            ax.errorbar(xs, [s.mean for s in rows], yerr=errs, fmt="o", ms=4, capsize=2, label=method)
        ax.set_xticks(range(len(functions)), [f"f{f}" for f in functions])
        ax.set_xlim(-0.6, len(functions) - 0.4)
        ax.set(ylabel="log10(f_best - f_opt)", title=f"BBOB, d = {dim}: final regret, mean ± s.e.")
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
