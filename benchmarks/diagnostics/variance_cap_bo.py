"""Experiment (issue 7 diagnosis): BO with LaplaceModel's predictive variance squashed toward a cap.

The suite's default LaplaceModel proposes corners because its variance far from the data
is many times the targets' variance (``variance_far.py``). This runs the suite protocol
(``labo.bench.runner``, method ``laplace``) with a LaplaceModel whose z-space covariance
``S`` is replaced by ``D S D``, ``D = diag(sqrt(c / (s_ii + c)))``: each variance becomes
``s c / (s + c)`` (about ``s`` where small, at most ``c``, like a GP's outputscale), the
correlations are kept and the matrix stays positive semi-definite. ``c = 1`` is the
variance of the standardised targets. Not part of labo: a test of whether bounding the
variance alone fixes the corner-seeking.

Run: ``python benchmarks/diagnostics/variance_cap_bo.py --problem hartmann6_100d --seeds 0,1,2 [--cap 1.0]
[--db /tmp/variance_cap.db] [--out benchmarks/results/variance_cap_bo_<problem>.json]``
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import labo.bench.runner as runner
from labo.bench import ProblemObjective, get_problem, open_store, run_bo, spec_from_problem
from labo.bench.plots import curves
from labo.surrogates import LaplaceModel


def capped_model_class(cap: float) -> type[LaplaceModel]:
    class CappedLaplaceModel(LaplaceModel):
        def _lazy_posterior(self, X_tf, X):
            return None  # the dense path, where the covariance is squashed

        def _z_predictive(self, X_tf):
            mean, cov = super()._z_predictive(X_tf)  # cov: ... x n x K x n x K
            shape = cov.shape
            flat = cov.reshape(*shape[:-4], shape[-4] * shape[-3], shape[-2] * shape[-1])
            var = flat.diagonal(dim1=-2, dim2=-1).clamp_min(0)
            scale = (cap / (var + cap)).sqrt()
            return mean, (flat * scale.unsqueeze(-1) * scale.unsqueeze(-2)).reshape(shape)

    return CappedLaplaceModel


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problem", default="hartmann6_100d")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--cap", type=float, default=1.0)
    parser.add_argument("--db", default="/tmp/variance_cap.db")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    runner.LaplaceModel = capped_model_class(args.cap)
    study = f"cap{args.cap:g}"
    with open_store(args.db) as store:
        store.create_study(study, {"cap": args.cap}, resume=True)
        for seed in [int(s) for s in args.seeds.split(",")]:
            spec = spec_from_problem(
                study, get_problem(args.problem), "laplace", seed, 1.0, num_restarts=10, raw_samples=512
            )
            t0 = time.perf_counter()
            run_bo(spec, ProblemObjective(args.problem), store)
            print(f"{args.problem} seed {seed}: {time.perf_counter() - t0:.0f} s", flush=True)
        final = {seed: curve[-1] for seed, curve in curves(store, study)[(args.problem, "laplace")].items()}
    out = Path(
        args.out or Path(__file__).resolve().parents[1] / "results" / f"variance_cap_bo_{args.problem}.json"
    )
    payload = {"problem": args.problem, "cap": args.cap, "final_log10_regret": final}
    out.write_text(json.dumps(payload, indent=1))
    print(json.dumps(final), f"\nwrote {out}")


if __name__ == "__main__":
    main()
