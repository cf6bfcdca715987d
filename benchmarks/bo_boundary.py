"""How often a BO study's proposals sit on the box boundary (issue 7 diagnosis).

For every (problem, method) of a study: the fraction of coordinates of the BO proposals
(iterations >= 1, the initial design excluded) that lie within 1e-3 of a bound, in the
unit cube of the problem's bounds, and the mean distance |u - 0.5| of a coordinate from
the centre (0.25 for uniform points, 0.5 at a corner). Surrogates whose predictive
variance grows without limit away from the data push qLogNEI to the corners.

Run: ``python benchmarks/bo_boundary.py STUDY_DB STUDY [--out benchmarks/results/bo_boundary_STUDY.json]``
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

import torch

from labo.bench import get_problem, open_store


def boundary_stats(db: str, study: str, tol: float = 1e-3) -> list[dict]:
    """One row per (problem, method): proposals, fraction of coordinates at a bound, mean |u - 0.5|."""
    with open_store(db) as store:
        rows = store.evaluations(study)
    groups: dict[tuple[str, str], list[list[float]]] = defaultdict(list)
    for row in rows:
        if row.iteration >= 1:
            groups[(row.problem, row.method)].append(row.x)
    out = []
    for (problem, method), xs in sorted(groups.items()):
        bounds = get_problem(problem).bounds
        U = (torch.tensor(xs, dtype=torch.float64) - bounds[0]) / (bounds[1] - bounds[0])
        at_bound = ((U < tol) | (U > 1 - tol)).double().mean().item()
        out.append({
            "problem": problem, "method": method, "proposals": len(xs),
            "frac_coords_at_bound": at_bound, "mean_abs_u_minus_half": (U - 0.5).abs().mean().item(),
        })  # fmt: skip
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("db")
    parser.add_argument("study")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    stats = boundary_stats(args.db, args.study)
    print("| problem | method | proposals | coordinates at a bound | mean abs(u - 0.5) |")
    print("|---|---|---:|---:|---:|")
    for s in stats:
        print(
            f"| {s['problem']} | {s['method']} | {s['proposals']} | {s['frac_coords_at_bound']:.2f} "
            f"| {s['mean_abs_u_minus_half']:.3f} |"
        )
    out = Path(args.out or Path(__file__).parent / "results" / f"bo_boundary_{args.study}.json")
    out.write_text(json.dumps(stats, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
