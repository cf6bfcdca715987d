"""Cost of one qLogNEI call (value and input gradient) with the lengthscale average against
the MAP-II lengthscales alone, as the training rows grow (d = 20, 10 restarts x q = 4).

The average evaluates 16 member posteriors; once their ``n x n`` solves dominate, a call
costs up to 16 times the MAP-II posterior's. This is what sets
``FitOptions.lengthscale_samples_max_rows``. The average is forced at every n here
(``lengthscale_samples_max_rows=None``).

    PYTHONPATH=. OMP_NUM_THREADS=1 python benchmarks/diagnostics/acq_call_cost_lsavg.py \
        --out benchmarks/results/acq_call_cost_lsavg.json
"""

from __future__ import annotations

import argparse
import json
import time
import warnings

import torch
from botorch.acquisition import qLogNoisyExpectedImprovement
from botorch.models.transforms import Normalize, Standardize

from labo.surrogates import FitOptions, LaplaceModel, fit_laplace_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="50,100,200,300,500")
    parser.add_argument("--dim", type=int, default=20)
    parser.add_argument("--calls", type=int, default=20)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    d, rows = args.dim, []
    variants = {
        "avg": FitOptions(lengthscale_samples_max_rows=None),
        "map": FitOptions(lengthscale_samples=0),
    }
    for n in [int(v) for v in args.sizes.split(",")]:
        torch.manual_seed(0)
        X = torch.rand(n, d, dtype=torch.float64)
        Y = torch.sin(5 * X).sum(-1, keepdim=True) + 0.3 * X.pow(2).sum(-1, keepdim=True)
        row = {"n": n, "d": d}
        for name, opts in variants.items():
            model = LaplaceModel(X, Y, input_transform=Normalize(d), outcome_transform=Standardize(1))
            fit_laplace_model(model, opts)
            acq = qLogNoisyExpectedImprovement(model, X_baseline=X, prune_baseline=True)
            Xc = torch.rand(10, 4, d, dtype=torch.float64, requires_grad=True)
            for _ in range(2):  # warm-up
                acq(Xc).sum().backward()
            t0 = time.perf_counter()
            for _ in range(args.calls):
                acq(Xc).sum().backward()
            row[f"{name}_ms"] = 1000 * (time.perf_counter() - t0) / args.calls
            row[f"{name}_baseline"] = acq.X_baseline.shape[0]
        row["ratio"] = row["avg_ms"] / row["map_ms"]
        print(row, flush=True)
        rows.append(row)
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"config": vars(args), "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
