"""Function-space Laplace (issue 6): Functional() vs Full()/Kron(), conditioning, context subsets.

MLPs at their random initialisation (the cost does not depend on the weights), float64,
d = 10, one output: ``small`` 10-100-100-1 (P = 11,301) and ``large`` 10-300-300-1
(P = 93,901). Every measurement runs in its own subprocess (one torch thread by default, see
``--threads``) so that its peak memory
(peak RSS minus the RSS after building the data) is its own; a run past ``--cap``
seconds is killed and reported as such.

Parts:

* ``scaling``: for n in {50, 200, 1000, 5000}: ``fit`` = ``fit_laplace`` plus the first
  ``posterior_precision()`` (factorisation) and one log marginal likelihood; ``pred`` =
  the joint ``predictive`` at 100 test inputs plus ``predictive_variance`` at 1000.
  Skipped up front (said in the output): Full at P = 93,901 (the S x S precision has
  8.8e9 entries, 70 GB) and Full at n > 50 (its cost is dominated by the
  n-independent S³ factorisation, measured at n = 50); Functional at P = 93,901
  and n = 5000 (the N x S GGN square root alone is 3.8 GB, ``N² S`` = 2.3e12 flops).
  The crossover is where Kron's fit + pred time drops below Functional's, next to the
  decisions of ``prefer_functional`` and of the ``LaplaceModel`` default.
* ``conditioning``: q = 4 new points at n = 1000 (small MLP): ``condition`` (function-space
  block update for Functional, Woodbury for Kron) + joint predictive at 100 inputs, vs
  refitting on the union of the 1004 points (fit + factorisation + the same predictive).
  The largest difference between the two Functional covariances is printed as a check.
* ``context``: n = 2000 (small MLP), ``Functional(context_points=M)`` for M in
  {100, 250, 500, 1000}, greedy and random, vs the exact Functional: time and the
  relative error of the predictive variances at 500 test inputs (mean and max).

The Full run at n = 50 also fits Functional on the same problem and prints the largest
absolute difference of the joint predictive covariance and of the log marginal likelihood.

Run: ``.venv/bin/python benchmarks/functional.py [--part all|scaling|conditioning|context] [--cap 300]``
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch import nn

OUT = "benchmarks/results/functional.json"
# --quick (a smoke test of the script itself; children inherit it through the environment)
QUICK = os.environ.get("LABO_BENCH_QUICK") == "1" or "--quick" in sys.argv
WIDTHS = {"small": 8, "large": 12} if QUICK else {"small": 100, "large": 300}
NS = (20, 60) if QUICK else (50, 200, 1000, 5000)
N_COND, N_CONTEXT, CONTEXT_MS = (60, 80, (10, 20)) if QUICK else (1000, 2000, (100, 250, 500, 1000))
SKIP = {
    ("Full", "large"): "S x S precision has 8.8e9 entries (70 GB)",
    ("Functional", "large", 5000): "N x S square root is 3.8 GB and N^2 S = 2.3e12 flops",
    ("Full", "small", 200): "the S^3 factorisation does not depend on n (measured at n = 50)",
    ("Full", "small", 1000): "the S^3 factorisation does not depend on n (measured at n = 50)",
    ("Full", "small", 5000): "the S^3 factorisation does not depend on n (measured at n = 50)",
}


def problem(size: str, n: int, n_test: int = 100, seed: int = 0):
    torch.manual_seed(seed)
    w = WIDTHS[size]
    net = nn.Sequential(nn.Linear(10, w), nn.Tanh(), nn.Linear(w, w), nn.Tanh(), nn.Linear(w, 1)).double()
    X = torch.randn(n, 10, dtype=torch.float64)
    Y = torch.sin(X.sum(-1, keepdim=True)) + 0.1 * torch.randn(n, 1, dtype=torch.float64)
    X_test = torch.randn(n_test, 10, dtype=torch.float64)
    return net, X, Y, X_test


def n_weights(size: str) -> int:
    """P of the MLP 10-w-w-1: 10w + w + w² + w + w + 1."""
    w = WIDTHS[size]
    return w * w + 13 * w + 1


def structure_of(name: str, context_points=None, context="greedy"):
    from labo.laplace import Full, Functional, Kron

    if name == "Functional":
        return Functional(context_points=context_points, context=context)
    return {"Full": Full(), "Kron": Kron()}[name]


def warm_up(structure) -> None:
    """One fit + predictive on a tiny MLP, so first-call overheads (torch.func) are not timed."""
    torch.manual_seed(1)
    net = nn.Sequential(nn.Linear(10, 8), nn.Tanh(), nn.Linear(8, 1)).double()
    X = torch.randn(12, 10, dtype=torch.float64)
    fit_and_predict(net, X, X[:, :1].sin(), X[:3], X[:5], structure)


def _status_mb(key: str) -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def start_memory() -> float:
    """Reset the peak-RSS mark (Linux ``clear_refs``) and return the current RSS in MB."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        pass
    return _status_mb("VmRSS")


