"""Paired final log10 regret of two methods stored in (possibly different) study databases.

Each side is ``db:study:method``; runs are paired by (problem, seed), finished runs only
(the run's evaluations reach the problem's budget). Prints per problem the two means
± standard errors and the paired difference (candidate − reference, negative: the
candidate is better).

    PYTHONPATH=. python benchmarks/diagnostics/paired.py /tmp/bo/kern.db:kern_hd:laplace-rff-kernel \
        benchmarks/results/bo_suite_rff_study.db:rff:laplace-rff
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from labo.bench.plots import curves
from labo.bench.problems import get_problem, is_problem_name
from labo.bench.store import StudyStore

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # surrogate_screen
from surrogate_screen import mean_se  # noqa: E402


def finals(spec: str) -> dict[str, dict[int, float]]:
    """``{problem: {seed: final log10 regret}}`` of the finished runs of ``db:study:method``."""
    db, study, method = spec.rsplit(":", 2)
    store = StudyStore(Path(db))
    out: dict[str, dict[int, float]] = {}
    for (problem, m), runs in curves(store, study).items():
        if m != method or not is_problem_name(problem):
            continue
        budget = get_problem(problem).budget
        out[problem] = {seed: c[budget - 1] for seed, c in runs.items() if len(c) >= budget}
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("candidate", help="db:study:method")
    p.add_argument("reference", help="db:study:method")
    p.add_argument("--json", help="write the rows here")
    a = p.parse_args()
    cand, ref = finals(a.candidate), finals(a.reference)
    rows = []
    for problem in sorted(set(cand) & set(ref)):
        seeds = sorted(set(cand[problem]) & set(ref[problem]))
        if not seeds:
            continue
        c, r = [cand[problem][s] for s in seeds], [ref[problem][s] for s in seeds]
        (cm, cs), (rm, rs) = mean_se(c), mean_se(r)
        dm, ds = mean_se([x - y for x, y in zip(c, r, strict=True)])
        rows.append(
            {
                "problem": problem,
                "seeds": seeds,
                "candidate": [cm, cs],
                "reference": [rm, rs],
                "diff": [dm, ds],
            }
        )
        print(
            f"{problem:16s} {len(seeds):2d} seeds  candidate {cm:6.2f} ± {cs:4.2f}  "
            f"reference {rm:6.2f} ± {rs:4.2f}  diff {dm:+6.2f} ± {ds:4.2f}"
        )
    if a.json:
        with open(a.json, "w") as fh:
            json.dump({"candidate": a.candidate, "reference": a.reference, "rows": rows}, fh, indent=1)


if __name__ == "__main__":
    main()
