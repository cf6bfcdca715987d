"""Timing of the Laplace core: fit_laplace + predictive per structure, and the curvature paths side by side.

Default mode: a 2-hidden-layer MLP of width 50 (10-50-50-1, P = 3151 weights), n = 1000
training points with d = 10. For each structure x subset: the time of ``fit_laplace``
(curvature), of one marginal-likelihood evaluation, of ``predictive`` (joint covariance)
on 100 test points and of ``predictive_variance`` on 1000, each the median of several
runs after a warm-up. Prints a table and writes JSON.

``--libraries`` (issue 24): each curvature computed by the library (curvlinops, BackPACK)
and by labo's own path, side by side, for n in {1000, 5000, 20000} and d in {10, 100,
1000}, on the default networks of ``labo.surrogates.networks`` (the MLP d-64-64-1 and the
rff network's Bayesian last layer) and on two 1-D convolutional networks (where the
libraries are served). A case whose previous (smaller n) run exceeded ``--cap`` seconds is
skipped. On CUDA the peak memory allocated per case is recorded too.

Run: ``.venv/bin/python benchmarks/core_timing.py [--out benchmarks/results/core_timing.json]``
     ``.venv/bin/python benchmarks/core_timing.py --libraries [--threads 1] [--device cuda] [--cap 30]``
"""

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch
from torch import nn

from labo.laplace import AllWeights, Diagonal, Full, Kron, LastLayer, fit_laplace


def median_time(fn, repeats=5, sync=lambda: None):
    fn()  # warm-up
    sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def core(args):
    torch.manual_seed(0)
    dtype = torch.float64
    net = nn.Sequential(nn.Linear(10, 50), nn.Tanh(), nn.Linear(50, 50), nn.Tanh(), nn.Linear(50, 1)).to(
        dtype
    )
    X = torch.randn(1000, 10, dtype=dtype)
    Y = torch.sin(X.sum(-1, keepdim=True))
    X_joint = torch.randn(100, 10, dtype=dtype)
    X_var = torch.randn(1000, 10, dtype=dtype)
    rows = []
    for weights in (AllWeights(), LastLayer()):
        for structure in (Full(), Diagonal(), Kron()):
            kw = dict(weights=weights, structure=structure, prior_precision=1.0, noise_std=0.1)
            la = fit_laplace(net, X, Y, **kw)
            t_fit = median_time(lambda kw=kw: fit_laplace(net, X, Y, **kw), args.repeats)

            def lml(la=la):
                la._cache = None
                la.log_marginal_likelihood()

            t_lml = median_time(lml, args.repeats)
            la.predictive(X_joint)  # factorise once (cached, as in use)
            t_pred = median_time(lambda la=la: la.predictive(X_joint), args.repeats)
            t_var = median_time(lambda la=la: la.predictive_variance(X_var), args.repeats)
            row = {
                "weights": repr(weights),
                "structure": repr(structure),
                "n_weights": la.n_weights,
                "fit_s": t_fit,
                "lml_s": t_lml,
                "predictive_joint_100_s": t_pred,
                "predictive_variance_1000_s": t_var,
            }
            rows.append(row)
            print(
                f"{row['weights']:13} {row['structure']:11} S={row['n_weights']:5d}  "
                f"fit {t_fit * 1e3:8.1f} ms  lml {t_lml * 1e3:7.1f} ms  "
                f"predictive(100, joint) {t_pred * 1e3:7.1f} ms  variance(1000) {t_var * 1e3:7.1f} ms"
            )
    return {"network": "MLP 10-50-50-1 (tanh), float64", "n_train": 1000, "rows": rows}


# ------------------------------------------------------------------------------ --libraries