def peak_mb(start: float) -> float:
    """Peak RSS since :func:`start_memory`, minus the RSS at that point, in MB."""
    return _status_mb("VmHWM") - start


def fit_and_predict(net, X, Y, X_test, X_var, structure):
    from labo.laplace import fit_laplace

    t0 = time.perf_counter()
    la = fit_laplace(net, X, Y, structure=structure, prior_precision=1.0, noise_std=0.1)
    la.posterior_precision()
    lml = float(la.log_marginal_likelihood())
    t1 = time.perf_counter()
    mean, cov = la.predictive(X_test)
    var = la.predictive_variance(X_var)
    t2 = time.perf_counter()
    return la, {"fit_s": t1 - t0, "pred_s": t2 - t1, "lml": lml, "var_sum": float(var.sum())}, cov


# ---------------------------------------------------------------------------- child runs


def child_scaling(structure: str, size: str, n: int) -> dict:
    net, X, Y, X_test = problem(size, n)
    X_var = torch.randn(1000, 10, dtype=torch.float64)
    warm_up(structure_of(structure))
    base = start_memory()
    _, res, cov = fit_and_predict(net, X, Y, X_test, X_var, structure_of(structure))
    res["peak_mb"] = peak_mb(base)
    if structure == "Full":  # equivalence check against Functional on the same problem
        _, ref, cov_f = fit_and_predict(net, X, Y, X_test, X_var, structure_of("Functional"))
        res["equivalence"] = {
            "max_abs_cov_diff": float((cov - cov_f).abs().max()),
            "max_cov": float(cov.abs().max()),
            "lml_diff": abs(res["lml"] - ref["lml"]),
            "var_sum_diff": abs(res["var_sum"] - ref["var_sum"]),
        }
    return res


def child_conditioning(structure: str) -> dict:
    from labo.laplace import fit_laplace
    from labo.laplace.predictive.conditioning import condition

    net, X, Y, X_test = problem("small", N_COND + 4)
    Xc, Yc, X, Y = X[N_COND:], Y[N_COND:], X[:N_COND], Y[:N_COND]
    warm_up(structure_of(structure))
    la = fit_laplace(net, X, Y, structure=structure_of(structure), prior_precision=1.0, noise_std=0.1)
    la.posterior_precision()
    condition(la, Xc[:1], Yc[:1]).predictive(X_test[:4])  # warm-up (first torch.func calls)
    runs = []
    for _ in range(3):  # median of 3: the shared machine's load varies
        t0 = time.perf_counter()
        post = condition(la, Xc, Yc)
        t1 = time.perf_counter()
        _, cov_c = post.predictive(X_test)
        t2 = time.perf_counter()
        union = fit_laplace(
            net, torch.cat([X, Xc]), torch.cat([Y, Yc]), structure=structure_of(structure), noise_std=0.1
        )
        union.posterior_precision()
        t3 = time.perf_counter()
        _, cov_r = union.predictive(X_test)
        t4 = time.perf_counter()
        runs.append((t1 - t0, t2 - t1, t3 - t2, t4 - t3))
    c, cp, r, rp = (statistics.median(x) for x in zip(*runs, strict=True))
    res = {
        "condition_s": c,
        "condition_predict_s": cp,
        "refit_s": r,
        "refit_predict_s": rp,
        "speedup_update": r / c,
        "speedup_with_predictive": (r + rp) / (c + cp),
        "runs": runs,
    }
    res["max_abs_cov_diff_vs_refit"] = float((cov_c.reshape(100, 100) - cov_r.reshape(100, 100)).abs().max())
    return res


