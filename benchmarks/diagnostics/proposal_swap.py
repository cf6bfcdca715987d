"""Whose batch is better on the same data: hyperparameters or predictive (issue 23)?

On the first ``n`` points of stored BO runs (a study database), four surrogates each
propose one qLogNEI batch (the suite's q, 10 restarts, 512 raw samples), in a 2 x 2
design that separates the hyperparameters from the predictive:

- ``gp``: SingleTaskGP, its own marginal-likelihood fit (BoTorch's defaults);
- ``default``: ``LaplaceModel`` (1024 random Fourier features, their evidence);
- ``rff-gphyp``: the default's features and exact Bayesian linear regression, with the
  GP's hyperparameters (lengthscales, noise; prior variance 1 per weight, as the GP's
  outputscale of 1);
- ``gp-defhyp``: an exact GP with the default's hyperparameters (RBF kernel with its
  lengthscales, amplitude ``1/λ`` plus the bias ``1/λ``, zero mean, its noise);
- ``rff4096-defhyp``: 4096 random features instead of 1024 at the default's
  hyperparameters (a closer approximation of the kernel ``gp-defhyp`` uses exactly).

Per batch: the true best value of the batch minus the best true value of the data
(``gain``, problem units, > 0 improves), the batch's mean distance from the incumbent
over the problem's active and inactive inputs (Hartmann6-in-100D), and the fraction of
coordinates on a bound. JSON out; one process per job, one torch thread each.

    PYTHONPATH=. python benchmarks/diagnostics/proposal_swap.py --db study.db \
        --study rff --method laplace-rff --problem hartmann6_100d --sizes 60,120 --seeds 0-5 --jobs 16
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import sqlite3
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # surrogate_screen
from surrogate_screen import mean_se, propose_batch  # noqa: E402

RESULTS = Path(__file__).parent.parent / "results"
MODELS = ("gp", "default", "rff-gphyp", "gp-defhyp", "rff4096-defhyp")


def load_run(db: str, study: str, problem: str, method: str, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    con = sqlite3.connect(db)
    rows = con.execute(
        "SELECT x, y FROM evaluations WHERE study=? AND problem=? AND method=? AND seed=? "
        "AND status='ok' ORDER BY id",
        (study, problem, method, seed),
    ).fetchall()
    con.close()
    X = torch.tensor([json.loads(x) for x, _ in rows], dtype=torch.float64)
    Y = torch.tensor([json.loads(y) for _, y in rows], dtype=torch.float64).reshape(len(rows), -1)
    return X, Y


def _gp(X, Y):
    from botorch.fit import fit_gpytorch_mll
    from botorch.models import SingleTaskGP
    from botorch.models.transforms import Standardize
    from gpytorch.mlls import ExactMarginalLogLikelihood

    model = SingleTaskGP(X, Y, outcome_transform=Standardize(1))
    fit_gpytorch_mll(ExactMarginalLogLikelihood(model.likelihood, model))
    return model


def _gp_hyper(gp) -> dict:
    """Lengthscales and noise variance (standardised units) of a fitted SingleTaskGP."""
    return {
        "lengthscale": gp.covar_module.lengthscale.detach().reshape(-1).clone(),
        "noise_var": float(gp.likelihood.noise.detach().reshape(-1)[0]),
    }


def _default(X, Y, hyper: dict | None = None, n_features: int | None = None):
    """The default's model; with ``hyper``, at those hyperparameters (``prior_precision``
    1 unless given) without tuning; with ``n_features``, that many random features."""
    from botorch.models.transforms import Standardize

    from labo.surrogates import FitOptions, LaplaceModel, fit_laplace_model
    from labo.surrogates.networks import rff_network

    network = (
        None if n_features is None else rff_network(X.shape[-1], 1, n_features=n_features, dtype=X.dtype)
    )
    model = LaplaceModel(
        X, Y, outcome_transform=Standardize(1), **({} if network is None else {"network": network})
    )
    if hyper is None:
        return fit_laplace_model(model)
    with torch.no_grad():  # start the evidence fit at the given values and take no step
        model.network[0].log_lengthscale.copy_(hyper["lengthscale"].log())
        model.laplace.prior_precision = torch.tensor(hyper.get("prior_precision", 1.0), dtype=X.dtype)
        model.laplace.noise_std = torch.tensor(hyper["noise_var"], dtype=X.dtype).sqrt()
    return fit_laplace_model(model, FitOptions(evidence_iters=0))


def _default_hyper(model) -> dict:
    la = model.laplace
    return {
        "lengthscale": model.network[0].log_lengthscale.detach().exp().clone(),
        "noise_var": float(la.noise_std.detach().mean() ** 2),
        "prior_precision": float(la.prior_precision.detach().mean()),
    }


def _gp_with(X, Y, hyper: dict):
    """Exact GP with the default's hyperparameters: ``(k_RBF + 1) / λ``, zero mean."""
    from botorch.models import SingleTaskGP
    from botorch.models.transforms import Standardize
    from gpytorch.kernels import ConstantKernel, RBFKernel, ScaleKernel
    from gpytorch.means import ZeroMean

    d = X.shape[-1]
    amp = 1.0 / hyper["prior_precision"]
    covar = ScaleKernel(RBFKernel(ard_num_dims=d)) + ConstantKernel()
    model = SingleTaskGP(X, Y, covar_module=covar, mean_module=ZeroMean(), outcome_transform=Standardize(1))
    with torch.no_grad():
        covar.kernels[0].base_kernel.lengthscale = hyper["lengthscale"].reshape(1, -1)
        covar.kernels[0].outputscale = torch.tensor(amp, dtype=X.dtype)
        covar.kernels[1].constant = torch.tensor(amp, dtype=X.dtype)
        model.likelihood.noise = torch.tensor([max(hyper["noise_var"], 1.1e-6)], dtype=X.dtype)
    model.eval()
    return model


