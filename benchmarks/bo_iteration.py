"""One BO iteration, LaplaceModel vs SingleTaskGP, measured side by side (issue 4).

Methods: ``LaplaceModel`` (its default, ``network="rff"``), ``LaplaceModel-mlp`` (the
MLP with every weight Bayesian: Functional up to 250 rows, Kron beyond; the default
until session 11), ``LaplaceModel-ll`` (the MLP's last-layer weights, default structure), ``LaplaceModel-rbf``
(``network="rbf"``), ``LaplaceModel-rbf-all`` (the RBF network with every weight
Bayesian: under Kron its centres and lengthscale form one full GGN block, with the
closed form of ``labo.laplace.linearization.rbf``) and
``SingleTaskGP``; ``LaplaceModel-mapls`` (the default's kernel posterior at the MAP-II
lengthscales alone, without the lengthscale average), ``LaplaceModel-features`` (the
default's fit with its 1024 features' own posterior) and ``LaplaceModel-exactgp`` (the
default's fit, then the exact GP of its kernel at its hyperparameters in GPyTorch:
``labo.bench.exact_kernel``) separate what the posterior's implementation and what the
hyperparameters do to the acquisition.
One iteration = refit the surrogate on the current data + optimise
qLogNoisyExpectedImprovement (q=4, num_restarts=10, raw_samples=512). For
LaplaceModel the refit is warm-started from the model of the previous iteration
(fitted on the first n-4 points), as in a BO loop; the cold fit is reported too.
SingleTaskGP is fitted from scratch with fit_gpytorch_mll, as BoTorch does.
Each (method, n, d) runs in its own subprocess with a wall-clock cap; a run
that exceeds it is reported as "timeout". Peak memory is the subprocess's max RSS
(and the peak GPU memory on CUDA). ``--seeds K`` repeats the iteration for data and
optimiser seeds 0..K-1 in that subprocess: the number of acquisition calls L-BFGS-B
makes varies a lot from one fit to the next, so one seed is a noisy measurement; the
table gives medians and the slowest iteration. ``acqf_init_s`` (part of ``acq_s``) is
the construction of qLogNEI, which prunes the baseline by sampling the joint posterior
over all n points. BoTorch runs one L-BFGS-B problem per restart ("batched") only on
SciPy < 1.18; on newer SciPy it optimises the restarts as one joint problem (rows
record ``batched_lbfgs``); ``--batched-lbfgs`` forces the batched optimiser there.

Run: ``.venv/bin/python benchmarks/bo_iteration.py [--sizes 50x6,500x20,2000x100,5000x100]
[--methods LaplaceModel,LaplaceModel-ll,SingleTaskGP] [--seeds 3] [--cap 900]
[--device cuda] [--batched-lbfgs] [--out benchmarks/results/bo_iteration.json]``
"""

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path


def objective(X):
    import torch

    g = torch.Generator().manual_seed(123)
    W = (torch.randn(X.shape[-1], 8, generator=g, dtype=X.dtype) / X.shape[-1] ** 0.5).to(X.device)
    Z = (X - 0.5) @ W * 6
    return (torch.sin(Z).sum(-1) - 0.1 * Z.pow(2).sum(-1)).unsqueeze(-1)


def count_calls(acqf) -> list[int]:
    """Wrap ``acqf.forward`` to count its calls; returns the one-element counter list."""
    calls, forward = [0], acqf.forward

    def counted(X):
        calls[0] += 1
        return forward(X)

    acqf.forward = counted
    return calls


def _force_batched_lbfgs() -> bool:
    """Use BoTorch's batched L-BFGS-B (one scipy problem per restart) even on a SciPy it
    has not been tested with (>= 1.18, where BoTorch falls back to one joint problem over
    all restarts). Returns whether it is on."""
    import botorch.generation.gen as gen

    try:
        from botorch.optim.batched_lbfgs_b import fmin_l_bfgs_b_batched, translate_bounds_for_lbfgsb
    except ImportError:
        return False
    gen.fmin_l_bfgs_b_batched = fmin_l_bfgs_b_batched
    gen.translate_bounds_for_lbfgsb = translate_bounds_for_lbfgsb
    gen.SCIPY_UNTESTED_VERSION = 99
    return True