class ConvSurrogate(nn.Module):
    """The residual 1-D convolutional network of examples/custom_network.py (not a Sequential)."""

    def __init__(self, channels: int = 8, hidden: int = 16):
        super().__init__()
        self.stem = nn.Conv1d(1, channels, kernel_size=5, padding=2)
        self.block = nn.Conv1d(channels, channels, kernel_size=3, padding=1)
        self.head = nn.Sequential(nn.Linear(channels, hidden), nn.Tanh(), nn.Linear(hidden, 1))

    def forward(self, x):
        h = torch.tanh(self.stem(x.unsqueeze(-2)))
        h = h + torch.tanh(self.block(h))
        return self.head(h.mean(-1))


def conv_sequential(d: int) -> nn.Sequential:
    """Conv1d (4 channels, kernel 5, stride 4), tanh, flatten, Linear -> 16 -> 1 (BackPACK's kind)."""
    length = (d + 4 - 5) // 4 + 1
    return nn.Sequential(
        nn.Unflatten(1, (1, d)),
        nn.Conv1d(1, 4, kernel_size=5, stride=4, padding=2),
        nn.Tanh(),
        nn.Flatten(),
        nn.Linear(4 * length, 16),
        nn.Tanh(),
        nn.Linear(16, 1),
    )


def dense_ggn_curvlinops(net, subset, X):
    """The dense GGN (regression, without 1/σ²) as S matrix-vector products of curvlinops' GGN operator."""
    from curvlinops import GGNLinearOperator

    params = dict(net.named_parameters())
    ps = [params[s.name] for s in subset.selected]
    Y = torch.zeros(X.shape[0], 1, dtype=X.dtype, device=X.device)
    op = GGNLinearOperator(
        net, nn.MSELoss(reduction="sum"), ps, [(X, Y)], check_deterministic=False, num_data=X.shape[0]
    )
    return (op @ torch.eye(subset.n_weights, dtype=X.dtype, device=X.device)) / 2


def today_conv_kron(net, subset, X):
    """labo's Kron before issue 24: Linear blocks from labo's factors, the conv weights in the
    rest with their GGN diagonal from per-row Jacobians (torch.func)."""
    from labo.laplace.structures import curvature as cv

    names = [n for n, m in net.named_modules() if isinstance(m, nn.Linear)]
    cv._kfac_from_linear_factors(net, names, "regression", X, 1, None)
    conv = [s.offset + torch.arange(s.size) for s in subset.selected if not s.name.startswith("head")]
    return _jacobian_diag(net, subset.restrict(torch.cat(conv)), X)