def run_job(job: tuple) -> list[dict]:
    db, study, method, problem_name, seed, n, models = job
    torch.set_num_threads(1)
    from labo.bench.problems import get_problem

    problem = get_problem(problem_name)
    lo, hi = problem.bounds[0], problem.bounds[1]
    X_all, _ = load_run(db, study, problem_name, method, seed)
    U = ((X_all[:n] - lo) / (hi - lo)).clamp(0, 1)
    f = lambda V: problem.function(lo + V * (hi - lo)).reshape(-1)  # noqa: E731  noise-free truth
    y = f(U)
    Y = y.unsqueeze(-1)
    incumbent = U[y.argmax()]
    active = getattr(problem.function, "active", None)
    mask = torch.zeros(U.shape[-1], dtype=torch.bool)
    if active is not None:
        mask[active] = True
    t0 = time.perf_counter()
    gp = _gp(X=U, Y=Y)
    gp_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    default = _default(U, Y)
    default_s = time.perf_counter() - t0
    hyp_gp, hyp_def = _gp_hyper(gp), _default_hyper(default)
    built = {
        "gp": lambda: gp,
        "default": lambda: default,
        "rff-gphyp": lambda: _default(U, Y, hyp_gp),
        "gp-defhyp": lambda: _gp_with(U, Y, hyp_def),
        "rff4096-defhyp": lambda: _default(U, Y, hyp_def, n_features=4096),
    }
    out = []
    for name in models:
        model = built[name]()
        cand, acq_s = propose_batch(model, U, problem.q, seed)
        values = f(cand)
        dist = (cand - incumbent).abs()
        rec = {
            "problem": problem_name,
            "seed": seed,
            "n": n,
            "model": name,
            "gain": float(values.max() - y.max()),
            "batch_mean_gain": float(values.mean() - y.max()),
            "best_data": float(y.max()),
            "on_bound": float(((cand <= 1e-6) | (cand >= 1 - 1e-6)).double().mean()),
            "dist_active": float(dist[:, mask].mean()) if mask.any() else float("nan"),
            "dist_inactive": float(dist[:, ~mask].mean()),
            "acq_s": acq_s,
        }
        out.append(rec)
    summary = {
        "gp_fit_s": gp_s,
        "default_fit_s": default_s,
        "gp_noise_var": hyp_gp["noise_var"],
        "default_noise_var": hyp_def["noise_var"],
        "default_prior_precision": hyp_def["prior_precision"],
    }
    if mask.any():
        for tag, h in (("gp", hyp_gp), ("default", hyp_def)):
            ls = h["lengthscale"]
            summary[f"{tag}_ls_active_median"] = float(ls[mask].median())
            summary[f"{tag}_ls_inactive_median"] = float(ls[~mask].median())
    for rec in out:
        rec.update(summary)
    return out


def _seeds(text: str) -> list[int]:
    if "-" in text:
        a, b = text.split("-")
        return list(range(int(a), int(b) + 1))
    return [int(s) for s in text.split(",")]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--db", required=True)
    p.add_argument("--study", default="rff")
    p.add_argument("--method", default="laplace-rff")
    p.add_argument("--problem", default="hartmann6_100d")
    p.add_argument("--sizes", default="60,120")
    p.add_argument("--seeds", default="0-5")
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--out", default=str(RESULTS / "proposal_swap.json"))
    a = p.parse_args()
    models = a.models.split(",")
    jobs = [
        (a.db, a.study, a.method, a.problem, s, int(n), models)
        for n in a.sizes.split(",")
        for s in _seeds(a.seeds)
    ]
    with multiprocessing.get_context("spawn").Pool(a.jobs) as pool:
        records = [r for rs in pool.imap_unordered(run_job, jobs) for r in rs]
    rows = []
    for n in sorted({r["n"] for r in records}):
        base = {r["seed"]: r["gain"] for r in records if r["n"] == n and r["model"] == "default"}
        for name in models:
            sel = [r for r in records if r["n"] == n and r["model"] == name]
            row = {"n": n, "model": name, "runs": len(sel)}
            for key in ("gain", "batch_mean_gain", "dist_active", "dist_inactive", "on_bound", "acq_s"):
                row[key], row[key + "_se"] = mean_se([r[key] for r in sel])
            row["gain_vs_default"], row["gain_vs_default_se"] = mean_se(
                [r["gain"] - base[r["seed"]] for r in sel if r["seed"] in base]
            )
            rows.append(row)
    print(f"{'n':>4} {'model':>10} {'gain':>15} {'vs default':>15} {'d_act':>6} {'d_inact':>7} {'bound':>6}")
    for r in rows:
        print(
            f"{r['n']:>4} {r['model']:>10} {r['gain']:7.3f} ± {r['gain_se']:5.3f} "
            f"{r['gain_vs_default']:7.3f} ± {r['gain_vs_default_se']:5.3f} {r['dist_active']:6.3f} "
            f"{r['dist_inactive']:7.3f} {r['on_bound']:6.3f}"
        )
    Path(a.out).write_text(json.dumps({"config": vars(a), "summary": rows, "records": records}, indent=1))
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