def child_context(M: int | None, context: str) -> dict:
    net, X, Y, X_test = problem("small", N_CONTEXT, n_test=500)
    warm_up(structure_of("Functional", M, context))
    base = start_memory()
    la, res, _ = fit_and_predict(net, X, Y, X_test[:100], X_test, structure_of("Functional", M, context))
    res["peak_mb"] = peak_mb(base)
    res["var"] = la.predictive_variance(X_test)[:, 0].tolist()
    return res


CHILDREN = {
    "scaling": child_scaling,
    "conditioning": child_conditioning,
    "context": child_context,
}


def run_child(cap: float, kind: str, *args) -> dict:
    cmd = [sys.executable, __file__, "--child", json.dumps([kind, *args])]
    t0 = time.perf_counter()
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=cap, check=False)
    except subprocess.TimeoutExpired:
        return {"status": f"killed after {cap:.0f} s"}
    if out.returncode != 0:
        tail = (out.stderr or "").strip().splitlines()[-1:] or ["?"]
        return {"status": f"failed (rc {out.returncode}): {tail[0]}", "wall_s": time.perf_counter() - t0}
    return {"status": "ok", **json.loads(out.stdout.strip().splitlines()[-1])}


# ---------------------------------------------------------------------------- parts


def part_scaling(cap: float, structures=("Functional", "Kron", "Full"), previous=()) -> list[dict]:
    from labo.laplace.structures.functional import prefer_functional
    from labo.surrogates.model import FUNCTIONAL_MAX_ROWS

    rows = []
    print("\n## scaling: fit (curvature + factorisation + lml) and pred (joint 100 + variance 1000)")
    print(f"{'P':>7} {'n':>5} {'structure':>10} {'fit s':>8} {'pred s':>8} {'peak MB':>8}  status")
    for size in ("small", "large"):
        for n in NS:
            for structure in ("Functional", "Kron", "Full"):
                reason = SKIP.get((structure, size)) or SKIP.get((structure, size, n))
                key = (structure, size, n)
                old = [r for r in previous if (r.get("structure"), r.get("size"), r.get("n")) == key]
                if structure not in structures and old:
                    res = dict(old[0])
                    if not res["status"].endswith("(previous run)"):
                        res["status"] += " (previous run)"
                elif reason:
                    res = {"status": f"skipped: {reason}"}
                else:
                    res = run_child(cap, "scaling", structure, size, n)
                res.update(size=size, n=n, structure=structure, P=n_weights(size))
                rows.append(res)
                cells = [
                    f"{res[k]:8.2f}" if k in res else f"{'-':>8}" for k in ("fit_s", "pred_s", "peak_mb")
                ]
                print(f"{res['P']:>7} {n:>5} {structure:>10} {' '.join(cells)}  {res['status']}")
                if "equivalence" in res:
                    e = res["equivalence"]
                    print(
                        f"    Functional vs Full: max |cov diff| {e['max_abs_cov_diff']:.1e} "
                        f"(max |cov| {e['max_cov']:.2e}), |lml diff| {e['lml_diff']:.1e}"
                    )
    print("\ncrossover (fit + pred, Functional vs Kron) and the automatic rules:")
    for size in ("small", "large"):
        for n in NS:
            by = {r["structure"]: r for r in rows if r["size"] == size and r["n"] == n and "fit_s" in r}
            S = n_weights(size)
            faster = "-"
            if "Functional" in by and "Kron" in by:
                tf = by["Functional"]["fit_s"] + by["Functional"]["pred_s"]
                tk = by["Kron"]["fit_s"] + by["Kron"]["pred_s"]
                faster = "Functional" if tf < tk else "Kron"
            rule = "Functional" if prefer_functional(n, 1, S) else "Kron"
            model = "Functional" if prefer_functional(n, 1, S, max_rows=FUNCTIONAL_MAX_ROWS) else "Kron"
            print(f"  P={S} n={n}: faster={faster}, prefer_functional={rule}, LaplaceModel default={model}")
            rows.append(
                {"crossover": True, "size": size, "n": n, "faster": faster, "rule": rule, "model": model}
            )
    return rows