def run_one(method: str, n: int, d: int, device: str = "cpu", seed: int = 0, batched: bool = False) -> dict:
    import resource

    import torch
    from botorch.acquisition import qLogNoisyExpectedImprovement
    from botorch.generation.gen import get_reasons_against_fast_path
    from botorch.models.transforms import Normalize, Standardize
    from botorch.optim import optimize_acqf

    out = {"method": method, "n": n, "d": d, "seed": seed}
    if batched:
        out["forced_batched_lbfgs"] = _force_batched_lbfgs()
    out["batched_lbfgs"] = not get_reasons_against_fast_path("L-BFGS-B", True, {"maxiter": 2000}, None)
    torch.manual_seed(seed)
    X = torch.rand(n, d, dtype=torch.float64).to(device)
    Y = objective(X)
    bounds = torch.stack([torch.zeros(d), torch.ones(d)]).double().to(device)
    sync = torch.cuda.synchronize if X.is_cuda else (lambda: None)
    t0 = time.perf_counter()
    if method.startswith("LaplaceModel"):
        from labo.laplace import AllWeights, LastLayer
        from labo.surrogates import FitOptions, LaplaceModel, fit_laplace_model

        # LaplaceModel-features: the default network with its 1024 features' own posterior;
        # LaplaceModel-mapls: the default's kernel posterior at the MAP-II lengthscales alone
        options = {
            "LaplaceModel-features": FitOptions(posterior="features"),
            "LaplaceModel-mapls": FitOptions(lengthscale_samples=0),
        }.get(method)
        variant = {
            "LaplaceModel": {},
            "LaplaceModel-features": {},
            "LaplaceModel-mapls": {},
            "LaplaceModel-exactgp": {},
            "LaplaceModel-mlp": {"network": "mlp"},
            "LaplaceModel-ll": {"network": "mlp", "weights": LastLayer()},
            "LaplaceModel-rbf": {"network": "rbf"},
            "LaplaceModel-rbf-all": {"network": "rbf", "weights": AllWeights()},
        }[method]
        prev = LaplaceModel(
            X[:-4], Y[:-4], input_transform=Normalize(d), outcome_transform=Standardize(1), **variant
        )
        fit_laplace_model(prev, options)
        sync()
        out["cold_fit_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        model = LaplaceModel(
            X, Y, input_transform=Normalize(d), outcome_transform=Standardize(1), warm_start=prev, **variant
        )
        fit_laplace_model(model, options)
        out["train_steps"] = model.fit_info["train_steps"]
        out["structure"] = type(model.laplace.structure).__name__
        if method == "LaplaceModel-exactgp":  # the same kernel and hyperparameters in GPyTorch
            from labo.bench.exact_kernel import exact_kernel_gp

            laplace_model = model
            with torch.no_grad():
                model = exact_kernel_gp(laplace_model, laplace_model.transform_inputs(X), Y)
            model.input_transform = laplace_model.input_transform
    else:
        from botorch.fit import fit_gpytorch_mll
        from botorch.models import SingleTaskGP
        from gpytorch.mlls import ExactMarginalLogLikelihood

        model = SingleTaskGP(X, Y, input_transform=Normalize(d), outcome_transform=Standardize(1))
        fit_gpytorch_mll(ExactMarginalLogLikelihood(model.likelihood, model))
    sync()
    out["fit_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    acqf = qLogNoisyExpectedImprovement(model, X_baseline=X, prune_baseline=True)
    sync()
    out["acqf_init_s"] = time.perf_counter() - t0
    out["baseline_rows"] = int(acqf.X_baseline.shape[0])
    calls = count_calls(acqf)
    cand, _ = optimize_acqf(acqf, bounds=bounds, q=4, num_restarts=10, raw_samples=512)
    sync()
    out["acq_s"] = time.perf_counter() - t0
    out["acq_calls"] = calls[0]
    out["iteration_s"] = out["fit_s"] + out["acq_s"]
    out["best_candidate_value"] = float(objective(cand).max())
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if X.is_cuda:
        out["device"] = torch.cuda.get_device_name()
        out["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def _rows_from(stdout: str) -> list[dict]:
    return [json.loads(line) for line in (stdout or "").splitlines() if line.startswith("{")]


def _summary(rows: list[dict]) -> list[str]:
    """One table line per (n, d, method): medians over seeds, and the slowest iteration."""
    import statistics

    lines = [
        "| n | d | method | seeds | fit (s) | acq (s) | iteration (s) | slowest (s) | acq calls | peak MB |",
        "|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    keys = list(dict.fromkeys((r["n"], r["d"], r["method"]) for r in rows))
    for n, d, method in keys:
        group = [r for r in rows if (r["n"], r["d"], r["method"]) == (n, d, method)]
        done = [r for r in group if "iteration_s" in r]
        if not done:
            r = group[-1]
            what = f"timeout after {r['timeout_s']:.0f} s" if "timeout_s" in r else r.get("error", "?")
            lines.append(f"| {n} | {d} | {method} | 0 | {what} | | | | | |")
            continue

        def med(key, rows=done):
            return statistics.median(r[key] for r in rows)

        peak = max(r.get("peak_gpu_mb", r["peak_rss_mb"]) for r in done)
        extra = " (+ timeouts)" if len(done) < len(group) else ""
        lines.append(
            f"| {n} | {d} | {method} | {len(done)}{extra} | {med('fit_s'):.2f} | {med('acq_s'):.2f} | "
            f"{med('iteration_s'):.2f} | {max(r['iteration_s'] for r in done):.2f} | "
            f"{med('acq_calls'):.0f} | {peak:.0f} |"
        )
    return lines


def main():
    parser = argparse.ArgumentParser(description="One BO iteration: LaplaceModel vs SingleTaskGP")
    parser.add_argument("--sizes", default="50x6,500x20,2000x100,5000x100")
    parser.add_argument(
        "--methods",
        default="LaplaceModel,SingleTaskGP",
        help="also LaplaceModel-mapls (no lengthscale average), LaplaceModel-features (the default "
        "network with its features' posterior), "
        "LaplaceModel-mlp, LaplaceModel-ll (the MLP's last layer), LaplaceModel-rbf (RBF network), "
        "LaplaceModel-rbf-all (RBF network, every weight Bayesian)",
    )
    parser.add_argument("--cap", type=float, default=900.0, help="seconds per (method, size), all seeds")
    parser.add_argument("--seeds", type=int, default=1, help="data and optimiser seeds 0..K-1, one process")
    parser.add_argument(
        "--batched-lbfgs",
        action="store_true",
        help="force BoTorch's batched L-BFGS-B where its SciPy check turns it off (SciPy >= 1.18)",
    )
    parser.add_argument("--out", default="benchmarks/results/bo_iteration.json")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (data and models on it)")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        method, n, d, device = args.one.split(":")
        for seed in range(args.seeds):
            if device.startswith("cuda"):
                import torch

                torch.cuda.reset_peak_memory_stats()
            print(json.dumps(run_one(method, int(n), int(d), device, seed, args.batched_lbfgs)), flush=True)
        return
    rows = []
    for size in args.sizes.split(","):
        n, d = map(int, size.split("x"))
        for method in args.methods.split(","):
            cmd = [
                sys.executable,
                __file__,
                "--one",
                f"{method}:{n}:{d}:{args.device}",
                "--seeds",
                str(args.seeds),
            ]
            if args.batched_lbfgs:
                cmd.append("--batched-lbfgs")
            t0 = time.perf_counter()
            try:
                proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.cap)
                got = _rows_from(proc.stdout)
                if proc.returncode != 0:
                    lines = proc.stderr.strip().splitlines()
                    reason = (
                        lines[-1] if lines else f"killed (exit code {proc.returncode}, likely out of memory)"
                    )
                    got.append({"method": method, "n": n, "d": d, "error": reason})
            except subprocess.TimeoutExpired as exc:
                stdout = exc.stdout.decode() if isinstance(exc.stdout, bytes) else exc.stdout
                got = _rows_from(stdout)
                got.append({"method": method, "n": n, "d": d, "timeout_s": args.cap})
            for row in got:
                row["wall_s"] = time.perf_counter() - t0
                rows.append(row)
                print(json.dumps(row), flush=True)
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            Path(args.out).write_text(json.dumps({"benchmark": "bo_iteration", "rows": rows}, indent=2))
    print()
    print("\n".join(_summary(rows)))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
