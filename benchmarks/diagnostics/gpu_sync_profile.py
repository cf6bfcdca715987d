"""Host syncs in the acquisition hot loop on a GPU (issue 9).

Profiles one posterior + backward of a fitted LaplaceModel on CUDA, as inside
``optimize_acqf`` (10 t-batches of 548 points: 4 candidates + 544 baseline
points), and lists the device-to-host copies and synchronisations by the Python
line that caused them.

Run (on a CUDA machine): ``python benchmarks/diagnostics/gpu_sync_profile.py``
"""

import collections
import json
import sys

import torch
from botorch.models.transforms import Normalize, Standardize
from torch.profiler import ProfilerActivity, profile

from labo.surrogates import FitOptions, LaplaceModel, fit_laplace_model


def main(out: str | None = None) -> None:
    dev = torch.device("cuda")
    torch.manual_seed(0)
    n, d = 2000, 100
    X = torch.rand(n, d, dtype=torch.float64, device=dev)
    Y = torch.sin(5 * X[:, :8]).sum(-1, keepdim=True)
    model = LaplaceModel(X, Y, network="mlp", input_transform=Normalize(d), outcome_transform=Standardize(1))
    fit_laplace_model(model, FitOptions(max_epochs_cold=300, hyper_steps_cold=20))
    Xq = torch.rand(10, 548, d, dtype=torch.float64, device=dev, requires_grad=True)

    def step():
        post = model.posterior(Xq)
        rows = post.distribution.lazy_covariance_matrix[..., -4:, :].to_dense()
        (post.mean.sum() + rows.sum()).backward()

    step()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA], with_stack=True) as prof:
        step()
        torch.cuda.synchronize()
    counts = collections.Counter()
    for ev in prof.events():
        if ev.name in ("aten::item", "aten::_local_scalar_dense", "cudaStreamSynchronize", "cudaMemcpyAsync"):
            frame = next((f for f in (ev.stack or []) if "labo/" in f), "outside labo")
            counts[(ev.name, frame)] += 1
    rows = [{"event": k[0], "where": k[1], "count": v} for k, v in counts.most_common()]
    for r in rows:
        print(f"{r['count']:4d}  {r['event']:28s} {r['where']}")
    if out:
        with open(out, "w") as f:
            info = {"benchmark": "gpu_sync_profile", "device": torch.cuda.get_device_name(), "rows": rows}
            json.dump(info, f, indent=2)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else None)