def part_conditioning(cap: float) -> list[dict]:
    print("\n## conditioning on q = 4 points at n = 1000 (P = 11,301) vs refit on the union (median of 3)")
    rows = []
    for structure in ("Functional", "Kron"):
        res = run_child(cap, "conditioning", structure)
        res["structure"] = structure
        rows.append(res)
        if res["status"] == "ok":
            print(
                f"  {structure:>10}: condition {res['condition_s']:.3f} s (+ predictive "
                f"{res['condition_predict_s']:.3f} s) vs refit {res['refit_s']:.3f} s (+ predictive "
                f"{res['refit_predict_s']:.3f} s): speed-up {res['speedup_update']:.0f}x for the update, "
                f"{res['speedup_with_predictive']:.1f}x with the predictive; "
                f"max |cov diff| {res['max_abs_cov_diff_vs_refit']:.1e}"
            )
        else:
            print(f"  {structure:>10}: {res['status']}")
    return rows


def part_context(cap: float) -> list[dict]:
    print("\n## context points at n = 2000 (P = 11,301): error of the predictive variance vs exact")
    exact = run_child(cap, "context", None, "greedy")
    rows = [{"M": None, "context": "exact", **{k: v for k, v in exact.items() if k != "var"}}]
    if exact["status"] != "ok":
        print(f"  exact: {exact['status']}")
        return rows
    v0 = torch.tensor(exact["var"])
    print(
        f"  exact: fit {exact['fit_s']:.2f} s, pred {exact['pred_s']:.2f} s, peak {exact['peak_mb']:.0f} MB"
    )
    for M in CONTEXT_MS:
        for context in ("greedy", "random"):
            res = run_child(cap, "context", M, context)
            row = {"M": M, "context": context, **{k: v for k, v in res.items() if k != "var"}}
            if res["status"] == "ok":
                rel = (torch.tensor(res["var"]) - v0).abs() / v0
                row.update(rel_err_mean=float(rel.mean()), rel_err_max=float(rel.max()))
                print(
                    f"  M={M:>4} {context:>6}: fit {res['fit_s']:.2f} s, pred {res['pred_s']:.2f} s, "
                    f"peak {res['peak_mb']:.0f} MB, rel. var error mean {row['rel_err_mean']:.3f} "
                    f"max {row['rel_err_max']:.3f}"
                )
            else:
                print(f"  M={M:>4} {context:>6}: {res['status']}")
            rows.append(row)
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", default="all", choices=["all", "scaling", "conditioning", "context"])
    parser.add_argument("--cap", type=float, default=300.0, help="seconds per subprocess")
    parser.add_argument("--out", default=OUT)
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test of the script")
    parser.add_argument(
        "--structures",
        default="Functional,Kron,Full",
        help="scaling part: structures to run; the others' rows are kept from the existing --out JSON",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads per run (default 1: on a shared, oversubscribed machine MKL's threaded "
        "eigh slows down 100x or more)",
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, *rest = json.loads(args.child)
        torch.set_num_threads(int(os.environ.get("LABO_BENCH_THREADS", "1")))
        print(json.dumps(CHILDREN[kind](*rest)))
        return
    parts = ["conditioning", "context", "scaling"] if args.part == "all" else [args.part]
    fns = {
        "scaling": part_scaling,
        "conditioning": part_conditioning,
        "context": part_context,
    }
    os.environ["LABO_BENCH_THREADS"] = str(args.threads)
    if args.quick:
        os.environ["LABO_BENCH_QUICK"] = "1"
        print("--quick: tiny sizes, the numbers mean nothing")
    out_path = Path(args.out)
    results = json.loads(out_path.read_text()) if out_path.exists() else {}
    results["machine"] = {
        "platform": platform.platform(),
        "torch": torch.__version__,
        "threads": args.threads,
    }
    for part in parts:
        if part == "scaling":
            results[part] = part_scaling(args.cap, args.structures.split(","), results.get("scaling", []))
        else:
            results[part] = fns[part](args.cap)
        out_path.parent.mkdir(parents=True, exist_ok=True)
        out_path.write_text(json.dumps(results, indent=1))
    print(f"\nwrote {out_path}")


if __name__ == "__main__":
    main()
