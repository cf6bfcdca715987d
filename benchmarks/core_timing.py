"""Timing of fit_laplace + predictive per structure and subset (issue: Laplace core).

A 2-hidden-layer MLP of width 50 (10-50-50-1, P = 3151 weights), n = 1000 training
points with d = 10. For each structure x subset: the time of ``fit_laplace``
(curvature), of one marginal-likelihood evaluation, of ``predictive`` (joint
covariance) on 100 test points and of ``predictive_variance`` on 1000, each the
median of several runs after a warm-up. Prints a table and writes JSON.

Run: ``.venv/bin/python benchmarks/core_timing.py [--out benchmarks/results/core_timing.json]``
"""

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch
from torch import nn

from labo.laplace import AllWeights, Diagonal, Full, Kron, LastLayer, fit_laplace


def median_time(fn, repeats=5):
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/results/core_timing.json")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.manual_seed(0)
    dtype = torch.float64
    net = nn.Sequential(nn.Linear(10, 50), nn.Tanh(), nn.Linear(50, 50), nn.Tanh(), nn.Linear(50, 1)).to(
        dtype
    )
    X = torch.randn(1000, 10, dtype=dtype)
    Y = torch.sin(X.sum(-1, keepdim=True))
    X_joint = torch.randn(100, 10, dtype=dtype)
    X_var = torch.randn(1000, 10, dtype=dtype)
    rows = []
    for weights in (AllWeights(), LastLayer()):
        for structure in (Full(), Diagonal(), Kron()):
            kw = dict(weights=weights, structure=structure, prior_precision=1.0, noise_std=0.1)
            la = fit_laplace(net, X, Y, **kw)
            t_fit = median_time(lambda kw=kw: fit_laplace(net, X, Y, **kw), args.repeats)

            def lml(la=la):
                la._cache = None
                la.log_marginal_likelihood()

            t_lml = median_time(lml, args.repeats)
            la.predictive(X_joint)  # factorise once (cached, as in use)
            t_pred = median_time(lambda la=la: la.predictive(X_joint), args.repeats)
            t_var = median_time(lambda la=la: la.predictive_variance(X_var), args.repeats)
            row = {
                "weights": repr(weights),
                "structure": repr(structure),
                "n_weights": la.n_weights,
                "fit_s": t_fit,
                "lml_s": t_lml,
                "predictive_joint_100_s": t_pred,
                "predictive_variance_1000_s": t_var,
            }
            rows.append(row)
            print(
                f"{row['weights']:13} {row['structure']:11} S={row['n_weights']:5d}  "
                f"fit {t_fit * 1e3:8.1f} ms  lml {t_lml * 1e3:7.1f} ms  "
                f"predictive(100, joint) {t_pred * 1e3:7.1f} ms  variance(1000) {t_var * 1e3:7.1f} ms"
            )
    result = {
        "benchmark": "core_timing",
        "network": "MLP 10-50-50-1 (tanh), float64",
        "n_train": 1000,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "machine": platform.processor() or platform.machine(),
        "rows": rows,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
