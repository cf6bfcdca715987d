"""EKFAC vs K-FAC vs the exact GGN on the predictive variance of the suite's MLP (issue 24).

The default network of ``LaplaceModel(network="mlp")`` (d-64-64-1, tanh) is trained to
its MAP on a few points of Hartmann6 (standardised), with weight decay matching a prior
precision of 1 and noise 0.1 (hyperparameters then fixed for all three, so only the
curvature differs). At 500 uniform test points the GLM predictive variance of

* Full: the exact GGN (labo),
* Kron: K-FAC (labo; ``G ⊗ A`` per layer, prior added exactly),
* EKFAC: curvlinops' ``EKFACLinearOperator`` (K-FAC's eigenvectors, eigenvalues
  corrected to the GGN's diagonal in that basis, ``Q diag(s · e + δ) Qᵀ`` per layer),

is compared: the median and 90th percentile of ``|log(v / v_exact)|`` and the time to
compute the curvature (Full and Kron: ``fit_laplace``, with the eigendecomposition;
EKFAC: curvlinops' factors, eigenvectors and corrected eigenvalues, after one warm-up
call so that the import of curvlinops is not counted). Writes JSON to
``benchmarks/results/ekfac_variance.json``.

Run: ``.venv/bin/python benchmarks/ekfac_variance.py [--sizes 20 50 200] [--seeds 3]``
"""

import argparse
import json
import time
from pathlib import Path

import torch
from botorch.test_functions import Hartmann
from torch import nn

from labo.laplace import AllWeights, Full, Kron, fit_laplace
from labo.laplace.linearization.jacobians import output_and_jacobian
from labo.surrogates.networks import default_network

PRIOR, NOISE = 1.0, 0.1


def train(net, X, Y, steps=2000):
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(steps):
        opt.zero_grad()
        loss = (net(X) - Y).pow(2).sum() / (2 * NOISE**2)
        loss = loss + 0.5 * PRIOR * sum(p.pow(2).sum() for p in net.parameters())
        loss.backward()
        opt.step()


def ekfac_covariance(net, X):
    """Dense block-diagonal posterior covariance from curvlinops' EKFAC (MSELoss sum: /2), and the
    seconds the EKFAC curvature took (the operator's factors, eigenvectors and corrected
    eigenvalues; not the dense covariance built here for the comparison)."""
    from curvlinops import EKFACLinearOperator

    t0 = time.perf_counter()
    params = list(net.parameters())
    Yd = torch.zeros(X.shape[0], 1, dtype=X.dtype)
    op = EKFACLinearOperator(
        net,
        nn.MSELoss(reduction="sum"),
        params,
        [(X, Yd)],
        fisher_type="type-2",
        separate_weight_and_bias=False,
        check_deterministic=False,
        num_data=X.shape[0],
        num_per_example_loss_terms=1,
    )
    op.compute_eigenvalue_correction()
    seconds = time.perf_counter() - t0
    S = sum(p.numel() for p in params)
    cov = torch.zeros(S, S, dtype=X.dtype)
    offset = 0
    for name, module in net.named_modules():
        if not isinstance(module, nn.Linear):
            continue
        QA = op._input_covariances_eigenvectors[name]
        QG = op._gradient_covariances_eigenvectors[name]
        e = op._corrected_eigenvalues[name] / 2  # (out, in + 1)
        out_f, in_f = module.weight.shape
        # labo's flat order: weight (out, in) row-major, then bias (out,)
        w_idx = offset + torch.arange(out_f * in_f).reshape(out_f, in_f)
        b_idx = offset + out_f * in_f + torch.arange(out_f).reshape(out_f, 1)
        index = torch.cat([w_idx, b_idx], 1).reshape(-1)
        Q = torch.kron(QG, QA)
        block = (Q / (e.reshape(-1) / NOISE**2 + PRIOR)) @ Q.T
        cov[index.unsqueeze(-1), index] = block
        offset += out_f * (in_f + 1)
    return cov, seconds


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[20, 50, 200])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--out", default="benchmarks/results/ekfac_variance.json")
    args = parser.parse_args()
    problem = Hartmann(dim=6)
    warm = default_network(6, 1, dtype=torch.float64)
    ekfac_covariance(warm, torch.rand(4, 6, dtype=torch.float64))  # import curvlinops once
    rows = []
    for n in args.sizes:
        for seed in range(args.seeds):
            g = torch.Generator().manual_seed(seed)
            X = torch.rand(n, 6, generator=g, dtype=torch.float64)
            Y = problem(X).unsqueeze(-1)
            Y = (Y - Y.mean()) / Y.std()
            torch.manual_seed(seed)
            net = default_network(6, 1, dtype=torch.float64)
            train(net, X, Y)
            X_test = torch.rand(500, 6, generator=g, dtype=torch.float64)
            kw = dict(weights=AllWeights(), prior_precision=PRIOR, noise_std=NOISE)
            t0 = time.perf_counter()
            full = fit_laplace(net, X, Y, structure=Full(), **kw)
            t_full = time.perf_counter() - t0
            t0 = time.perf_counter()
            kron = fit_laplace(net, X, Y, structure=Kron(), **kw)
            t_kron = time.perf_counter() - t0
            cov, t_ekfac = ekfac_covariance(net, X)
            v_full = full.predictive_variance(X_test).squeeze(-1)
            v_kron = kron.predictive_variance(X_test).squeeze(-1)
            _, J = output_and_jacobian(net, full.subset, X_test)
            J = J.squeeze(1)
            v_ekfac = ((J @ cov) * J).sum(-1)
            row = {"n": n, "seed": seed, "S": full.n_weights, "time_full_s": t_full}
            row["time_kron_s"], row["time_ekfac_s"] = t_kron, t_ekfac
            for label, v in (("kron", v_kron), ("ekfac", v_ekfac)):
                err = (v / v_full).log().abs()
                row[f"{label}_median_abs_log_ratio"] = float(err.median())
                row[f"{label}_p90_abs_log_ratio"] = float(err.quantile(0.9))
                row[f"{label}_mean_log_ratio"] = float((v / v_full).log().mean())
            rows.append(row)
            print(
                f"n={n:4d} seed={seed}  |log(v/v_exact)| median/p90: K-FAC "
                f"{row['kron_median_abs_log_ratio']:.3f}/{row['kron_p90_abs_log_ratio']:.3f}  EKFAC "
                f"{row['ekfac_median_abs_log_ratio']:.3f}/{row['ekfac_p90_abs_log_ratio']:.3f}  "
                f"(bias K-FAC {row['kron_mean_log_ratio']:+.3f}, EKFAC {row['ekfac_mean_log_ratio']:+.3f})  "
                f"time Full {t_full:.2f}s Kron {t_kron:.2f}s EKFAC {t_ekfac:.2f}s",
                flush=True,
            )
    result = {"benchmark": "ekfac_variance", "network": "default_network(6, 1) d-64-64-1 tanh", "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
