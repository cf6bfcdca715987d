"""Subnetwork Laplace (issue 8): cost vs the full-Jacobian-then-slice approach, and BO quality.

Part ``scaling``: an MLP 10-512-512-1 (P = 268,801 weights, float64, at its random
initialisation: the cost does not depend on the weights), n = 1000 training points,
S in {1000, 5000} weights chosen by ``random_weights`` (spread over all layers).
Timed: ``fit_laplace(weights=mask, structure=Full())`` and the joint ``predictive``
(mean and 256 x 256 covariance) at 256 test inputs, against the naive approach of
laplace-torch's SubnetLaplace: the Jacobian w.r.t. all P weights (``vmap(jacrev)``,
per batch of training rows), then its S selected columns, the same GGN, Cholesky
and predictive. Every run is its own subprocess under the same address-space cap
(``resource.setrlimit(RLIMIT_AS)``: the process's address space after setup plus
``--mem-cap-gb``); an allocation failure is reported as OOM. Peak memory is the
process's peak RSS minus its RSS after setup. The sum of the predictive variances
is printed for both methods as a check that they compute the same thing.

Part ``bo``: Hartmann6 (minimised; optimum -3.32237) embedded in 100 dimensions
(6 active coordinates, the other 94 ignored), maximised as its negative.
``LaplaceModel`` (default network 100-64-64-1, P = 10,689) with a subnetwork-Full
posterior (``largest_variance``, S = 1000, Full), last-layer, and all-weights Kron,
plus Sobol random search; Sobol initial design, then one point per iteration from
``qLogNoisyExpectedImprovement`` + ``optimize_acqf``; refits warm-started from
the previous model. Reports the simple regret (best found minus optimum) per seed.

Run: ``.venv/bin/python benchmarks/subnetwork.py [--part scaling|bo|all] [--seeds 3] [--iters 20]
[--device cuda] [--jobs N]`` (``--jobs``: BO runs in N parallel processes, one torch thread each).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

import torch
from torch import nn
from torch.func import functional_call, jacrev, vmap

SCALING_OUT = "benchmarks/results/subnetwork_scaling.json"
BO_OUT = "benchmarks/results/subnetwork_bo.json"
HARTMANN_MIN = -3.32237


# ---------------------------------------------------------------------------- scaling


def scaling_problem(seed: int = 0):
    torch.manual_seed(seed)
    dt = torch.float64
    net = nn.Sequential(nn.Linear(10, 512), nn.Tanh(), nn.Linear(512, 512), nn.Tanh(), nn.Linear(512, 1))
    net = net.to(dt)
    X = torch.randn(1000, 10, dtype=dt)
    Y = torch.sin(X.sum(-1, keepdim=True))
    X_test = torch.randn(256, 10, dtype=dt)
    return net, X, Y, X_test


def naive_fit_predict(net, X, Y, X_test, positions, prior, noise, batch):
    """Full Jacobian w.r.t. all P weights, then the selected columns (the sliced approach)."""
    names = [n for n, _ in net.named_parameters()]
    shapes = [p.shape for _, p in net.named_parameters()]
    theta = torch.cat([p.detach().reshape(-1) for p in net.parameters()])

    def f(th, x):
        params, i = {}, 0
        for n, s in zip(names, shapes, strict=True):
            k = math.prod(s)
            params[n] = th[i : i + k].reshape(s)
            i += k
        return functional_call(net, params, (x.unsqueeze(0),)).squeeze(0)

    jac = vmap(jacrev(f), in_dims=(None, 0))
    S = positions.numel()
    C = torch.zeros(S, S, dtype=X.dtype)
    for start in range(0, X.shape[0], batch):
        J = jac(theta, X[start : start + batch])  # (B, K, P)
        Js = J[..., positions].reshape(-1, S)
        del J
        C += Js.T @ Js
    H = C / noise**2 + prior * torch.eye(S, dtype=X.dtype)
    L = torch.linalg.cholesky(H)
    t_fit = time.perf_counter()
    Jt = jac(theta, X_test)[..., positions].reshape(-1, S)
    W = torch.linalg.solve_triangular(L, Jt.T, upper=False)
    mean = net(X_test).detach()
    cov = W.T @ W
    return t_fit, mean, cov


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def current_rss_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def address_space_bytes() -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmSize in /proc/self/status")


def worker(method: str, S: int, batch: int, cap_gb: float) -> dict:
    """One measurement in this (fresh) process; prints one JSON line."""
    from labo.laplace import Full, fit_laplace, random_weights
    from labo.laplace.subsets import AllWeights

    net, X, Y, X_test = scaling_problem()
    mask = random_weights(net, n_weights=S, generator=torch.Generator().manual_seed(1))
    prior, noise = 1.0, 0.1
    positions = None
    if method == "naive":
        full = AllWeights().resolve(net)
        flat = torch.cat([mask.masks.get(s.name, torch.zeros(s.shape, dtype=torch.bool)).reshape(-1)
                          for s in full.selected])  # fmt: skip
        positions = flat.nonzero().squeeze(-1)
    base_rss = current_rss_mb()
    cap = address_space_bytes() + int(cap_gb * 2**30)
    resource.setrlimit(resource.RLIMIT_AS, (cap, resource.getrlimit(resource.RLIMIT_AS)[1]))
    out = {"method": method, "S": S, "batch": batch if method == "naive" else None, "cap_gb": cap_gb}
    try:
        t0 = time.perf_counter()
        if method == "labo":
            la = fit_laplace(
                net, X, Y, weights=mask, structure=Full(), prior_precision=prior, noise_std=noise
            )
            t_fit = time.perf_counter()
            mean, cov = la.predictive(X_test)
            cov = cov.reshape(256, 256)
        else:
            t_fit, mean, cov = naive_fit_predict(net, X, Y, X_test, positions, prior, noise, batch)
        t_end = time.perf_counter()
        out.update(
            status="ok",
            fit_s=t_fit - t0,
            predictive_s=t_end - t_fit,
            total_s=t_end - t0,
            variance_sum=float(cov.diagonal().sum()),
        )
    except (RuntimeError, MemoryError) as err:
        if "memory" not in str(err).lower() and not isinstance(err, MemoryError):
            raise
        out.update(status="OOM", error=str(err).splitlines()[0][:200])
    out.update(peak_extra_mb=rss_mb() - base_rss, base_rss_mb=base_rss)
    print(json.dumps(out), flush=True)
    return out


def run_scaling(args) -> list[dict]:
    configs = []
    for S in (1000, 5000):
        configs += [("labo", S, 0), ("naive", S, 1000), ("naive", S, 100)]
    rows = []
    for method, S, batch in configs:
        cmd = [sys.executable, __file__, "--worker", method, str(S), str(batch), str(args.mem_cap_gb)]
        proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": "."})
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
        if proc.returncode != 0 or not lines:
            why = f"exit {proc.returncode}: " + (proc.stderr.strip().splitlines() or ["?"])[-1][:200]
            status = "OOM" if proc.returncode < 0 or "memory" in why.lower() else "error"
            row = {"method": method, "S": S, "batch": batch, "status": status, "error": why}
        else:
            row = json.loads(lines[-1])
        rows.append(row)
        print(format_row(row), flush=True)
    return rows


def format_row(r: dict) -> str:
    name = "labo (masked, O(S))" if r["method"] == "labo" else f"naive full-J, batch {r['batch']}"
    if r.get("status") != "ok":
        peak = f"{r['peak_extra_mb']:.0f}" if "peak_extra_mb" in r else "-"
        return f"| {r['S']} | {name} | {r['status']} | - | - | {peak} | - |"
    return (
        f"| {r['S']} | {name} | {r['fit_s']:.2f} | {r['predictive_s']:.2f} | {r['total_s']:.2f} "
        f"| {r['peak_extra_mb']:.0f} | {r['variance_sum']:.6g} |"
    )


# ---------------------------------------------------------------------------- BO


def hartmann_100d(X: torch.Tensor, dims: list[int]) -> torch.Tensor:
    from botorch.test_functions import Hartmann

    return -Hartmann(dim=6).to(X)(X[..., dims]).unsqueeze(-1)  # maximise -H6


def bo_run(method: str, seed: int, args, dims) -> dict:
    from botorch.acquisition.logei import qLogNoisyExpectedImprovement
    from botorch.models.transforms import Normalize, Standardize
    from botorch.optim import optimize_acqf
    from torch.quasirandom import SobolEngine

    from labo.laplace import Full, Kron, LastLayer, largest_variance
    from labo.surrogates import FitOptions, LaplaceModel, fit_laplace_model

    dt, d, dev = torch.float64, 100, torch.device(args.device)
    torch.set_num_threads(1)
    bounds = torch.stack([torch.zeros(d, dtype=dt), torch.ones(d, dtype=dt)]).to(dev)
    sobol = SobolEngine(d, scramble=True, seed=seed)
    X = sobol.draw(args.n_init).to(dt).to(dev)
    Y = hartmann_100d(X, dims)
    options = {
        "subnet-full": dict(
            weights=partial(largest_variance, n_weights=1000, noise_std=0.1), structure=Full()
        ),
        "last-layer": dict(weights=LastLayer()),
        "kron": dict(structure=Kron()),
    }
    opts = FitOptions(seed=seed)
    prev, fit_s, acq_s = None, [], []
    for _ in range(args.iters):
        if method == "sobol":
            x_new = sobol.draw(1).to(dt).to(dev)
        else:
            t0 = time.perf_counter()
            torch.manual_seed(seed)
            model = LaplaceModel(
                X, Y, input_transform=Normalize(d, bounds=bounds), outcome_transform=Standardize(1),
                warm_start=prev, **{"network": "mlp", **options[method]},
            )  # fmt: skip
            fit_laplace_model(model, opts)
            t1 = time.perf_counter()
            acq = qLogNoisyExpectedImprovement(model, X_baseline=X, prune_baseline=True)
            x_new, _ = optimize_acqf(
                acq, bounds, q=1, num_restarts=args.restarts, raw_samples=args.raw_samples,
                options={"maxiter": 50},
            )  # fmt: skip
            fit_s.append(t1 - t0)
            acq_s.append(time.perf_counter() - t1)
            prev = model
        X = torch.cat([X, x_new.detach()])
        Y = torch.cat([Y, hartmann_100d(x_new.detach(), dims)])
    best = torch.cummax(Y[:, 0], 0).values
    regret = (-best - HARTMANN_MIN).tolist()
    return {
        "method": method,
        "seed": seed,
        "final_regret": regret[-1],
        "regret": regret,
        "fit_s_mean": sum(fit_s) / len(fit_s) if fit_s else 0.0,
        "acq_s_mean": sum(acq_s) / len(acq_s) if acq_s else 0.0,
    }


def _bo_job(job) -> dict:
    method, seed, args, dims = job
    t0 = time.perf_counter()
    row = bo_run(method, seed, args, dims)
    row["wall_s"] = time.perf_counter() - t0
    return row


def _record(rows: list, row: dict, args) -> None:
    rows.append(row)
    out = {"env": environment(), "config": vars(args), "rows": rows, "complete": False}
    Path(BO_OUT).write_text(json.dumps(out, indent=1))  # partial results survive a kill
    print(
        f"seed {row['seed']} {row['method']:12s} final regret {row['final_regret']:.3f}  "
        f"fit {row['fit_s_mean']:.2f}s acq {row['acq_s_mean']:.2f}s per iteration "
        f"(wall {row['wall_s']:.0f}s)",
        flush=True,
    )


def run_bo(args) -> list[dict]:
    dims = sorted(torch.randperm(100, generator=torch.Generator().manual_seed(0))[:6].tolist())
    rows = []
    jobs = [(method, seed, args, dims) for seed in range(args.seeds) for method in args.methods]
    if args.jobs > 1:  # one process per run (spawned: CUDA-safe), one torch thread each
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor, as_completed

        with ProcessPoolExecutor(args.jobs, mp_context=mp.get_context("spawn")) as pool:
            for future in as_completed([pool.submit(_bo_job, job) for job in jobs]):
                _record(rows, future.result(), args)
    else:
        for job in jobs:
            _record(rows, _bo_job(job), args)
    print("| method | mean final regret | per seed | fit s/iter | acq s/iter |")
    print("|---|---|---|---|---|")
    for method in args.methods:
        rs = sorted((r for r in rows if r["method"] == method), key=lambda r: r["seed"])
        finals = [r["final_regret"] for r in rs]
        fit = sum(r["fit_s_mean"] for r in rs) / len(rs)
        acq = sum(r["acq_s_mean"] for r in rs) / len(rs)
        per_seed = ", ".join(f"{v:.3f}" for v in finals)
        print(f"| {method} | {sum(finals) / len(finals):.3f} | {per_seed} | {fit:.2f} | {acq:.2f} |")
    return rows


def environment() -> dict:
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "loadavg_at_start": os.getloadavg(),
        "argv": sys.argv,
    }


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        method, S, batch, cap = sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
        worker(method, S, batch, cap)
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=["scaling", "bo", "all"], default="all")
    parser.add_argument("--mem-cap-gb", type=float, default=3.0)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--n-init", type=int, default=20)
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--restarts", type=int, default=4)
    parser.add_argument("--raw-samples", type=int, default=256)
    parser.add_argument("--methods", nargs="+", default=["subnet-full", "last-layer", "kron", "sobol"])
    parser.add_argument("--device", default="cpu", help="cpu or cuda (BO part)")
    parser.add_argument("--jobs", type=int, default=1, help="BO runs in parallel processes")
    args = parser.parse_args()
    Path("benchmarks/results").mkdir(parents=True, exist_ok=True)
    if args.part in ("scaling", "all"):
        print("| S | method | fit s | predictive s | total s | peak extra MB | sum of variances |")
        print("|---|---|---|---|---|---|---|")
        rows = run_scaling(args)
        Path(SCALING_OUT).write_text(json.dumps({"env": environment(), "rows": rows}, indent=1))
    if args.part in ("bo", "all"):
        rows = run_bo(args)
        out = {"env": environment(), "config": vars(args), "rows": rows, "complete": True}
        Path(BO_OUT).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
