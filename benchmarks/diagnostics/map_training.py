"""Surrogate fit quality by MAP optimiser: LaplaceModel with Adam vs L-BFGS vs SingleTaskGP.

Each surrogate is fitted on ``n`` scrambled-Sobol points of a suite problem's unit cube
(seeds 0, 1, ...) and scored, in standardised target units (the training targets'
mean and standard deviation), on 2000 other Sobol points: held-out RMSE, Gaussian
negative log predictive density (NLL, latent variance), the fraction of held-out
targets within two predictive standard deviations, the median predictive standard
deviation, the tuned noise standard deviation and the fit's seconds. Side by side in
one run, one torch thread.

Variants: ``adam`` (``FitOptions(optimizer="adam")``, the default before L-BFGS),
``lbfgs`` (``FitOptions(optimizer="lbfgs")``), ``ard`` (Adam, one prior precision per
input for the first layer: ``FitOptions(prior="ard")``), ``gp`` (SingleTaskGP with BoTorch's defaults).

Run: ``python benchmarks/diagnostics/map_training.py [--problem branin] [--ns 20,40] [--seeds 3]
[--variants adam,lbfgs,gp] [--out benchmarks/results/map_training_<problem>.json]``
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch
from botorch.fit import fit_gpytorch_mll
from botorch.models import SingleTaskGP
from botorch.models.transforms import Standardize
from gpytorch.mlls import ExactMarginalLogLikelihood
from torch.quasirandom import SobolEngine

from labo.bench import get_problem
from labo.surrogates import LaplaceModel, fit_laplace_model
from labo.surrogates.fit import FitOptions

VARIANTS = ("adam", "lbfgs", "ard", "gp")


def fit_variant(variant: str, X: torch.Tensor, Y: torch.Tensor):
    """The fitted surrogate and its tuned noise std (standardised units)."""
    if variant == "gp":
        gp = SingleTaskGP(X, Y, outcome_transform=Standardize(1))
        fit_gpytorch_mll(ExactMarginalLogLikelihood(gp.likelihood, gp))
        return gp, float(gp.likelihood.noise.detach().sqrt())
    if variant not in VARIANTS:
        raise SystemExit(f"unknown variant {variant!r}; choose from {', '.join(VARIANTS)}")
    model = LaplaceModel(X, Y, network="mlp", outcome_transform=Standardize(1))
    fit_laplace_model(model, FitOptions(prior="ard") if variant == "ard" else FitOptions(optimizer=variant))
    return model, float(model.fit_info["noise_std"].mean())


def score(model, X_test: torch.Tensor, Y_test: torch.Tensor, mu: float, sd: float) -> dict:
    with torch.no_grad():
        post = model.posterior(X_test)
        mean, var = post.mean.squeeze(-1), post.variance.squeeze(-1)
    r = (Y_test.squeeze(-1) - mean) / sd
    v = var / sd**2
    return {
        "test_rmse": float(r.pow(2).mean().sqrt()),
        "nll": float((0.5 * r.pow(2) / v + 0.5 * torch.log(2 * math.pi * v)).mean()),
        "within_2sd": float((r.abs() < 2 * v.sqrt()).double().mean()),
        "median_sd": float(v.sqrt().median()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--problem", default="branin")
    parser.add_argument("--ns", default="20,40")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    problem = get_problem(args.problem)
    lo, hi = problem.bounds[0], problem.bounds[1]
    d = problem.dim
    X_test = SobolEngine(d, scramble=True, seed=999).draw(2000).double()
    Y_test = problem.function(lo + X_test * (hi - lo))
    rows = []
    for n in (int(v) for v in args.ns.split(",")):
        for variant in args.variants.split(","):
            runs = []
            for seed in range(args.seeds):
                X = SobolEngine(d, scramble=True, seed=seed).draw(n).double()
                Y = problem.function(lo + X * (hi - lo))
                t0 = time.perf_counter()
                model, noise = fit_variant(variant, X, Y)
                seconds = time.perf_counter() - t0
                s = score(model, X_test, Y_test, float(Y.mean()), float(Y.std()))
                runs.append({**s, "noise_std": noise, "seconds": seconds})
            mean = {k: sum(r[k] for r in runs) / len(runs) for k in runs[0]}
            rows.append({"problem": args.problem, "n": n, "variant": variant, "seeds": args.seeds, **mean})
            print(
                f"{args.problem} n={n:4d} {variant:6s} " + " ".join(f"{k}={v:.3g}" for k, v in mean.items()),
                flush=True,
            )
    out = Path(args.out or f"benchmarks/results/map_training_{args.problem}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"config": vars(args), "rows": rows}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
