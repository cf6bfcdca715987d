"""Where the acquisition time of one BO iteration goes (issue 9).

For each ``METHOD:N`` (METHOD in ``LM`` = LaplaceModel default, ``LM-ll`` = last-layer
weights, ``GP`` = SingleTaskGP), on the synthetic d-dimensional objective of
``bo_iteration.py``: fit the model, build qLogNoisyExpectedImprovement with
``prune_baseline=True``, then

- optimise it as a BO iteration does (q=4, num_restarts=10, raw_samples=512), counting
  the calls of the acquisition function by batch size (``lbfgs_calls``: batches of
  ``num_restarts`` = 10 candidates, the joint L-BFGS-B steps; the rest are raw-sample
  evaluations and restarts BoTorch runs in smaller batches);
- time one forward+backward call on a batch of 10 q=4 candidates (median of 20 after warm-up);
- profile 5 such calls with ``torch.profiler`` and report, per call, the aten ops, kernel
  launches, device synchronisations, memcpys and device time.

The seconds of an iteration are roughly ``calls x seconds per call``: this script tells
whether a slow acquisition step comes from many optimizer steps (the landscape) or from
a slow call (the model's predictive). Writes one JSON row per spec as it goes.

Run: ``python benchmarks/diagnostics/acq_profile.py --specs LM:1000,LM-ll:1000,GP:1000 --device cuda
[--d 100] [--out benchmarks/results/acq_profile.json]``
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bo_iteration
sys.path.insert(0, str(Path(__file__).resolve().parent))  # sibling diagnostics
from bo_iteration import objective  # noqa: E402


def fit(method: str, X, Y):
    from botorch.models.transforms import Normalize, Standardize

    d = X.shape[-1]
    if method in ("LM", "LM-ll"):
        from labo.laplace import LastLayer
        from labo.surrogates import LaplaceModel, fit_laplace_model

        kwargs = {"weights": LastLayer()} if method == "LM-ll" else {}
        model = LaplaceModel(
            X,
            Y,
            input_transform=Normalize(d),
            outcome_transform=Standardize(1),
            **{"network": "mlp", **kwargs},
        )
        fit_laplace_model(model)
        return model
    if method == "GP":
        from botorch.fit import fit_gpytorch_mll
        from botorch.models import SingleTaskGP
        from gpytorch.mlls import ExactMarginalLogLikelihood

        model = SingleTaskGP(X, Y, input_transform=Normalize(d), outcome_transform=Standardize(1))
        fit_gpytorch_mll(ExactMarginalLogLikelihood(model.likelihood, model))
        return model
    raise ValueError(f"unknown method {method!r}; expected LM, LM-ll or GP.")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def profile_one(method: str, n: int, d: int, device: torch.device) -> dict:
    from botorch.acquisition import qLogNoisyExpectedImprovement
    from botorch.optim import optimize_acqf
    from torch.profiler import ProfilerActivity, profile

    torch.manual_seed(0)
    X = torch.rand(n, d, dtype=torch.float64, device=device)
    Y = objective(X)
    t0 = time.perf_counter()
    model = fit(method, X, Y)
    sync(device)
    row = {"method": method, "n": n, "d": d, "device": str(device), "fit_s": time.perf_counter() - t0}
    t0 = time.perf_counter()
    acqf = qLogNoisyExpectedImprovement(model, X_baseline=X, prune_baseline=True)
    sync(device)
    row["acqf_init_s"] = time.perf_counter() - t0
    row["baseline_rows"] = int(acqf.X_baseline.shape[0])
    shapes: list[tuple[int, ...]] = []
    forward = acqf.forward

    def counted(Xc):
        shapes.append(tuple(Xc.shape))
        return forward(Xc)

    acqf.forward = counted
    bounds = torch.stack([torch.zeros(d), torch.ones(d)]).to(X)
    torch.manual_seed(1)
    t0 = time.perf_counter()
    optimize_acqf(acqf, bounds=bounds, q=4, num_restarts=10, raw_samples=512)
    sync(device)
    row["acq_s"] = time.perf_counter() - t0
    row["acq_calls"] = len(shapes)
    row["lbfgs_calls"] = sum(1 for s in shapes if s[0] == 10)
    row["calls_by_batch_size"] = {str(b): c for b, c in sorted(Counter(s[0] for s in shapes).items())}
    acqf.forward = forward

    Xc = torch.rand(10, 4, d, dtype=torch.float64, device=device, requires_grad=True)
    for _ in range(3):
        acqf(Xc).sum().backward()
    times = []
    for _ in range(20):
        sync(device)
        t0 = time.perf_counter()
        acqf(Xc).sum().backward()
        sync(device)
        times.append(time.perf_counter() - t0)
    row["ms_per_call"] = 1e3 * statistics.median(times)

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        for _ in range(5):
            acqf(Xc).sum().backward()
        sync(device)
    events = prof.key_averages()
    count = {e.key: e.count / 5 for e in events}
    row["aten_ops_per_call"] = sum(v for k, v in count.items() if k.startswith("aten::"))
    row["launches_per_call"] = sum(v for k, v in count.items() if "LaunchKernel" in k)
    row["syncs_per_call"] = sum(v for k, v in count.items() if "Synchronize" in k)
    row["memcpy_per_call"] = sum(v for k, v in count.items() if "Memcpy" in k)
    row["device_ms_per_call"] = sum(e.self_device_time_total for e in events) / 5 / 1e3
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--specs", default="LM:1000,LM-ll:1000,GP:1000", help="METHOD:N, comma-separated")
    parser.add_argument("--d", type=int, default=100)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--out", default=str(Path(__file__).resolve().parents[1] / "results" / "acq_profile.json")
    )
    args = parser.parse_args()
    device = torch.device(args.device)
    rows = []
    for spec in args.specs.split(","):
        method, _, n = spec.partition(":")
        if not n.isdigit():
            raise SystemExit(f"bad spec {spec!r}: expected METHOD:N, e.g. LM:1000.")
        row = profile_one(method, int(n), args.d, device)
        print(json.dumps(row), flush=True)
        rows.append(row)
        Path(args.out).write_text(json.dumps(rows, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
