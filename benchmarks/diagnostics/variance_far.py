"""Predictive variance away from the data: LaplaceModel variants vs SingleTaskGP (issue 7 diagnosis).

The state of the first BO iteration of a suite problem: ``n`` scrambled-Sobol points of
the unit cube (seeds 0, 1, ...). Each surrogate is fitted on them; the script prints its
mean posterior variance, divided by the variance of the training targets, at the data,
at 256 other Sobol points and at 256 random corners of the cube, and its held-out
RMSE / std on 512 Sobol points, and its mean at the Sobol points and corners measured
from the best training target in units of the targets' standard deviation (``mean_lift``;
the true function's value there for reference) with the fraction of those points where
the mean exceeds the best observed value. A GP's variance is capped by its outputscale; a
linearised network's prior variance ``J(x) J(x)^T / lambda`` is not, which sends
qLogNEI to the corners (see ``benchmarks/bo_boundary.py``).

Variants: ``default`` (LaplaceModel as the runner builds it), ``per-tensor`` (one prior
precision per weight tensor), ``long`` (10x the MAP training steps, 4 rounds),
``per-tensor-long`` (both), ``sphere`` (inputs mapped to the unit sphere,
``(2x - 1, sqrt(d)) / ||.||``, before the default MLP), ``last-layer`` (LastLayer weights),
``lbfgs`` (MAP training by L-BFGS), ``ard`` (one prior precision per input for the
first layer, ``FitOptions(prior="ard")``), ``init-prior`` (the prior centred at the
network's initial weights, ``prior_mean="init"``), ``init-prior-per-tensor`` (with one
prior precision per tensor), ``init-prior-lbfgs`` (centred at the initial weights, MAP
training by L-BFGS), ``gp`` (SingleTaskGP, BoTorch defaults).

Run: ``python benchmarks/diagnostics/variance_far.py [--problem hartmann6_100d] [--n 20] [--seeds 2]
[--variants default,per-tensor,...] [--out benchmarks/results/variance_far.json]``
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from botorch.fit import fit_gpytorch_mll
from botorch.models import SingleTaskGP
from botorch.models.transforms import Standardize
from gpytorch.mlls import ExactMarginalLogLikelihood
from torch import nn
from torch.quasirandom import SobolEngine

from labo.bench import ProblemObjective, get_problem
from labo.laplace import LastLayer
from labo.surrogates import LaplaceModel, fit_laplace_model
from labo.surrogates.fit import FitOptions
from labo.surrogates.networks import default_network

VARIANTS = (
    "default",
    "per-tensor",
    "long",
    "per-tensor-long",
    "sphere",
    "last-layer",
    "lbfgs",
    "ard",
    "init-prior",
    "init-prior-per-tensor",
    "init-prior-lbfgs",
    "gp",
)
LONG = FitOptions(optimizer="adam", max_epochs_cold=20000, patience=100000, rounds_cold=4)


class Sphere(nn.Module):
    """``[0, 1]^d -> S^d``: ``z = (2x - 1, sqrt(d)) / ||(2x - 1, sqrt(d))||``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = torch.cat([2 * x - 1, torch.full_like(x[..., :1], x.shape[-1] ** 0.5)], -1)
        return z / z.norm(dim=-1, keepdim=True)