def library_cases(d: int):
    """``(network label, structure, weights label, net, subset, {path: fn(X)}, served)`` per case."""
    from labo.laplace.structures import curvature as cv
    from labo.laplace.structures import library_curvature as lib
    from labo.surrogates.networks import default_network, rff_network

    out = []
    mlp = default_network(d, 1, dtype=torch.float64)
    sub_all = AllWeights().resolve(mlp)
    sub_last = LastLayer().resolve(mlp)
    names = ["0", "2", "4"]
    out.append(
        (
            "mlp",
            "Kron",
            "AllWeights",
            sub_all.n_weights,
            {
                "labo": lambda X: cv._kfac_from_linear_factors(mlp, names, "regression", X, 1, None),
                "curvlinops": lambda X: lib.curvlinops_kfac_factors(mlp, names, "regression", X, 1),
            },
            "labo",
        )
    )
    out.append(
        (
            "mlp",
            "Diagonal",
            "AllWeights",
            sub_all.n_weights,
            {
                "labo": lambda X: cv.linear_ggn_diagonal(mlp, sub_all, "regression", X, None),
                "backpack": lambda X: lib.backpack_ggn_diagonal(mlp, sub_all, "regression", X, 1),
            },
            lambda X: "backpack" if lib.backpack_preferred_for_linear(mlp, X) else "labo",
        )
    )
    out.append(
        (
            "mlp",
            "Full",
            "LastLayer",
            sub_last.n_weights,
            {
                "labo (torch.func)": lambda X: cv.ggn(mlp, sub_last, "regression", X, 1),
                "curvlinops": lambda X: dense_ggn_curvlinops(mlp, sub_last, X),
            },
            "labo (torch.func)",
        )
    )
    if d == 10:
        out.append(
            (
                "mlp",
                "Full",
                "AllWeights",
                sub_all.n_weights,
                {
                    "labo (torch.func)": lambda X: cv.ggn(mlp, sub_all, "regression", X, 1),
                    "curvlinops": lambda X: dense_ggn_curvlinops(mlp, sub_all, X),
                },
                "labo (torch.func)",
            )
        )
    rff = rff_network(d, 1, dtype=torch.float64)
    sub_rff = LastLayer().resolve(rff)
    out.append(
        (
            "rff",
            "Kron",
            "LastLayer",
            sub_rff.n_weights,
            {
                "labo": lambda X: cv._kfac_from_linear_factors(rff, ["1"], "regression", X, 1, None),
                "curvlinops": lambda X: lib.curvlinops_kfac_factors(rff, ["1"], "regression", X, 1),
            },
            "labo",
        )
    )
    torch.manual_seed(0)
    conv = ConvSurrogate().double()
    sub_conv = AllWeights().resolve(conv)
    conv_names = ["stem", "block", "head.0", "head.2"]
    out.append(
        (
            "conv (residual)",
            "Kron",
            "AllWeights",
            sub_conv.n_weights,
            {
                "before (conv in diagonal rest, torch.func)": lambda X: today_conv_kron(conv, sub_conv, X),
                "curvlinops (conv K-FAC)": lambda X: lib.curvlinops_kfac_factors(
                    conv, conv_names, "regression", X, 1
                ),
            },
            "curvlinops (conv K-FAC)",
        )
    )
    seq = conv_sequential(d).double()
    sub_seq = AllWeights().resolve(seq)
    out.append(
        (
            "conv (Sequential)",
            "Diagonal",
            "AllWeights",
            sub_seq.n_weights,
            {
                "torch.func": lambda X: _jacobian_diag(seq, sub_seq, X),
                "backpack": lambda X: lib.backpack_ggn_diagonal(seq, sub_seq, "regression", X, 1),
            },
            lambda X: "backpack" if lib.backpack_preferred_for_rest(X) else "torch.func",
        )
    )
    return out


def _jacobian_diag(net, subset, X):
    from labo.laplace.linearization.jacobians import iter_output_and_jacobian

    out = torch.zeros(subset.n_weights, dtype=X.dtype, device=X.device)
    for _, _, J in iter_output_and_jacobian(net, subset, X, 1):
        out += J.detach().pow(2).sum((0, 1))
    return out


def _timed(fn, X, sync) -> tuple[float, float]:
    """Wall-clock and CPU seconds of this process (all its threads) for one call."""
    t0, c0 = time.perf_counter(), time.process_time()
    fn(X)
    sync()
    return time.perf_counter() - t0, time.process_time() - c0


