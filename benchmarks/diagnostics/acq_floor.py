"""BoTorch's cost floor for one qLogNEI call, and what it leaves of issue 9's 10x target.

Issue 9 asks for one LaplaceModel BO iteration at least 10x faster than SingleTaskGP's
wherever the GP runs. The acquisition step (qLogNEI, q = 4, 10 restarts, 512 raw
samples, L-BFGS-B) costs calls x seconds per call, and part of each call is BoTorch's
own machinery whatever the model. This script measures that part directly: the median
milliseconds of one qLogNEI forward + backward on 10 x 4 candidates for a SingleTaskGP
fitted to 8 points (its posterior costs next to nothing), side by side with the GP, the
default LaplaceModel and its last-layer variant at n = 1000, d = 100 (the synthetic
objective of ``bo_iteration.py``, ``prune_baseline=True``).

Then, for each size of ``benchmarks/results/bo_iteration_gpu.json`` where the GP ran, it
prints the 10x budget (the GP's median iteration / 10), labo's median warm refit and
qLogNEI construction there, and the number of calls at the floor cost that fit in what
is left (and at the cost of the cheapest call measured, whichever model made it), next to
the number of calls the GP itself needed. Meaningful on the device the
table was measured on (``--device cuda`` on the H100).

Run: ``PYTHONPATH=.:benchmarks python benchmarks/diagnostics/acq_floor.py [--device cuda]
[--out benchmarks/results/acq_floor.json]``
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bo_iteration
sys.path.insert(0, str(Path(__file__).resolve().parent))  # sibling diagnostics
from acq_profile import fit  # noqa: E402
from bo_iteration import objective  # noqa: E402
from gpu_call_breakdown import median_ms  # noqa: E402

RESULTS = Path(__file__).resolve().parents[1] / "results"


def call_ms(method: str, n: int, device: torch.device) -> dict:
    from botorch.acquisition import qLogNoisyExpectedImprovement

    torch.manual_seed(0)
    X = torch.rand(n, 100, dtype=torch.float64, device=device)
    Y = objective(X)
    model = fit(method, X, Y)
    acqf = qLogNoisyExpectedImprovement(model, X_baseline=X, prune_baseline=True)
    Xc = torch.rand(10, 4, 100, dtype=X.dtype, device=device, requires_grad=True)

    def call():
        acqf(Xc).sum().backward()

    return {
        "method": method,
        "n": n,
        "ms_per_call": median_ms(call, device),
        "baseline_rows": acqf.X_baseline.shape[0],
    }


def budget_rows(floor_ms: float, cheapest_ms: float) -> list[dict]:
    """The 10x budget at each size of the GPU table where the GP finished."""
    table = json.loads((RESULTS / "bo_iteration_gpu.json").read_text())["rows"]
    out = []
    for n, d in sorted({(r["n"], r["d"]) for r in table}):
        gp = [
            r
            for r in table
            if (r["n"], r["d"]) == (n, d) and r["method"] == "SingleTaskGP" and "iteration_s" in r
        ]
        lm = [r for r in table if (r["n"], r["d"]) == (n, d) and r["method"].startswith("LaplaceModel")]
        if not gp or not lm:
            continue
        budget = statistics.median(r["iteration_s"] for r in gp) / 10
        overhead = min(
            statistics.median(r["fit_s"] + r["acqf_init_s"] for r in lm if r["method"] == m)
            for m in {r["method"] for r in lm}
        )
        out.append(
            {
                "n": n,
                "d": d,
                "gp_iteration_s": 10 * budget,
                "budget_s": budget,
                "labo_fit_and_acqf_init_s": overhead,
                "calls_that_fit_at_floor": max(0.0, (budget - overhead) / (floor_ms / 1e3)),
                "calls_that_fit_at_cheapest": max(0.0, (budget - overhead) / (cheapest_ms / 1e3)),
                "gp_calls": statistics.median(r["acq_calls"] for r in gp),
            }
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", default=str(RESULTS / "acq_floor.json"))
    args = parser.parse_args()
    device = torch.device(args.device)
    rows = [call_ms("GP", 8, device)] + [call_ms(m, 1000, device) for m in ("GP", "LM", "LM-ll")]
    for row in rows:
        print(
            f"{row['method']:6s} n={row['n']:5d} rows={row['baseline_rows']:4d} "
            f"{row['ms_per_call']:.2f} ms/call"
        )
    floor = rows[0]["ms_per_call"]
    cheapest = min(row["ms_per_call"] for row in rows)
    budget = budget_rows(floor, cheapest)
    for b in budget:
        print(
            f"n={b['n']} d={b['d']}: GP {b['gp_iteration_s']:.1f} s -> 10x budget {b['budget_s']:.2f} s; "
            f"labo fit + qLogNEI init {b['labo_fit_and_acqf_init_s']:.2f} s; "
            f"{b['calls_that_fit_at_floor']:.0f} calls fit at {floor:.1f} ms, "
            f"{b['calls_that_fit_at_cheapest']:.0f} at the cheapest call ({cheapest:.1f} ms); "
            f"the GP needed {b['gp_calls']:.0f}"
        )
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    result = {
        "device": name,
        "torch": torch.__version__,
        "calls": rows,
        "floor_ms": floor,
        "cheapest_ms": cheapest,
        "budget": budget,
    }
    Path(args.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
