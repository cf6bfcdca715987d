"""One BO iteration, LaplaceModel vs SingleTaskGP, measured side by side (issue 4).

Methods: ``LaplaceModel`` (its default: Functional up to 250 rows, Kron beyond),
``LaplaceModel-ll`` (last-layer weights, default structure) and ``SingleTaskGP``.
One iteration = refit the surrogate on the current data + optimise
qLogNoisyExpectedImprovement (q=4, num_restarts=10, raw_samples=512). For
LaplaceModel the refit is warm-started from the model of the previous iteration
(fitted on the first n-4 points), as in a BO loop; the cold fit is reported too.
SingleTaskGP is fitted from scratch with fit_gpytorch_mll, as BoTorch does.
Each (method, n, d) runs in its own subprocess with a wall-clock cap; a run
that exceeds it is reported as "timeout". Peak memory is the subprocess's max RSS.

Run: ``.venv/bin/python benchmarks/bo_iteration.py [--sizes 50x6,500x20,2000x100,5000x100]
[--cap 900] [--out benchmarks/results/bo_iteration.json]``
"""

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path


def objective(X):
    import torch

    g = torch.Generator().manual_seed(123)
    W = (torch.randn(X.shape[-1], 8, generator=g, dtype=X.dtype) / X.shape[-1] ** 0.5).to(X.device)
    Z = (X - 0.5) @ W * 6
    return (torch.sin(Z).sum(-1) - 0.1 * Z.pow(2).sum(-1)).unsqueeze(-1)


def run_one(method: str, n: int, d: int, device: str = "cpu") -> dict:
    import resource

    import torch
    from botorch.acquisition import qLogNoisyExpectedImprovement
    from botorch.models.transforms import Normalize, Standardize
    from botorch.optim import optimize_acqf

    torch.manual_seed(0)
    X = torch.rand(n, d, dtype=torch.float64).to(device)
    Y = objective(X)
    bounds = torch.stack([torch.zeros(d), torch.ones(d)]).double().to(device)
    sync = torch.cuda.synchronize if X.is_cuda else (lambda: None)
    out = {"method": method, "n": n, "d": d}
    t0 = time.perf_counter()
    if method.startswith("LaplaceModel"):
        from labo.laplace import LastLayer
        from labo.surrogates import LaplaceModel, fit_laplace_model

        variant = {"LaplaceModel": {}, "LaplaceModel-ll": {"weights": LastLayer()}}[method]
        prev = LaplaceModel(
            X[:-4], Y[:-4], input_transform=Normalize(d), outcome_transform=Standardize(1), **variant
        )
        fit_laplace_model(prev)
        out["cold_fit_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        model = LaplaceModel(
            X, Y, input_transform=Normalize(d), outcome_transform=Standardize(1), warm_start=prev, **variant
        )
        fit_laplace_model(model)
        out["train_steps"] = model.fit_info["train_steps"]
        out["structure"] = type(model.laplace.structure).__name__
    else:
        from botorch.fit import fit_gpytorch_mll
        from botorch.models import SingleTaskGP
        from gpytorch.mlls import ExactMarginalLogLikelihood

        model = SingleTaskGP(X, Y, input_transform=Normalize(d), outcome_transform=Standardize(1))
        fit_gpytorch_mll(ExactMarginalLogLikelihood(model.likelihood, model))
    sync()
    out["fit_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    acqf = qLogNoisyExpectedImprovement(model, X_baseline=X, prune_baseline=True)
    cand, _ = optimize_acqf(acqf, bounds=bounds, q=4, num_restarts=10, raw_samples=512)
    sync()
    out["acq_s"] = time.perf_counter() - t0
    out["iteration_s"] = out["fit_s"] + out["acq_s"]
    out["best_candidate_value"] = float(objective(cand).max())
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if X.is_cuda:
        out["device"] = torch.cuda.get_device_name()
        out["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def main():
    parser = argparse.ArgumentParser(description="One BO iteration: LaplaceModel vs SingleTaskGP")
    parser.add_argument("--sizes", default="50x6,500x20,2000x100,5000x100")
    parser.add_argument(
        "--methods", default="LaplaceModel,SingleTaskGP", help="also LaplaceModel-ll (last-layer weights)"
    )
    parser.add_argument("--cap", type=float, default=900.0, help="seconds per run")
    parser.add_argument("--out", default="benchmarks/results/bo_iteration.json")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (data and models on it)")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        method, n, d, device = args.one.split(":")
        print(json.dumps(run_one(method, int(n), int(d), device)))
        return
    rows = []
    for size in args.sizes.split(","):
        n, d = map(int, size.split("x"))
        for method in args.methods.split(","):
            cmd = [sys.executable, __file__, "--one", f"{method}:{n}:{d}:{args.device}"]
            t0 = time.perf_counter()
            try:
                proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.cap)
                if proc.returncode != 0:
                    lines = proc.stderr.strip().splitlines()
                    reason = (
                        lines[-1] if lines else f"killed (exit code {proc.returncode}, likely out of memory)"
                    )
                    row = {"method": method, "n": n, "d": d, "error": reason}
                else:
                    row = json.loads(proc.stdout.strip().splitlines()[-1])
            except subprocess.TimeoutExpired:
                row = {"method": method, "n": n, "d": d, "timeout_s": args.cap}
            row["wall_s"] = time.perf_counter() - t0
            rows.append(row)
            print(json.dumps(row), flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"benchmark": "bo_iteration", "rows": rows}, indent=2))
    print("\n| n | d | method | fit (s) | acq (s) | iteration (s) | peak RSS (MB) |")
    print("|---:|---:|---|---:|---:|---:|---:|")
    for r in rows:
        if "iteration_s" in r:
            print(
                f"| {r['n']} | {r['d']} | {r['method']} | {r['fit_s']:.2f} | {r['acq_s']:.2f} | "
                f"{r['iteration_s']:.2f} | {r['peak_rss_mb']:.0f} |"
            )
        else:
            what = f"timeout after {r['timeout_s']:.0f} s" if "timeout_s" in r else r["error"]
            print(f"| {r['n']} | {r['d']} | {r['method']} | {what} | | | |")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
