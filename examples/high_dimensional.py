"""A 120-dimensional problem: SingleTaskGP and LaplaceModel side by side, with timings.

The objective has 120 inputs but varies along 8 random directions only (a sum
of sines of 8 projections, with a quadratic penalty), the usual shape of "high
dimensional" BO problems. For each training set size n, both surrogates are
fitted on the same uniform random points and measured on the same tasks:

* ``fit``: SingleTaskGP by ``fit_gpytorch_mll`` (ARD kernel: 120 lengthscales);
  LaplaceModel by ``fit_laplace_model`` from scratch (cold), and
* ``refit``: after 4 more points arrive, SingleTaskGP refitted from scratch
  (as BoTorch does), LaplaceModel warm-started from the previous model;
* ``posterior``: mean and variance at 1000 new points;
* ``acq``: one ``optimize_acqf`` of qLogNoisyExpectedImprovement (q=4);
* held-out RMSE and log likelihood (noise included) on 500 points, and the
  best objective value among the 4 candidates.

Timings depend on the machine and its load (printed numbers are one run each,
not medians); see docs/benchmarks.md for the measured BO-iteration benchmark.

Run: ``python examples/high_dimensional.py [--sizes 300,1500] [--d 120]``
(``--smoke`` for a quick check with n=60, ``--out DIR`` to write a JSON,
``--device cuda`` to put data and models on a GPU: everything labo creates
follows the device of the training data).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch
from botorch.acquisition import qLogNoisyExpectedImprovement
from botorch.fit import fit_gpytorch_mll
from botorch.models import SingleTaskGP
from botorch.models.transforms import Normalize, Standardize
from botorch.optim import optimize_acqf
from gpytorch.mlls import ExactMarginalLogLikelihood

from labo.surrogates import LaplaceModel, fit_laplace_model


def make_objective(d: int, k: int = 8):
    W = torch.randn(d, k, generator=torch.Generator().manual_seed(123), dtype=torch.float64) / d**0.5

    def objective(X):
        Z = (X - 0.5) @ W.to(X) * 6
        return (torch.sin(Z).sum(-1) - 0.1 * Z.pow(2).sum(-1)).unsqueeze(-1)

    return objective


def fit(kind: str, X, Y, previous=None):
    d = X.shape[-1]
    transforms = dict(input_transform=Normalize(d), outcome_transform=Standardize(1))
    if kind == "SingleTaskGP":
        model = SingleTaskGP(X, Y, **transforms)
        fit_gpytorch_mll(ExactMarginalLogLikelihood(model.likelihood, model))
    else:
        model = fit_laplace_model(LaplaceModel(X, Y, warm_start=previous, **transforms))
    return model


def timed(fn, device: torch.device):
    synchronize(device)
    t0 = time.perf_counter()
    out = fn()
    synchronize(device)
    return out, time.perf_counter() - t0


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run(kind: str, n: int, d: int, objective, restarts: int, raw: int, device: torch.device) -> dict:
    g = torch.Generator().manual_seed(n)
    X = torch.rand(n + 4, d, generator=g, dtype=torch.float64).to(device)
    X_new = torch.rand(1000, d, generator=g, dtype=torch.float64).to(device)
    X_test, Y_all = X_new[:500], objective(X)
    Y_test = objective(X_test)
    model, fit_s = timed(lambda: fit(kind, X[:n], Y_all[:n]), device)
    model, refit_s = timed(lambda: fit(kind, X, Y_all, previous=model), device)

    def posterior():
        with torch.no_grad():
            post = model.posterior(X_new.unsqueeze(-2))  # 1000 t-batches of one point
            return post.mean, post.variance

    _, post_s = timed(posterior, device)
    with torch.no_grad():
        post = model.posterior(X_test.unsqueeze(-2), observation_noise=True)
        mean, var = post.mean.squeeze(-2), post.variance.squeeze(-2)
    rmse = float((mean - Y_test).pow(2).mean().sqrt())
    ll = float((-0.5 * (math.log(2 * math.pi) + var.log() + (Y_test - mean).pow(2) / var)).mean())
    bounds = torch.stack([torch.zeros(d), torch.ones(d)]).to(X)
    acqf = qLogNoisyExpectedImprovement(model, X_baseline=X, prune_baseline=True)
    (cand, _), acq_s = timed(
        lambda: optimize_acqf(acqf, bounds, q=4, num_restarts=restarts, raw_samples=raw), device
    )
    return {
        "surrogate": kind,
        "n": n,
        "d": d,
        "device": str(device),
        "fit_s": fit_s,
        "refit_s": refit_s,
        "posterior_1000_s": post_s,
        "acq_s": acq_s,
        "test_rmse": rmse,
        "test_ll": ll,
        "best_train": float(Y_all.max()),
        "best_candidate": float(objective(cand).max()),
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="n=60, tiny acquisition budget (a CI check)")
    parser.add_argument("--sizes", default="300,1500", help="comma-separated training set sizes n")
    parser.add_argument("--d", type=int, default=120)
    parser.add_argument("--device", default="cpu", help="torch device of the data and models, e.g. cuda")
    parser.add_argument("--out", type=Path, default=None, help="directory for high_dimensional.json")
    args = parser.parse_args(argv)
    sizes = [60] if args.smoke else [int(s) for s in args.sizes.split(",")]
    restarts, raw = (2, 32) if args.smoke else (10, 512)
    objective = make_objective(args.d)
    device = torch.device(args.device)
    print(f"d={args.d} inputs, 8 active directions, device {device}; one run each (seconds)")
    print(f"{'surrogate':13} {'n':>5} {'fit':>7} {'refit':>7} {'post 1000':>9} {'acq':>7} "
          f"{'RMSE':>6} {'test ll':>8} {'best train':>10} {'best cand':>9}")  # fmt: skip
    rows = []
    for n in sizes:
        for kind in ("LaplaceModel", "SingleTaskGP"):
            r = run(kind, n, args.d, objective, restarts, raw, device)
            rows.append(r)
            print(
                f"{kind:13} {n:5d} {r['fit_s']:7.2f} {r['refit_s']:7.2f} {r['posterior_1000_s']:9.3f} "
                f"{r['acq_s']:7.2f} {r['test_rmse']:6.3f} {r['test_ll']:8.3f} {r['best_train']:10.3f} "
                f"{r['best_candidate']:9.3f}"
            )
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        path = args.out / "high_dimensional.json"
        path.write_text(json.dumps(rows, indent=1))
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
