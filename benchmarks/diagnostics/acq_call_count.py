"""How many qLogNEI calls L-BFGS-B needs, per surrogate variant (issue 9).

The default model's acquisition time on the GPU is its number of acquisition calls
times 12-15 ms, and that number is 2-7x the GP's. This script tests whether a change
of the surrogate brings the count down, on the synthetic d = 100 objective of
``bo_iteration.py``, one BO iteration per seed (fit, qLogNEI with
``prune_baseline=True``, q = 4, 10 restarts, 512 raw samples; L-BFGS-B as one joint
problem over the restarts, as BoTorch 0.18 runs it on SciPy >= 1.18):

- ``LM``: the default LaplaceModel (Kron, all weights, tanh MLP d-64-64-1);
- ``LM-noW1``: every weight but the first layer's weight matrix is Bayesian (Full),
  so the predictive variance depends on x only through the bounded tanh features and
  no longer grows quadratically towards the corners of the box;
- ``LM-silu``: the default with SiLU activations instead of tanh (no saturation);
- ``LM-rbf``: ``LaplaceModel(network="rbf")``, Gaussian RBF features around learnable
  centres (``labo.surrogates.networks.rbf_network``), so the mean flattens away from
  the data;
- ``LM-sin``, ``LM-gauss``: the first hidden layer's activation is ``sin`` or
  ``exp(-z²)``, bounded and not monotone, so the features do not reach their extremes
  in the corners of the box (the second stays tanh);
- ``GP``: SingleTaskGP, the baseline, in the same run.

Per run it records the calls, the seconds, the baseline rows qLogNEI keeps, the share
of candidate coordinates on a bound, and how far below its final value the best
restart's qLogNEI was after 50, 100, ... L-BFGS-B steps (what capping ``maxiter``
would give up).

Run: ``PYTHONPATH=.:benchmarks python benchmarks/diagnostics/acq_call_count.py [--n 1000] [--seeds 0,1,2,3]
[--methods LM,LM-noW1,LM-silu,LM-sin,LM-gauss,LM-rbf,GP] [--out benchmarks/results/acq_call_count.json]``
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from functools import partial
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bo_iteration
sys.path.insert(0, str(Path(__file__).resolve().parent))  # sibling diagnostics
from bo_iteration import objective  # noqa: E402

METHODS = ("LM", "LM-noW1", "LM-silu", "LM-sin", "LM-gauss", "LM-rbf", "GP")
CAPS = (50, 100, 200, 300, 500, 1000)


class Sin(nn.Module):
    def forward(self, x):
        return torch.sin(x)


class Gauss(nn.Module):
    def forward(self, x):
        return torch.exp(-x.pow(2))


# the first hidden layer's activation (SiLU: both hidden layers)
ACTIVATIONS = {"LM-silu": nn.SiLU, "LM-sin": Sin, "LM-gauss": Gauss}


def fit(method: str, X, Y):
    from botorch.models.transforms import Normalize, Standardize

    d = X.shape[-1]
    if method == "GP":
        from botorch.fit import fit_gpytorch_mll
        from botorch.models import SingleTaskGP
        from gpytorch.mlls import ExactMarginalLogLikelihood

        model = SingleTaskGP(X, Y, input_transform=Normalize(d), outcome_transform=Standardize(1))
        fit_gpytorch_mll(ExactMarginalLogLikelihood(model.likelihood, model))
        return model
    from labo.laplace import by_module
    from labo.surrogates import LaplaceModel, fit_laplace_model

    kwargs = {}
    if method == "LM-noW1":
        kwargs["weights"] = partial(by_module, names=["0.bias", "2", "4"])
    elif method in ACTIVATIONS:
        act = ACTIVATIONS[method]
        layers = [nn.Linear(d, 64), act(), nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 1)]
        if method == "LM-silu":
            layers[3] = nn.SiLU()
        kwargs["network"] = nn.Sequential(*layers).to(X)
    elif method == "LM-rbf":
        kwargs["network"] = "rbf"
    elif method != "LM":
        raise ValueError(f"unknown method {method!r}; expected one of {METHODS}.")
    model = LaplaceModel(
        X, Y, input_transform=Normalize(d), outcome_transform=Standardize(1), **{"network": "mlp", **kwargs}
    )
    fit_laplace_model(model)
    return model


def run_one(method: str, n: int, d: int, seed: int) -> dict:
    import botorch.generation.gen as gen
    from botorch.acquisition import qLogNoisyExpectedImprovement
    from botorch.optim import optimize_acqf

    gen.SCIPY_UNTESTED_VERSION = 0  # one joint L-BFGS-B problem, as on SciPy >= 1.18
    torch.manual_seed(seed)
    X = torch.rand(n, d, dtype=torch.float64)
    Y = objective(X)
    t0 = time.perf_counter()
    model = fit(method, X, Y)
    fit_s = time.perf_counter() - t0
    acqf = qLogNoisyExpectedImprovement(model, X_baseline=X, prune_baseline=True)
    calls, best = [0], []
    forward = acqf.forward

    def counted(Xc):
        calls[0] += 1
        value = forward(Xc)
        if Xc.shape[0] == 10:  # a joint L-BFGS-B step over the 10 restarts
            best.append(float(value.detach().max()))
        return value

    acqf.forward = counted
    bounds = torch.stack([torch.zeros(d), torch.ones(d)]).to(X)
    torch.manual_seed(seed)
    t0 = time.perf_counter()
    cand, _ = optimize_acqf(
        acqf, bounds=bounds, q=4, num_restarts=10, raw_samples=512, return_best_only=False
    )
    row = {
        "method": method,
        "n": n,
        "d": d,
        "seed": seed,
        "calls": calls[0],
        "fit_s": fit_s,
        "acq_s": time.perf_counter() - t0,
        "baseline_rows": int(acqf.X_baseline.shape[0]),
        "on_bound": float(((cand <= 1e-6) | (cand >= 1 - 1e-6)).double().mean()),
        # the best restart's qLogNEI after k L-BFGS-B steps minus its final value: what a
        # cap of k iterations (options={"maxiter": k}) would give up
        "best_gap_after": {k: best[k - 1] - best[-1] for k in CAPS if k <= len(best)},
    }
    if hasattr(model, "laplace"):
        row["prior_precision"] = float(model.laplace.prior_precision.mean())
        row["noise_std_z"] = float(model.laplace.noise_std)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--d", type=int, default=100)
    parser.add_argument("--seeds", default="0,1,2,3")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default="benchmarks/results/acq_call_count.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    seeds = [int(s) for s in args.seeds.split(",")]
    rows = []
    for method in args.methods.split(","):
        for seed in seeds:
            row = run_one(method, args.n, args.d, seed)
            rows.append(row)
            print(json.dumps(row), flush=True)
            Path(args.out).write_text(json.dumps({"rows": rows}, indent=1))
    summary = {}
    for method in args.methods.split(","):
        counts = [r["calls"] for r in rows if r["method"] == method]
        summary[method] = {"calls": counts, "median_calls": statistics.median(counts)}
        print(f"{method:8s} calls {counts} median {statistics.median(counts)}")
    result = {"rows": rows, "summary": summary, "torch": torch.__version__}
    Path(args.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
