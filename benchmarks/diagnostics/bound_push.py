"""What pushes the chosen candidates onto the box's bounds: the mean or the variance? (issue 9)

The default LaplaceModel's qLogNEI candidates end with 23-41 % of their coordinates on
a bound, the GP's with 0-1.4 % (``acq_call_count.py``); L-BFGS-B spends many of its
steps walking coordinates out. For one BO iteration per seed on the d = 100 objective
of ``bo_iteration.py`` (n = 1000, qLogNEI with ``prune_baseline=True``, q = 4, 10
restarts, 512 raw samples, L-BFGS-B as one joint problem), this script takes the
chosen candidates and, for every coordinate on a bound, the outward slope of the
posterior mean and of the posterior standard deviation at that point (in target
standard deviations per unit of the input). It reports the share of bound coordinates
each one pushes outward, their median sizes, and the posterior mean and standard
deviation at the candidates next to the best observed value.

Run: ``PYTHONPATH=.:benchmarks python benchmarks/diagnostics/bound_push.py [--methods LM,GP] [--seeds 0,1,2,3]
[--out benchmarks/results/bound_push.json]``
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bo_iteration
sys.path.insert(0, str(Path(__file__).resolve().parent))  # sibling diagnostics
from acq_call_count import fit  # noqa: E402
from bo_iteration import objective  # noqa: E402


def run_one(method: str, seed: int, n: int = 1000, d: int = 100) -> dict:
    import botorch.generation.gen as gen
    from botorch.acquisition import qLogNoisyExpectedImprovement
    from botorch.optim import optimize_acqf

    gen.SCIPY_UNTESTED_VERSION = 0  # one joint L-BFGS-B problem, as on SciPy >= 1.18
    torch.manual_seed(seed)
    X = torch.rand(n, d, dtype=torch.float64)
    Y = objective(X)
    model = fit(method, X, Y)
    acqf = qLogNoisyExpectedImprovement(model, X_baseline=X, prune_baseline=True)
    bounds = torch.stack([torch.zeros(d), torch.ones(d)]).to(X)
    torch.manual_seed(seed)
    cand, _ = optimize_acqf(acqf, bounds=bounds, q=4, num_restarts=10, raw_samples=512)
    x = cand.detach().clone().requires_grad_(True)
    post = model.posterior(x.unsqueeze(-2))  # the q points one by one
    mean = post.mean.reshape(-1)
    sd = post.variance.sqrt().reshape(-1)
    (g_mean,) = torch.autograd.grad(mean.sum(), x, retain_graph=True)
    (g_sd,) = torch.autograd.grad(sd.sum(), x)
    low, high = cand <= 1e-6, cand >= 1 - 1e-6
    outward = high.double() - low.double()
    on = low | high
    y_mean, y_std = Y.mean(), Y.std()
    mean_out, sd_out = (g_mean * outward)[on] / y_std, (g_sd * outward)[on] / y_std
    row = {"method": method, "seed": seed, "on_bound": float(on.double().mean())}
    if on.any():
        row.update(
            mean_pushes_out=float((mean_out > 0).double().mean()),
            sd_pushes_out=float((sd_out > 0).double().mean()),
            median_abs_mean_slope=float(mean_out.abs().median()),
            median_abs_sd_slope=float(sd_out.abs().median()),
        )
    row.update(
        candidate_mean=((mean.detach() - y_mean) / y_std).tolist(),
        candidate_sd=(sd.detach() / y_std).tolist(),
        best_observed=float((Y.max() - y_mean) / y_std),
    )
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--methods", default="LM,GP")
    parser.add_argument("--seeds", default="0,1,2,3")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default="benchmarks/results/bound_push.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for method in args.methods.split(","):
        for seed in (int(s) for s in args.seeds.split(",")):
            rows.append(run_one(method, seed))
            print(json.dumps(rows[-1]), flush=True)
    Path(args.out).write_text(json.dumps({"rows": rows, "torch": torch.__version__}, indent=1))


if __name__ == "__main__":
    main()
