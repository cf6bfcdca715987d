"""qLogNEI with and without BoTorch's cached baseline root, per surrogate (issue 23).

BoTorch's ``qLogNoisyExpectedImprovement(cache_root=True)`` (its default for every
``GPyTorchModel``) factors the baseline's joint posterior covariance once and updates
that root for each candidate batch. This script measures, for the default
``LaplaceModel`` and SingleTaskGP on the same data, what the cached root changes in one
``optimize_acqf`` (q = 4, 10 restarts, 512 raw samples, L-BFGS-B as one joint problem):
the number of acquisition evaluations, the seconds, and the value of the returned batch
under one common, independent estimate (qLogNEI with 4096 fresh samples, no cached root).
Data: ``n`` points of a ``d``-dimensional bowl, 60 % Sobol and 40 % around its
optimum (as a BO run's data are concentrated), float64.

Run (writes ``benchmarks/results/acq_cache_root.json``)::

    PYTHONPATH=. .venv/bin/python benchmarks/diagnostics/acq_cache_root.py \
        --cases 2:20,6:50,20:100 --seeds 1,2
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from botorch.acquisition.logei import qLogNoisyExpectedImprovement
from botorch.fit import fit_gpytorch_mll
from botorch.models import SingleTaskGP
from botorch.models.transforms import Standardize
from botorch.optim import optimize_acqf
from botorch.sampling import SobolQMCNormalSampler
from gpytorch.mlls import ExactMarginalLogLikelihood
from torch.quasirandom import SobolEngine

from labo.surrogates import LaplaceModel, fit_laplace_model

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bo_iteration
from bo_iteration import count_calls  # noqa: E402


def bowl(X):
    return -((X - 0.37) ** 2).sum(-1, keepdim=True)


def data(d: int, n: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    n_local = int(0.4 * n)
    A = SobolEngine(d, scramble=True, seed=seed).draw(n - n_local).double()
    B = (0.37 + 0.1 * torch.randn(n_local, d, generator=g, dtype=torch.float64)).clamp(0, 1)
    X = torch.cat([A, B])
    return X, bowl(X)


def one(model, X, cache_root: bool, seed: int):
    acqf = qLogNoisyExpectedImprovement(model, X_baseline=X, prune_baseline=True, cache_root=cache_root)
    calls = count_calls(acqf)
    torch.manual_seed(seed)
    t0 = time.perf_counter()
    bounds = torch.stack([torch.zeros(X.shape[-1]), torch.ones(X.shape[-1])]).to(X)
    cand, _ = optimize_acqf(acqf, bounds=bounds, q=4, num_restarts=10, raw_samples=512)
    return cand.detach(), calls[0], time.perf_counter() - t0


def judge(model, X, cand) -> float:
    sampler = SobolQMCNormalSampler(torch.Size([4096]), seed=12345)
    acqf = qLogNoisyExpectedImprovement(model, X_baseline=X, sampler=sampler, cache_root=False)
    with torch.no_grad():
        return float(acqf(cand.unsqueeze(0)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default="2:20,6:50,20:100")
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="benchmarks/results/acq_cache_root.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for case in args.cases.split(","):
        d, n = map(int, case.split(":"))
        for seed in map(int, args.seeds.split(",")):
            X, Y = data(d, n, seed)
            gp = SingleTaskGP(X, Y, outcome_transform=Standardize(1))
            fit_gpytorch_mll(ExactMarginalLogLikelihood(gp.likelihood, gp))
            lm = fit_laplace_model(LaplaceModel(X, Y, outcome_transform=Standardize(1)))
            for label, model in (("laplace", lm), ("gp", gp)):
                for cache_root in (True, False):
                    cand, calls, seconds = one(model, X, cache_root, seed)
                    row = {"d": d, "n": n, "seed": seed, "model": label, "cache_root": cache_root,
                           "calls": calls, "seconds": seconds, "value": judge(model, X, cand)}  # fmt: skip
                    rows.append(row)
                    print(
                        f"d={d:3d} n={n:4d} seed={seed} {label:8s} cache_root={cache_root!s:5s} "
                        f"calls={calls:5d} {seconds:7.2f} s  value={row['value']:.5f}",
                        flush=True,
                    )
    summary = {}
    for label in ("laplace", "gp"):
        for cache_root in (True, False):
            sel = [r for r in rows if r["model"] == label and r["cache_root"] == cache_root]
            summary[f"{label} cache_root={cache_root}"] = {
                "calls": statistics.mean(r["calls"] for r in sel),
                "seconds": statistics.mean(r["seconds"] for r in sel),
            }
    print(json.dumps(summary, indent=1))
    Path(args.out).write_text(json.dumps({"cases": args.cases, "rows": rows, "summary": summary}, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
