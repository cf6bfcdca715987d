"""Per-function comparison of BBOB studies run on the same instances (e.g. instance 1 only).

``bbob_suite.py --report-only`` judges methods over instances; with one instance per
function that is a sign test, which this script prints: the final log10 regret of a
candidate and of each reference per function and instance, the differences, and how
many functions are lower / higher by more than 0.02.

    PYTHONPATH=. python benchmarks/diagnostics/bbob_instance_compare.py \\
        /tmp/bo/bbob_yj.db:bbob20yj:laplace-yj \\
        default=/tmp/bo/r_bbob20b.db:bbob20b:laplace-lsavg-2d gp=/tmp/bo/r_bbob20.db:bbob20:gp \\
        sobol=/tmp/bo/r_bbob20s.db:bbob20s:sobol --json benchmarks/results/bbob_yj_i1_compare.json
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from labo.bench.bbob_report import bbob_finals
from labo.bench.store import StudyStore


def finals(spec: str) -> dict:
    """``{(function, instance, seed): final log10 regret}`` of ``DB:STUDY:METHOD``."""
    db, study, method = spec.rsplit(":", 2)
    out = {}
    for (function, _dim, m), runs in bbob_finals(StudyStore(Path(db)), study).items():
        if m == method:
            out.update({(function, *key): value for key, value in runs.items()})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("candidate", help="DB:STUDY:METHOD")
    parser.add_argument("references", nargs="+", help="NAME=DB:STUDY:METHOD")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    cand = finals(args.candidate)
    refs = {name: finals(spec) for name, spec in (r.split("=", 1) for r in args.references)}
    rows = []
    for key in sorted(cand):
        if all(key in ref for ref in refs.values()):
            rows.append(
                {"function": key[0], "instance_seed": list(key[1:]), "candidate": cand[key]}
                | {name: ref[key] for name, ref in refs.items()}
            )
    for row in rows:
        cells = "  ".join(f"{name} {row[name]:6.2f} ({row['candidate'] - row[name]:+.2f})" for name in refs)
        print(f"f{row['function']:<3} {row['instance_seed']}  candidate {row['candidate']:6.2f}  {cells}")
    summary = {}
    for name in refs:
        diffs = [row["candidate"] - row[name] for row in rows]
        mean = statistics.mean(diffs)
        se = statistics.stdev(diffs) / len(diffs) ** 0.5 if len(diffs) > 1 else float("nan")
        lower, higher = sum(d < -0.02 for d in diffs), sum(d > 0.02 for d in diffs)
        summary[name] = {"mean": mean, "se": se, "lower": lower, "higher": higher, "n": len(diffs)}
        print(
            f"candidate - {name}: mean {mean:+.3f} ± {se:.3f}, "
            f"lower on {lower}, higher on {higher} of {len(diffs)}"
        )
    if args.json:
        payload = {
            "candidate": args.candidate,
            "references": args.references,
            "rows": rows,
            "summary": summary,
        }
        Path(args.json).write_text(json.dumps(payload, indent=1))


if __name__ == "__main__":
    main()
