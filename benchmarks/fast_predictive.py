"""Fast predictives (issue 5): labo's closed forms and J·S·Jᵀ backend vs a materialised Jacobian.

Part ``last``: a last layer ``Linear(F=128 -> K)`` (laplace-torch #138), classification,
marginal variances of ``B`` inputs. labo's closed forms (Diagonal, Kron; Full where
``Σ`` fits) against the naive path that builds the Jacobian ``φ(x)ᵀ ⊗ I`` of shape
``(B·K, K·(F+1))`` and contracts it with the same posterior (what laplace-torch's
LLLaplace does), and against the floor: the ``(B x F) @ (F x K)`` matmul any
predictive needs.

Part ``all``: all weights of an MLP ``10-256-256-K`` (Kron), ``n=512`` inputs,
marginal variances: the Jacobian-free factor path and the ``loop`` backend mode vs
the Jacobian of all rows materialised at once.

Each naive case runs in its own subprocess under an address-space cap
(``--cap-gb``); one that fails to allocate is reported as "OOM". Times are medians
of ``--reps`` runs after one warm-up; peak extra memory is the largest resident-set
growth during a run, sampled every 0.2 ms by a thread (``/proc/self/statm``).

Run: ``.venv/bin/python benchmarks/fast_predictive.py [--parts last,all] [--reps 7]
[--cap-gb 12] [--out benchmarks/results/fast_predictive.json]``
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

PAGE = os.sysconf("SC_PAGE_SIZE")


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


def measure(fn, reps: int) -> dict:
    """Median time (ms) after a warm-up, and the peak RSS growth (MB) of one more run."""
    fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    base, peak, stop = rss_bytes(), [0], threading.Event()

    def sample():
        while not stop.is_set():
            peak[0] = max(peak[0], rss_bytes() - base)
            time.sleep(0.0002)

    th = threading.Thread(target=sample)
    th.start()
    fn()
    stop.set()
    th.join()
    return {"ms": statistics.median(times), "peak_extra_mb": peak[0] / 2**20}


def last_layer_posterior(K: int, structure: str):
    import torch
    from torch import nn

    from labo.laplace import Diagonal, Full, Kron, LastLayer, fit_laplace

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(10, 128), nn.Tanh(), nn.Linear(128, K))
    X, Y = torch.randn(256, 10), torch.randint(0, K, (256,))
    s = {"diagonal": Diagonal(), "kron": Kron(), "full": Full()}[structure]
    t0 = time.perf_counter()
    la = fit_laplace(net, X, Y, "classification", LastLayer(), s, 1.0)
    la.posterior_precision()
    return la, net, time.perf_counter() - t0


def mlp_posterior(K: int):
    import torch
    from torch import nn

    from labo.laplace import AllWeights, Kron, fit_laplace

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(10, 256), nn.Tanh(), nn.Linear(256, 256), nn.Tanh(), nn.Linear(256, K))
    X, Y = torch.randn(512, 10), torch.randn(512, K)
    la = fit_laplace(net, X, Y, "regression", AllWeights(), Kron(), 1.0, 0.1)
    la.posterior_precision()
    return la


def _oom(exc: BaseException) -> bool:
    return isinstance(exc, MemoryError) or "alloc" in str(exc).lower() or "memory" in str(exc).lower()


def run_group(spec: dict) -> list[dict]:
    """All methods and batch sizes of one (part, K, structure): one fit, then each case.

    A case that cannot allocate (the address-space cap) is recorded as "OOM".
    """
    import torch

    from labo.laplace.linearization.jacobians import output_and_jacobian

    torch.set_grad_enabled(False)
    K, reps, rows = spec["K"], spec["reps"], []
    if spec["part"] == "last":
        la, net, fit_s = last_layer_posterior(K, spec["structure"])
        precision = la.posterior_precision()
        W = net[2].weight.T.contiguous()
        for B in spec["Bs"]:
            Xb = torch.randn(B, 10)
            feats = torch.tanh(net[0](Xb))

            def naive(B=B, Xb=Xb):  # φᵀ ⊗ I materialised, then the same contraction
                phi = torch.cat([torch.tanh(net[0](Xb)), torch.ones(B, 1)], dim=-1)  # (B, F+1)
                J = torch.einsum("kl,bi->bkli", torch.eye(K), phi).reshape(B * K, -1)
                return precision.quad_diag(J)

            fns = {
                "labo": lambda Xb=Xb: la.predictive_variance(Xb),
                "floor": lambda feats=feats: feats @ W,
                "naive": naive,
            }
            for method in spec["methods"]:
                row = {"part": "last", "K": K, "B": B, "structure": spec["structure"], "method": method}
                row.update(fit_s=fit_s, output_mb=B * K * 4 / 2**20)
                try:
                    row.update(measure(fns[method], reps))
                except (RuntimeError, MemoryError) as exc:
                    row["error"] = "OOM" if _oom(exc) else str(exc).splitlines()[0]
                rows.append(row)
    else:
        la = mlp_posterior(K)
        X = torch.randn(512, 10)
        precision = la.posterior_precision()

        def naive():  # the Jacobian of all rows at once, then the same contraction
            _, J = output_and_jacobian(la.network, la.subset, X)
            return precision.quad_diag(J.reshape(-1, J.shape[-1]))

        fns = {
            "factors": lambda: la.predictive_variance(X, mode="factors"),
            "loop": lambda: la.predictive_variance(X, mode="loop"),
            "naive": naive,
        }
        for method in spec["methods"]:
            row = {"part": "all", "K": K, "B": 512, "structure": "kron", "method": method}
            row["n_weights"] = la.n_weights
            try:
                row.update(measure(fns[method], reps))
            except (RuntimeError, MemoryError) as exc:
                row["error"] = "OOM" if _oom(exc) else str(exc).splitlines()[0]
            rows.append(row)
    return rows


def in_subprocess(spec: dict, cap_gb: float, timeout: float) -> list[dict]:
    code = (
        "import json, resource, sys; sys.path.insert(0, 'benchmarks');"
        f"resource.setrlimit(resource.RLIMIT_AS, ({int(cap_gb * 2**30)}, {int(cap_gb * 2**30)}));"
        "import fast_predictive as fp; print(json.dumps(fp.run_group(json.loads(sys.argv[1]))))"
    )
    base = {k: spec[k] for k in ("part", "K", "structure")}
    try:
        proc = subprocess.run(
            [sys.executable, "-c", code, json.dumps(spec)], capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired:
        return [{**base, "method": m, "error": f"timeout after {timeout:.0f} s"} for m in spec["methods"]]
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or [f"exit code {proc.returncode}"])[-1]
        return [
            {**base, "method": m, "error": "OOM" if _oom(RuntimeError(tail)) else tail}
            for m in spec["methods"]
        ]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def groups(parts: list[str], reps: int) -> list[dict]:
    out = []
    if "last" in parts:
        for K in (100, 1000, 3100, 10000):
            for s in ["diagonal", "kron"] + (["full"] if K <= 100 else []):
                methods = (["floor"] if s == "diagonal" else []) + ["labo", "naive"]
                out.append({"part": "last", "K": K, "structure": s, "methods": methods, "Bs": [1, 32]})
    if "all" in parts:
        for K in (1, 10, 100):
            # loop: one output at a time, ~K times the K=1 cost; measured where that fits a run
            methods = ["factors"] + (["loop"] if K <= 10 else []) + ["naive"]
            out.append({"part": "all", "K": K, "structure": "kron", "methods": methods})
    for g in out:
        g["reps"] = reps
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", default="last,all")
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--cap-gb", type=float, default=12.0)
    parser.add_argument("--timeout", type=float, default=600.0)
    parser.add_argument("--out", default="benchmarks/results/fast_predictive.json")
    args = parser.parse_args()
    rows = []
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    for spec in groups(args.parts.split(","), args.reps):
        for row in in_subprocess(spec, args.cap_gb, args.timeout):
            rows.append(row)
            print(json.dumps(row), flush=True)
        Path(args.out).write_text(json.dumps({"benchmark": "fast_predictive", "rows": rows}, indent=2))
    print("\n| part | K | B | structure | method | time (ms) | peak extra (MB) | output (MB) |")
    print("|---|---:|---:|---|---|---:|---:|---:|")
    for r in rows:
        t = f"{r['ms']:.2f}" if "ms" in r else r["error"]
        m = f"{r['peak_extra_mb']:.1f}" if "peak_extra_mb" in r else ""
        o = f"{r['output_mb']:.2f}" if "output_mb" in r else ""
        print(
            f"| {r['part']} | {r['K']} | {r.get('B', '')} | {r['structure']} | {r['method']} "
            f"| {t} | {m} | {o} |"
        )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
