"""Where a method's proposals go on Hartmann6-in-100D, and when its regret falls.

For each ``db:study:method``: the mean |proposal − incumbent| per coordinate over all
iterations and seeds, split into the 6 active and the 94 inactive inputs; the fraction of
proposal coordinates on a bound; and the mean log10 regret after given numbers of
evaluations.

    PYTHONPATH=. .venv/bin/python benchmarks/diagnostics/hd_moves.py \\
        /tmp/bo/exact_hd.db:exact_hd:laplace-exact-kernel /tmp/bo/lsavg_hd.db:lsavg_hd:laplace-lsavg \\
        /tmp/bo/gp_hd.db:gp_hd:gp
"""

from __future__ import annotations

import argparse
import json
import math
import sqlite3

import torch

from labo.bench.problems import _Embedded, get_problem

PROBLEM = "hartmann6_100d"


def runs(spec: str) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """``(X, y, iteration)`` of every finished run of ``db:study:method``."""
    db, study, method = spec.rsplit(":", 2)
    con = sqlite3.connect(db)
    out = []
    seeds = con.execute(
        "SELECT DISTINCT seed FROM evaluations WHERE study=? AND problem=? AND method=?",
        (study, PROBLEM, method),
    ).fetchall()
    for (seed,) in seeds:
        rows = con.execute(
            "SELECT iteration, x, y FROM evaluations WHERE study=? AND problem=? AND method=? AND seed=? "
            "AND y IS NOT NULL ORDER BY id",
            (study, PROBLEM, method, seed),
        ).fetchall()
        if len(rows) < get_problem(PROBLEM).budget:
            continue
        X = torch.tensor([json.loads(r[1]) for r in rows], dtype=torch.float64)
        y = torch.tensor([json.loads(r[2])[0] for r in rows], dtype=torch.float64)
        out.append((X, y, torch.tensor([r[0] for r in rows])))
    return out


def summary(spec: str, marks: list[int]) -> dict:
    active = torch.zeros(100, dtype=torch.bool)
    active[_Embedded(100).active] = True
    moves, bound, regret = {"active": [], "inactive": []}, [], {m: [] for m in marks}
    best_value = get_problem(PROBLEM).optimum
    data = runs(spec)
    for X, y, it in data:
        for k in range(1, int(it.max()) + 1):
            before = it < k
            incumbent = X[before][y[before].argmax()]
            step = (X[it == k] - incumbent).abs()
            moves["active"].append(step[:, active].mean().item())
            moves["inactive"].append(step[:, ~active].mean().item())
            P = X[it == k]
            bound.append(((P <= 1e-6) | (P >= 1 - 1e-6)).double().mean().item())
        for m in marks:
            regret[m].append(math.log10(max(best_value - float(y[:m].max()), 1e-12)))
    mean = lambda v: sum(v) / max(len(v), 1)  # noqa: E731
    return {
        "runs": len(data),
        "move_active": mean(moves["active"]),
        "move_inactive": mean(moves["inactive"]),
        "on_bound": mean(bound),
        "log10_regret_after": {m: mean(v) for m, v in regret.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("specs", nargs="+", help="db:study:method")
    parser.add_argument("--marks", default="40,60,80,100,150")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    marks = [int(m) for m in args.marks.split(",")]
    out = {}
    for spec in args.specs:
        out[spec] = s = summary(spec, marks)
        curve = ", ".join(f"{m}: {v:.2f}" for m, v in s["log10_regret_after"].items())
        print(
            f"{spec.rsplit(':', 1)[-1]:22s} runs {s['runs']}  move active {s['move_active']:.3f}  "
            f"inactive {s['move_inactive']:.3f}  on a bound {s['on_bound']:.3f}  regret after {curve}"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
