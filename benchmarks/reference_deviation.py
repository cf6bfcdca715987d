"""Largest deviation of each structure from the dense float64 reference (issue 3 closing note).

For every structure x subset x likelihood x prior shape of tests/laplace/test_laplace.py,
compares the predictive mean and covariance, the log marginal likelihood and its
gradients w.r.t. prior precision and noise with tests/_reference.py, and prints the
largest absolute deviation per structure. Run from the repository root:
``.venv/bin/python benchmarks/reference_deviation.py``
"""

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from labo.laplace import fit_laplace  # noqa: E402
from tests import _reference as ref  # noqa: E402
from tests.conftest import make_problem  # noqa: E402
from tests.laplace.test_laplace import CASES, STRUCTURES, make_prior, make_weights  # noqa: E402


def main():
    worst: dict[str, dict[str, float]] = {}
    for lik, sizes, wkind, skind, pkind in CASES:
        net, X, Y = make_problem(lik, sizes, n=12)
        weights = make_weights(wkind, net)
        prior = make_prior(pkind, weights.resolve(net))
        noise = torch.tensor(0.4, dtype=torch.float64)
        la = fit_laplace(net, X, Y, lik, weights, STRUCTURES[skind](), prior, noise)
        H = ref.dense_precision(net, X, Y, lik, weights, skind, prior, noise)
        Xn = torch.randn(5, X.shape[1], dtype=torch.float64, generator=torch.Generator().manual_seed(9))
        mean, cov = la.predictive(Xn)
        rmean, rcov = ref.dense_predictive(net, Xn, weights, H)
        p1, s1 = prior.clone().requires_grad_(True), noise.clone().requires_grad_(True)
        p2, s2 = prior.clone().requires_grad_(True), noise.clone().requires_grad_(True)
        lml = la.log_marginal_likelihood(p1, s1)
        H2 = ref.dense_precision(net, X, Y, lik, weights, skind, p2, s2)
        rlml = ref.dense_log_marginal_likelihood(net, X, Y, lik, weights, H2, p2, s2)
        g = torch.autograd.grad(lml, (p1, s1), allow_unused=True)
        rg = torch.autograd.grad(rlml, (p2, s2), allow_unused=True)
        dev = {
            "mean": float((mean - rmean).abs().max()),
            "cov": float((cov - rcov).abs().max()),
            "lml": float((lml - rlml).detach().abs()),
            "lml_grad": max(
                float((a - b).abs().max())
                for a, b in zip(g, rg, strict=True)
                if a is not None and b is not None
            ),
        }
        w = worst.setdefault(skind, dict.fromkeys(dev, 0.0))
        for k, v in dev.items():
            w[k] = max(w[k], v)
    for skind, w in worst.items():
        print(f"{skind:10} " + "  ".join(f"{k} {v:.2e}" for k, v in w.items()))
    out = Path("benchmarks/results/reference_deviation.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(worst, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
