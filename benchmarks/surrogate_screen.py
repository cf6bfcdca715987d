"""A fast screen of surrogate variants against SingleTaskGP (issue 23), in minutes not hours.

For each (problem, n, design, seed) every variant is fitted to the same data and
measured side by side (paired):

- held-out NLPD, RMSE / std(y) and 2-sd coverage, at Sobol test points ("sobol") and
  at points near the best training points ("near");
- the latent predictive variance at random corners and at uniform random points,
  relative to the variance of the training targets;
- one BO step: the true value of the qLogNEI maximiser (q = 1, 10 restarts, 512 raw
  samples) as (f(x*) − best observed) / std(y), and the fraction of its coordinates
  on a bound;
- fit and acquisition seconds.

Designs: ``sobol`` (scrambled Sobol points) and ``local`` (half Sobol, half Gaussian
perturbations, sd 0.05 in the unit cube, of the 5 best points of a 4096-point Sobol
pool), the shape of data a BO run has after some iterations. Everything is in the
unit cube and standardised units of the training targets. Problems are those of
``labo.bench.problems`` (maximised). One process and one torch thread per job.

Full screen (16 cores, under 10 minutes):

    PYTHONPATH=. python benchmarks/surrogate_screen.py --jobs 16 --tag full

Reduced (2 cores, a few minutes):

    PYTHONPATH=. .venv/bin/python benchmarks/surrogate_screen.py --reduced --jobs 2 --tag reduced
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import time
import warnings
from pathlib import Path

import torch
from torch.quasirandom import SobolEngine

RESULTS = Path(__file__).parent / "results"

# (problem, n) pairs of the full screen: BO-sized data sets of each suite problem.
FULL_CASES = [
    ("branin", 10),
    ("branin", 30),
    ("hartmann6", 20),
    ("hartmann6", 60),
    ("ackley10", 20),
    ("ackley10", 100),
    ("rosenbrock20", 20),
    ("rosenbrock20", 100),
    ("hartmann6_100d", 20),
    ("hartmann6_100d", 100),
    ("ackley10_many", 1000),
]
REDUCED_CASES = [("branin", 20), ("hartmann6", 30), ("hartmann6_100d", 40)]
# "default" is LaplaceModel's default (network="rff" on the kernel's evidence, its kernel posterior
# averaged over lengthscale draws for 2d <= n < 30d), "default-mapls" the same at the MAP-II
# lengthscales alone (the default until the average; the "default" of the screens before it),
# "rff-feat" that network on its features' evidence (the default until 2026-12-06); "mlp" the
# MLP default before that.
DEFAULT_VARIANTS = "gp,default,mlp,rbf,rff2048,mlp-fanin-hp,sphere-fanin-hp"


# ---------------------------------------------------------------------- variants
def _sphere_network(d: int, m: int, dtype):
    from torch import nn

    from labo.surrogates.networks import SphereMap, default_network

    return nn.Sequential(SphereMap(d), *default_network(d + 1, m, dtype=dtype))


def fit_variant(name: str, X: torch.Tensor, Y: torch.Tensor):
    """Fit the surrogate called ``name`` on unit-cube ``X`` (n x d) and ``Y`` (n x 1)."""
    from botorch.fit import fit_gpytorch_mll
    from botorch.models import SingleTaskGP
    from botorch.models.transforms import Standardize
    from gpytorch.mlls import ExactMarginalLogLikelihood

    from labo.surrogates import FitOptions, LaplaceModel, fit_laplace_model

    if name == "gp":
        model = SingleTaskGP(X, Y, outcome_transform=Standardize(1))
        fit_gpytorch_mll(ExactMarginalLogLikelihood(model.likelihood, model))
        return model
    if name in ("gp-lin", "gp-quad", "gp-dquad"):  # SingleTaskGP + a polynomial trend (diagnostics)
        from diagnostics.trend_kernel import fit_trend_gp

        return fit_trend_gp(name, X, Y)
    if name in ("default-warp", "default-warpls"):  # hyperparameters tuned on rank-warped targets
        from diagnostics.warped_lengthscales import fit_warped_default

        return fit_warped_default(name, X, Y)
    if name == "gp-add":  # SingleTaskGP + a first-order additive kernel (diagnostics)
        from diagnostics.additive_kernel import fit_additive_gp

        return fit_additive_gp(name, X, Y)
    if name == "default-mgp":  # the default's kernel posterior averaged over its lengthscales
        from diagnostics.hyper_laplace import fit_default_mgp

        return fit_default_mgp(name, X, Y)
    if name in ("gp-mgp", "gp-mgp-ls"):  # SingleTaskGP averaged over its hyperparameters' Laplace posterior
        from diagnostics.hyper_laplace import fit_mgp

        return fit_mgp(name, X, Y)
    if name == "choice":  # the default or its Matérn-5/2 twin, whichever the evidence prefers
        fits = [fit_variant("default", X, Y), fit_variant("rff-matern52", X, Y)]
        return max(fits, key=lambda fit: fit.fit_info["hyper_log_posterior"])
    d = X.shape[-1]
    parts = set(name.split("-"))
    kwargs: dict = {}
    if "mlp" in parts or "fanin" in parts or "fn" in parts:
        kwargs["network"] = "mlp"  # the prior options are for MAP-trained networks
    if "rbf" in parts:
        kwargs["network"] = "rbf"
    if "rff" in parts:
        kwargs["network"] = "rff"
    # rff<D>: that many random features, e.g. rff2048; "sc": sin/cos pairs instead of
    # phase-shifted cosines; "orth": orthogonal random frequencies; "matern52" /
    # "matern32": Matérn features (and evidence) instead of the RBF's.
    rff_parts = [p for p in parts if p.startswith("rff") and p[3:].isdigit()]
    kernels = [p for p in parts if p.startswith("matern")]
    if rff_parts or ("rff" in parts and ({"sc", "orth"} & parts or kernels)):
        from labo.surrogates.networks import RFF_FEATURES, rff_network

        n_features = int(rff_parts[0][3:]) if rff_parts else RFF_FEATURES
        kind = "sincos" if "sc" in parts else "cos"
        kwargs["network"] = rff_network(
            d,
            1,
            n_features=n_features,
            dtype=X.dtype,
            kind=kind,
            orthogonal="orth" in parts,
            kernel=kernels[0] if kernels else "rbf",
        )
    if "sphere" in parts:
        kwargs["network"] = _sphere_network(d, 1, X.dtype)
    if "func" in parts:
        from labo.laplace import Functional

        kwargs["structure"] = Functional()
    if "ll" in parts:
        from labo.laplace import LastLayer

        kwargs["weights"] = LastLayer()
    opts = {}
    if "fanin" in parts:
        opts["prior"] = "fanin"
    if "fn" in parts:
        opts["prior"] = "function"
    if "hp" in parts:
        opts["hyperprior_std"] = 1.0
        opts["noise_prior"] = True
    if "np" in parts:
        opts["noise_prior"] = True
    if "lbfgs" in parts:
        opts["optimizer"] = "lbfgs"
    if "feat" in parts:  # rff: tune on the features' own evidence (the default until 2026-12-06)
        opts["evidence"] = "features"
    if "kern" in parts:  # rff: the exact GP of the features' kernel as the posterior
        opts["posterior"] = "kernel"
    if "lsavg" in parts:  # the kernel posterior averaged over 16 lengthscale draws at every n
        opts.update(
            lengthscale_samples=16,
            lengthscale_samples_rows_per_input=0.0,
            lengthscale_samples_max_rows_per_input=None,
            lengthscale_samples_max_rows=None,
        )
    if "mapls" in parts:  # the MAP-II lengthscales alone (the default until the average)
        opts["lengthscale_samples"] = 0
    if "saas" in parts:  # the SAAS lengthscale prior (FitOptions(lengthscale_prior="saas"))
        import labo.surrogates.feature_evidence as fe

        opts["lengthscale_prior"] = "saas"
        # saas-t<τ>: another global shrinkage than the library's (diagnostics), e.g. saas-t1
        taus = [float(p[1:]) for p in parts if p.startswith("t") and p[1:].replace(".", "").isdigit()]
        fe.SAAS_TAU = taus[0] if taus else 0.1
    if "fpost" in parts:  # rff: the features' own posterior (FitOptions(posterior="features"))
        opts["posterior"] = "features"
    model = LaplaceModel(X, Y, outcome_transform=Standardize(1), **kwargs)
    return fit_laplace_model(model, FitOptions(**opts))


# ---------------------------------------------------------------------- data
def _unit_function(problem):
    lo, hi = problem.bounds[0], problem.bounds[1]
    return lambda U: problem.function(lo + U * (hi - lo))


def _near(points: torch.Tensor, k: int, g: torch.Generator, sd: float = 0.05) -> torch.Tensor:
    idx = torch.randint(points.shape[0], (k,), generator=g)
    noise = sd * torch.randn(k, points.shape[1], generator=g, dtype=points.dtype)
    return (points[idx] + noise).clamp(0, 1)


def make_design(problem, n: int, design: str, seed: int) -> torch.Tensor:
    d = problem.dim
    sobol = SobolEngine(d, scramble=True, seed=seed).draw(n).to(torch.float64)
    if design == "sobol":
        return sobol
    g = torch.Generator().manual_seed(seed)
    pool = SobolEngine(d, scramble=True, seed=10_000 + seed).draw(4096).to(torch.float64)
    f = _unit_function(problem)(pool).reshape(-1)
    top = pool[f.topk(5).indices]
    n_sobol = n // 2
    return torch.cat([sobol[:n_sobol], _near(top, n - n_sobol, g)])


# ---------------------------------------------------------------------- metrics
def _predict(model, X: torch.Tensor, observation_noise: bool) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        post = model.posterior(X.unsqueeze(-2), observation_noise=observation_noise)
        return post.mean.reshape(-1), post.variance.reshape(-1)


def _heldout(model, X: torch.Tensor, y: torch.Tensor, mu_y: float, sd_y: float) -> dict:
    mean, var = _predict(model, X, observation_noise=True)
    z, zm, zv = (y - mu_y) / sd_y, (mean - mu_y) / sd_y, var / sd_y**2
    zv = zv.clamp_min(1e-12)
    nlpd = 0.5 * (math.log(2 * math.pi) + zv.log() + (z - zm).pow(2) / zv)
    return {
        "nlpd": float(nlpd.mean()),
        "rmse": float((z - zm).pow(2).mean().sqrt()),
        "coverage": float(((z - zm).abs() <= 2 * zv.sqrt()).double().mean()),
    }


def propose_batch(model, X: torch.Tensor, q: int, seed: int) -> tuple[torch.Tensor, float]:
    """The qLogNEI maximiser (``q`` points, 10 restarts, 512 raw samples) on the unit cube
    given the data ``X``, and the seconds it took."""
    from botorch.acquisition import qLogNoisyExpectedImprovement
    from botorch.optim import optimize_acqf

    torch.manual_seed(seed)
    d = X.shape[-1]
    acqf = qLogNoisyExpectedImprovement(model, X_baseline=X, prune_baseline=True)
    unit = torch.stack([torch.zeros(d), torch.ones(d)]).to(X)
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cand, _ = optimize_acqf(acqf, bounds=unit, q=q, num_restarts=10, raw_samples=512)
    return cand.detach(), time.perf_counter() - t0


def _bo_step(model, X: torch.Tensor, f, best: float, sd_y: float, seed: int) -> dict:
    cand, seconds = propose_batch(model, X, 1, seed)
    value = float(f(cand).reshape(-1)[0])
    on_bound = ((cand <= 1e-6) | (cand >= 1 - 1e-6)).double().mean()
    return {"bo_gain": (value - best) / sd_y, "bo_bound": float(on_bound), "acq_s": seconds}


def run_job(job: tuple) -> list[dict]:
    """All variants on one (problem, n, design, seed); one record per variant."""
    problem_name, n, design, seed, variants = job
    torch.set_num_threads(1)
    from labo.bench.problems import get_problem

    problem = get_problem(problem_name)
    f = _unit_function(problem)
    d = problem.dim
    X = make_design(problem, n, design, seed)
    Y = f(X)
    y = Y.reshape(-1)
    mu_y, sd_y = float(y.mean()), float(y.std())
    g = torch.Generator().manual_seed(7_919 + seed)
    X_sobol = SobolEngine(d, scramble=True, seed=20_000 + seed).draw(512).to(torch.float64)
    top = X[y.topk(min(5, n)).indices]
    X_near = _near(top, 256, g)
    corners = torch.randint(0, 2, (256, d), generator=g).to(torch.float64)
    uniform = torch.rand(256, d, generator=g, dtype=torch.float64)
    y_sobol, y_near = f(X_sobol).reshape(-1), f(X_near).reshape(-1)
    out = []
    for variant in variants:
        rec = {"problem": problem_name, "n": n, "design": design, "seed": seed, "variant": variant, "d": d}
        try:
            t0 = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                model = fit_variant(variant, X, Y)
            rec["fit_s"] = time.perf_counter() - t0
            model.eval()
            for key, (Xt, yt) in {"sobol": (X_sobol, y_sobol), "near": (X_near, y_near)}.items():
                for metric, value in _heldout(model, Xt, yt, mu_y, sd_y).items():
                    rec[f"{metric}_{key}"] = value
            rec["var_corner"] = float(_predict(model, corners, False)[1].mean()) / sd_y**2
            rec["var_uniform"] = float(_predict(model, uniform, False)[1].mean()) / sd_y**2
            rec.update(_bo_step(model, X, f, float(y.max()), sd_y, seed))
        except Exception as err:  # noqa: BLE001 - a failing variant is recorded, the screen goes on
            rec["error"] = f"{type(err).__name__}: {err}"
        out.append(rec)
    return out


# ---------------------------------------------------------------------- summary
METRICS = (
    "nlpd_sobol",
    "rmse_sobol",
    "coverage_sobol",
    "nlpd_near",
    "rmse_near",
    "var_corner",
    "var_uniform",
    "bo_gain",
    "bo_bound",
    "fit_s",
    "acq_s",
)


def mean_se(values: list[float]) -> tuple[float, float]:
    """Mean and standard error (``nan`` for one value)."""
    v = torch.tensor(values, dtype=torch.float64)
    se = float(v.std() / math.sqrt(len(v))) if len(v) > 1 else float("nan")
    return float(v.mean()), se


def summarize(records: list[dict], by: tuple[str, ...] = ("problem", "variant")) -> list[dict]:
    groups: dict[tuple, list[dict]] = {}
    for r in records:
        if "error" not in r:
            groups.setdefault(tuple(r[k] for k in by), []).append(r)
    rows = []
    for key, recs in sorted(groups.items()):
        row = dict(zip(by, key, strict=True), count=len(recs))
        for m in METRICS:
            row[m], row[m + "_se"] = mean_se([r[m] for r in recs])
        rows.append(row)
    return rows


def paired_vs_gp(records: list[dict], metric: str) -> list[dict]:
    """Mean ± s.e. over the paired cases of (variant − gp) for ``metric``."""
    gp = {(r["problem"], r["n"], r["design"], r["seed"]): r for r in records if r["variant"] == "gp"}
    diffs: dict[tuple, list[float]] = {}
    for r in records:
        key = (r["problem"], r["n"], r["design"], r["seed"])
        if r["variant"] == "gp" or "error" in r or key not in gp or "error" in gp[key]:
            continue
        diffs.setdefault((r["problem"], r["variant"]), []).append(r[metric] - gp[key][metric])
    return [
        {"problem": p, "variant": v, "metric": metric, **dict(zip(("mean", "se"), mean_se(d), strict=True))}
        for (p, v), d in sorted(diffs.items())
    ]


def format_table(rows: list[dict]) -> str:
    cols = ("nlpd_sobol", "rmse_sobol", "coverage_sobol", "nlpd_near", "var_corner", "var_uniform")
    cols += ("bo_gain", "bo_bound", "fit_s", "acq_s")
    head = "| problem | variant | " + " | ".join(cols) + " |"
    lines = [head, "|" + "---|" * (len(cols) + 2)]
    for r in rows:
        cells = [
            f"{r[c]:.2f} ± {r[c + '_se']:.2f}"
            if c in ("nlpd_sobol", "nlpd_near", "bo_gain")
            else f"{r[c]:.2f}"
            for c in cols
        ]
        lines.append(f"| {r['problem']} | {r['variant']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--variants", default=DEFAULT_VARIANTS)
    parser.add_argument("--cases", default=None, help="problem:n,... (default: the full or reduced set)")
    parser.add_argument("--designs", default="sobol,local")
    parser.add_argument("--seeds", type=int, default=None, help="default 3 (full) or 2 (reduced)")
    parser.add_argument("--reduced", action="store_true", help="3 problems, 2 seeds: for 2 cores")
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--tag", default="screen")
    parser.add_argument("--out", default=None, help="JSON path (default results/surrogate_screen_<tag>.json)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.cases:
        cases = [(c.split(":")[0], int(c.split(":")[1])) for c in args.cases.split(",")]
    else:
        cases = REDUCED_CASES if args.reduced else FULL_CASES
    seeds = args.seeds or (2 if args.reduced else 3)
    variants = args.variants.split(",")
    jobs = [
        (p, n, design, seed, variants)
        for p, n in cases
        for design in args.designs.split(",")
        for seed in range(seeds)
        if not (p == "ackley10_many" and design == "local")
    ]
    # the slowest first, so the pool's tail is short
    jobs.sort(key=lambda j: -j[1] * (1 + (j[0] == "hartmann6_100d") * 4))
    t0 = time.perf_counter()
    records: list[dict] = []
    if args.jobs > 1:
        ctx = multiprocessing.get_context("spawn")
        with ctx.Pool(args.jobs, maxtasksperchild=1) as pool:
            for recs in pool.imap_unordered(run_job, jobs):
                records += recs
                print(
                    f"[{time.perf_counter() - t0:6.0f} s] {recs[0]['problem']} n={recs[0]['n']} "
                    f"{recs[0]['design']} seed {recs[0]['seed']}",
                    flush=True,
                )
    else:
        for job in jobs:
            records += run_job(job)
    errors = [r for r in records if "error" in r]
    for r in errors:
        print(f"error: {r['problem']} n={r['n']} {r['design']} seed {r['seed']} {r['variant']}: {r['error']}")
    summary = summarize(records)
    overall = summarize(records, by=("variant",))
    for r in overall:
        r["problem"] = "all"
    print(format_table(summary + overall))
    paired = [x for m in ("nlpd_sobol", "nlpd_near", "bo_gain") for x in paired_vs_gp(records, m)]
    out = Path(args.out) if args.out else RESULTS / f"surrogate_screen_{args.tag}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "config": {**vars(args), "cases": cases, "seeds": seeds},
        "seconds_total": time.perf_counter() - t0,
        "torch": torch.__version__,
        "summary": summary,
        "overall": overall,
        "paired_vs_gp": paired,
        "records": records,
    }
    out.write_text(json.dumps(payload, indent=1, default=str))
    print(f"wrote {out} ({time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
