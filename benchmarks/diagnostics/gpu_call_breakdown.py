"""Where one qLogNEI call's time goes on a GPU: labo's host syncs and its posterior (issue 9).

For LM (default, Kron), LM-ll (last layer) and GP on the synthetic d = 100 objective of
``bo_iteration.py``: the median milliseconds of one forward + backward qLogNEI call on
10 x 4 candidates (``prune_baseline=True``), then the same with labo's three host
synchronisations removed one after the other (the input finiteness check, the head
cache's comparison of the baseline rows, the shared-prefix comparison; not safe in
general, for this measurement only), and labo's part alone: the posterior over
baseline + candidates and the candidates' covariance rows, forward + backward.

Run: ``PYTHONPATH=.:benchmarks python benchmarks/diagnostics/gpu_call_breakdown.py [--device cuda] [--n 1000]
[--out benchmarks/results/gpu_call_breakdown.json]``
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bo_iteration
sys.path.insert(0, str(Path(__file__).resolve().parent))  # sibling diagnostics
from acq_profile import fit  # noqa: E402
from bo_iteration import objective  # noqa: E402


def median_ms(step, device: torch.device, warmup: int = 3, reps: int = 30) -> float:
    for _ in range(warmup):
        step()
    times = []
    for _ in range(reps):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def breakdown(method: str, X, Y, device: torch.device) -> dict:
    from botorch.acquisition import qLogNoisyExpectedImprovement

    import labo.surrogates.lazy_covariance as lc
    import labo.surrogates.model_posterior as lm
    from labo.surrogates import LaplaceModel

    model = fit(method, X, Y)
    acqf = qLogNoisyExpectedImprovement(model, X_baseline=X, prune_baseline=True)
    Xc = torch.rand(10, 4, X.shape[-1], dtype=X.dtype, device=device, requires_grad=True)

    def call():
        acqf(Xc).sum().backward()

    row = {"ms_per_call": median_ms(call, device), "baseline_rows": int(acqf.X_baseline.shape[0])}
    if method == "GP":
        return row
    k = int(acqf.X_baseline.shape[0])
    originals = (LaplaceModel.check_X, lc.HeadCache.get, lm.shared_prefix_rows)
    cache_get = lc.HeadCache.get

    def cached(self, la, X_head):
        return self._entry[3] if self._entry is not None else cache_get(self, la, X_head)

    try:
        LaplaceModel.check_X = lambda self, X, name="X": None
        row["without_check_X"] = median_ms(call, device)
        lc.HeadCache.get = cached
        row["also_without_head_cache_comparison"] = median_ms(call, device)
        lm.shared_prefix_rows = lambda X_full: k if X_full.shape[-2] > k else 0
        row["also_without_shared_prefix_comparison"] = median_ms(call, device)
    finally:
        LaplaceModel.check_X, lc.HeadCache.get, lm.shared_prefix_rows = originals
    X_full = torch.cat([acqf.X_baseline.expand(10, -1, -1), Xc], -2)

    def posterior_rows():
        post = model.posterior(X_full)
        rows = post.distribution.lazy_covariance_matrix[..., -4:, :].to_dense()
        (rows.sum() + post.mean.sum()).backward()

    row["labo_posterior_and_rows_ms"] = median_ms(posterior_rows, device)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument(
        "--out", default=str(Path(__file__).resolve().parents[1] / "results" / "gpu_call_breakdown.json")
    )
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    X = torch.rand(args.n, 100, dtype=torch.float64, device=device)
    Y = objective(X)
    rows = {method: breakdown(method, X, Y, device) for method in ("LM", "LM-ll", "GP")}
    result = {"device": str(device), "n": args.n, "d": 100, "rows": rows}
    print(json.dumps(result, indent=1))
    Path(args.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