def libraries(args):
    """Per case, the paths are timed in turns (path A, path B, A, B, ...) and each gets the
    best of its runs after one warm-up: on a machine shared with other jobs the minimum is
    the least disturbed estimate, and taking turns exposes both paths to the same load.
    Both wall-clock and CPU seconds (this process, all threads) are kept: under contention
    the CPU time is the fairer comparison, on an idle machine or a GPU the wall time."""
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    rows = []
    slow: set[tuple] = set()
    for d in args.dims:
        cases = library_cases(d)
        _move(cases, device)
        for n in args.sizes:
            g = torch.Generator().manual_seed(n + d)
            X = torch.rand(n, d, generator=g, dtype=torch.float64).to(device)
            for net_label, structure, weights, S, paths, served in cases:
                times: dict[str, list[float]] = {}
                memory: dict[str, float] = {}
                failed: dict[str, str] = {}
                for path, fn in paths.items():  # warm-up
                    if (net_label, structure, weights, d, path) in slow:
                        continue
                    if cuda:
                        torch.cuda.reset_peak_memory_stats()
                    try:
                        times[path] = [_timed(fn, X, sync)]
                    except torch.OutOfMemoryError:
                        failed[path] = "out of memory"
                        slow.add((net_label, structure, weights, d, path))
                        if cuda:
                            torch.cuda.empty_cache()
                        continue
                    if cuda:
                        memory[path] = torch.cuda.max_memory_allocated() / 2**20
                for r in range(args.repeats):
                    for path, fn in paths.items():
                        # at least one run after the warm-up (which may carry a one-off stall),
                        # unless the warm-up took over twice the cap; more runs within the cap
                        warm = times.get(path, [(float("inf"), 0.0)])[0][0]
                        if (r == 0 and warm < 2 * args.cap) or warm * (args.repeats + 1) < args.cap:
                            times[path].append(_timed(fn, X, sync))
                for path in paths:
                    key = (net_label, structure, weights, d, path)
                    chosen = served(X) if callable(served) else served
                    row = {"network": net_label, "structure": structure, "weights": weights, "S": S,
                           "n": n, "d": d, "path": path, "served": path == chosen}  # fmt: skip
                    if path not in times:
                        row["skipped"] = failed.get(path, f"over the {args.cap:g} s cap at a smaller n")
                        rows.append(row)
                        print(
                            f"{net_label:18} {structure:8} {weights:10} d={d:5d} n={n:6d} {path:44}  skipped"
                        )
                        continue
                    # the warm-up counts only when it is the one run
                    runs = times[path][1:] if len(times[path]) > 1 else times[path]
                    t, cpu = min(r[0] for r in runs), min(r[1] for r in runs)
                    row["seconds"], row["cpu_seconds"], row["runs"] = t, cpu, len(runs)
                    if cuda:
                        row["peak_memory_mb"] = memory[path]
                    if t > args.cap:
                        slow.add(key)
                    rows.append(row)
                    mem = f" {row['peak_memory_mb']:8.1f} MB" if cuda else ""
                    mark = "*" if row["served"] else " "
                    print(
                        f"{net_label:18} {structure:8} {weights:10} d={d:5d} n={n:6d} {path:44}{mark} "
                        f"{t * 1e3:10.1f} ms (cpu {cpu * 1e3:10.1f} ms){mem}",
                        flush=True,
                    )
    timing = "best of runs taken in turns; seconds = wall clock, cpu_seconds = this process's CPU time"
    return {"mode": "libraries", "device": str(device), "cap_s": args.cap, "timing": timing, "rows": rows}


def _move(cases, device):
    """Networks live in the closures; move every module reachable from them once."""
    if device.type == "cpu":
        return
    for _, _, _, _, paths, _ in cases:
        for fn in paths.values():
            for cell in fn.__closure__ or ():
                obj = cell.cell_contents
                if isinstance(obj, nn.Module):
                    obj.to(device)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out", default=None, help="JSON path (default benchmarks/results/core_timing*.json)"
    )
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--libraries", action="store_true", help="library vs labo curvature paths")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 5000, 20000])
    parser.add_argument("--dims", type=int, nargs="+", default=[10, 100, 1000])
    parser.add_argument(
        "--cap", type=float, default=30.0, help="seconds per case before larger n are skipped"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads (1: no spinning threads on a busy machine)",
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.libraries:
        args.repeats = min(args.repeats, 3)
        result = libraries(args)
        default_out = f"benchmarks/results/core_timing_libraries_{torch.device(args.device).type}.json"
    else:
        result = core(args)
        default_out = "benchmarks/results/core_timing.json"
    result.update(
        {
            "benchmark": "core_timing",
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "machine": platform.processor() or platform.machine(),
        }
    )
    if torch.cuda.is_available() and args.device.startswith("cuda"):
        result["gpu"] = torch.cuda.get_device_name()
    out = args.out or default_out
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
