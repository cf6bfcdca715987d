"""Held-out NLPD of the rff network's evidence options against the default and the GP.

For each problem, seed and n: n scrambled-Sobol points, then every variant fitted to
them (paired) and scored by the NLPD of the observations at 500 other Sobol points.
Variants: the default (the features' evidence, prior precision tuned), ``pin1``
(``FitOptions(evidence_prior_precision=1.0)``), ``kernel`` (``evidence="kernel"``),
``kernel-pin1`` (both) and SingleTaskGP. Prints one line per data set and the paired
mean ± s.e. against the default; writes ``benchmarks/results/evidence_grid_<problem>.json``.

    PYTHONPATH=. .venv/bin/python benchmarks/diagnostics/evidence_grid.py hartmann6_100d 0,1,2 40,100
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from botorch.fit import fit_gpytorch_mll
from botorch.models import SingleTaskGP
from botorch.models.transforms import Standardize
from gpytorch.mlls import ExactMarginalLogLikelihood
from torch.quasirandom import SobolEngine

from labo.bench.problems import get_problem
from labo.surrogates import FitOptions, LaplaceModel, fit_laplace_model

VARIANTS = {
    "default": FitOptions(),
    "pin1": FitOptions(evidence_prior_precision=1.0),
    "kernel": FitOptions(evidence="kernel"),
    "kernel-pin1": FitOptions(evidence="kernel", evidence_prior_precision=1.0),
}


def main() -> None:
    torch.set_default_dtype(torch.float64)
    torch.set_num_threads(1)
    name, seeds, sizes = sys.argv[1], sys.argv[2].split(","), sys.argv[3].split(",")
    problem = get_problem(name)
    lo, hi = problem.bounds[0], problem.bounds[1]
    d = lo.shape[-1]

    def f(U):
        return problem.function(lo + (hi - lo) * U).reshape(-1)

    Xt = SobolEngine(d, scramble=True, seed=99).draw(500).double()
    Yt = f(Xt)

    def nlpd(model) -> float:
        with torch.no_grad():
            post = model.posterior(Xt, observation_noise=True)
            mu, var = post.mean.reshape(-1), post.variance.reshape(-1)
        return float((0.5 * torch.log(2 * torch.pi * var) + 0.5 * (Yt - mu) ** 2 / var).mean())

    rows = []
    for seed in map(int, seeds):
        for n in map(int, sizes):
            X = SobolEngine(d, scramble=True, seed=seed).draw(n).double()
            Y = f(X).unsqueeze(-1)
            gp = SingleTaskGP(X, Y, outcome_transform=Standardize(1))
            fit_gpytorch_mll(ExactMarginalLogLikelihood(gp.likelihood, gp))
            row = {"seed": seed, "n": n, "gp": nlpd(gp)}
            for variant, options in VARIANTS.items():
                model = LaplaceModel(X, Y, outcome_transform=Standardize(1))
                row[variant] = nlpd(fit_laplace_model(model, options))
            rows.append(row)
            print({k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()}, flush=True)
    summary = {}
    for key in [*VARIANTS, "gp"]:
        diffs = [r[key] - r["default"] for r in rows]
        mean = sum(diffs) / len(diffs)
        se = (sum((x - mean) ** 2 for x in diffs) / max(len(diffs) - 1, 1) / len(diffs)) ** 0.5
        summary[key] = {"nlpd": sum(r[key] for r in rows) / len(rows), "vs_default": mean, "se": se}
        print(f"{name} {key:12s} NLPD {summary[key]['nlpd']:.3f}  vs default {mean:+.3f} ± {se:.3f}")
    out = Path(__file__).parents[1] / "results" / f"evidence_grid_{name}.json"
    out.write_text(json.dumps({"problem": name, "rows": rows, "summary": summary}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