def fit_variant(variant: str, X: torch.Tensor, Y: torch.Tensor):
    d = X.shape[-1]
    if variant == "gp":
        gp = SingleTaskGP(X, Y, outcome_transform=Standardize(1))
        fit_gpytorch_mll(ExactMarginalLogLikelihood(gp.likelihood, gp))
        return gp
    kwargs: dict = {}
    if variant.startswith("init-prior"):
        kwargs["prior_mean"] = "init"
    if "per-tensor" in variant:
        kwargs["prior_precision"] = torch.ones(6, dtype=X.dtype)
    if variant == "sphere":
        kwargs["network"] = nn.Sequential(Sphere(), *default_network(d + 1, 1, dtype=X.dtype))
    if variant == "last-layer":
        kwargs["weights"] = LastLayer()
    model = LaplaceModel(X, Y, outcome_transform=Standardize(1), **{"network": "mlp", **kwargs})
    options = {"lbfgs": FitOptions(optimizer="lbfgs"), "ard": FitOptions(prior="ard")}.get(variant)
    if variant == "init-prior-lbfgs":
        options = FitOptions(optimizer="lbfgs")
    if variant.endswith("long"):
        options = LONG
    fit_laplace_model(model, options)
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problem", default="hartmann6_100d")
    parser.add_argument("--n", type=int, default=20)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument(
        "--out", default=str(Path(__file__).resolve().parents[1] / "results" / "variance_far.json")
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    problem = get_problem(args.problem)
    objective = ProblemObjective(args.problem)
    d = problem.bounds.shape[1]

    def f(U: torch.Tensor) -> torch.Tensor:
        X = problem.bounds[0] + U * (problem.bounds[1] - problem.bounds[0])
        return torch.tensor([objective(x.tolist()) for x in X], dtype=torch.float64).reshape(len(U), -1)[
            :, :1
        ]

    sobol = SobolEngine(d, scramble=True, seed=99).draw(256).double()
    corners = torch.randint(0, 2, (256, d), generator=torch.Generator().manual_seed(0)).double()
    X_test = SobolEngine(d, scramble=True, seed=98).draw(512).double()
    Y_test = f(X_test)
    rows = []
    for seed in range(args.seeds):
        X = SobolEngine(d, scramble=True, seed=seed).draw(args.n).double()
        Y = f(X)
        for variant in args.variants.split(","):
            if variant not in VARIANTS:
                raise SystemExit(f"unknown variant {variant!r}; choose from {', '.join(VARIANTS)}.")
            torch.manual_seed(seed)
            model = fit_variant(variant, X, Y)
            with torch.no_grad():
                var = [  # mean posterior variance / Var(y) at the data, Sobol points, corners
                    model.posterior(Z).variance.mean().item() / Y.var().item() for Z in (X, sobol, corners)
                ]
                mean = model.posterior(X_test).mean
                # The mean away from the data, in units of std(y) above the best observed y:
                # a positive value is a point the model expects to beat the incumbent.
                lift = [((model.posterior(Z).mean - Y.max()) / Y.std()).squeeze(-1) for Z in (sobol, corners)]
            true_lift = [((f(Z) - Y.max()) / Y.std()).squeeze(-1) for Z in (sobol, corners)]
            rmse = ((mean - Y_test).pow(2).mean().sqrt() / Y_test.std()).item()
            row = {
                "problem": args.problem, "n": args.n, "seed": seed, "variant": variant,
                "var_at_data": var[0], "var_at_sobol": var[1], "var_at_corners": var[2],
                "heldout_rmse_over_std": rmse,
                "mean_lift_sobol": lift[0].mean().item(), "mean_lift_corners": lift[1].mean().item(),
                "frac_above_best_sobol": (lift[0] > 0).double().mean().item(),
                "frac_above_best_corners": (lift[1] > 0).double().mean().item(),
                "true_lift_sobol": true_lift[0].mean().item(),
                "true_lift_corners": true_lift[1].mean().item(),
            }  # fmt: skip
            if variant != "gp":
                prior = model.laplace.prior_precision.detach().flatten()
                row["prior_precision"] = prior.tolist() if prior.numel() < 1000 else prior.unique().tolist()
                row["noise_std"] = float(model.laplace.noise_std)
            rows.append(row)
            print(
                f"seed {seed} {variant:16s} variance / Var(y): data {var[0]:.3f}  Sobol {var[1]:.3f}  "
                f"corners {var[2]:.3f}  held-out RMSE/std {rmse:.3f}  "
                f"mean - best (std): Sobol {lift[0].mean():.2f} (true {true_lift[0].mean():.2f}), "
                f"corners {lift[1].mean():.2f} (true {true_lift[1].mean():.2f}); "
                f"above best: Sobol {(lift[0] > 0).double().mean():.2f}, "
                f"corners {(lift[1] > 0).double().mean():.2f}",
                flush=True,
            )
            Path(args.out).write_text(json.dumps(rows, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
