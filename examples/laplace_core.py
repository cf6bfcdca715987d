"""The Laplace core without BO: regression and classification, every structure and weight subset.

Regression: an MLP 1-32-32-1 is trained (MAP) on noisy sin(3x) observed in two
clusters, [-1, -0.3] and [0.3, 1]. A Laplace posterior is fitted for each
combination of weights (all, last layer, a subnetwork of the 10% of weights with
the largest diagonal-Laplace variance, chosen by ``labo.laplace.largest_variance``)
and structure (Full, Diagonal, Kron, Functional); its prior precision and noise
are tuned by the marginal likelihood.
The table shows the number of Bayesian weights S, the fit time, the tuned
hyperparameters, the log marginal likelihood, the test log likelihood and the
predictive standard deviation inside the data, in the gap between the clusters
and outside the data: it should grow from the first to the last.

Classification: an MLP 2-16-16-2 is trained on two Gaussian blobs; the Laplace
posterior over its logits (Kron, all weights; Full, last layer) gives class
probabilities by the probit approximation ``softmax(μ / sqrt(1 + π σ² / 8))``
(``la.predictive_probs(X)``; ``link="mc"`` averages over function samples instead).
The Laplace probabilities are less extreme than the MAP network's, most of all
between the blobs and away from the data (how much depends on the tuned prior;
tanh networks saturate, so far away neither goes back to 0.5).

The subnetwork row is a warning as much as an example: weights picked for their
large *diagonal* variance, once their prior is tuned by the marginal likelihood,
give a posterior that is far too confident. Which weights are Bayesian matters
(see docs/guide.md); the last layer is the safe cheap choice.

Run: ``python examples/laplace_core.py`` (``--smoke`` for a quick check,
``--out DIR`` to write ``laplace_core.png`` with the predictive bands).
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import torch
from torch import nn

from labo.laplace import (
    AllWeights,
    Diagonal,
    Full,
    Functional,
    Kron,
    LastLayer,
    WeightMask,
    fit_laplace,
    largest_variance,
    optimize_hyperparameters,
)


def mlp(sizes, seed=0):
    torch.manual_seed(seed)
    layers = []
    for a, b in zip(sizes[:-1], sizes[1:], strict=True):
        layers += [nn.Linear(a, b), nn.Tanh()]
    return nn.Sequential(*layers[:-1]).double()


def train(net, X, Y, loss_fn, steps, weight_decay=1e-4):
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(steps):
        opt.zero_grad()
        loss = loss_fn(net(X), Y) + weight_decay * sum(p.pow(2).sum() for p in net.parameters())
        loss.backward()
        opt.step()
    return net


def regression_data(n, seed=1):
    g = torch.Generator().manual_seed(seed)
    X = torch.rand(n, 1, generator=g, dtype=torch.float64) * 0.7 + 0.3
    X = X * torch.where(torch.rand(n, 1, generator=g) < 0.5, -1.0, 1.0).double()
    Y = torch.sin(3 * X) + 0.1 * torch.randn(n, 1, generator=g, dtype=torch.float64)
    return X, Y


def regression(smoke: bool):
    X, Y = regression_data(60)
    net = train(mlp([1, 32, 32, 1]), X, Y, lambda f, y: (f - y).pow(2).mean(), 400 if smoke else 2000)
    X_test = torch.linspace(-1, 1, 101, dtype=torch.float64).unsqueeze(-1)
    Y_test = torch.sin(3 * X_test)
    regions = {
        "data": (X_test.abs() >= 0.3).squeeze(-1),
        "gap": (X_test.abs() < 0.15).squeeze(-1),
    }
    X_out = torch.tensor([[-2.0], [2.0]], dtype=torch.float64)
    subnet = largest_variance(net, X, Y, fraction=0.1, noise_std=0.1)  # Daxberger et al. (2021)
    configs = [(AllWeights(), s) for s in (Full(), Diagonal(), Kron(), Functional())]
    configs += [(LastLayer(), Full()), (LastLayer(), Kron()), (subnet, Full())]
    print("Regression: MLP 1-32-32-1, n=60 in [-1,-0.3] u [0.3,1], test on [-1, 1]")
    print(f"{'weights':22} {'structure':12} {'S':>5} {'fit ms':>7} {'prior':>8} {'noise':>6} {'lml':>8} "
          f"{'test ll':>8} {'std data':>8} {'std gap':>8} {'std |x|=2':>9}")  # fmt: skip
    bands = {}
    for weights, structure in configs:
        t0 = time.perf_counter()
        la = fit_laplace(net, X, Y, weights=weights, structure=structure, noise_std=0.1)
        optimize_hyperparameters(la, n_steps=30 if smoke else 100)
        ms = 1000 * (time.perf_counter() - t0)
        with torch.no_grad():
            mean = net(X_test)
            var = la.predictive_variance(X_test)
            pred_var = var + la.noise_std.pow(2)
            test_ll = float(
                (-0.5 * (math.log(2 * math.pi) + pred_var.log() + (Y_test - mean).pow(2) / pred_var)).mean()
            )
            std = var.sqrt().squeeze(-1)
            std_out = la.predictive_variance(X_out).sqrt().mean()
        name = "WeightMask (top 10%)" if isinstance(weights, WeightMask) else repr(weights)
        print(
            f"{name:22} {structure!r:12} {la.n_weights:5d} {ms:7.1f} {float(la.prior_precision):8.3f} "
            f"{float(la.noise_std):6.3f} {float(la.log_marginal_likelihood()):8.2f} {test_ll:8.3f} "
            f"{float(std[regions['data']].mean()):8.3f} {float(std[regions['gap']].mean()):8.3f} "
            f"{float(std_out):9.3f}"
        )
        bands[f"{name}, {structure!r}"] = std
    return X, Y, X_test, net(X_test).detach().squeeze(-1), bands


def classification(smoke: bool):
    g = torch.Generator().manual_seed(2)
    n = 100
    labels = torch.arange(n) % 2
    centres = torch.tensor([[-1.0, 0.0], [1.0, 0.0]], dtype=torch.float64)
    X = centres[labels] + 0.8 * torch.randn(n, 2, generator=g, dtype=torch.float64)
    net = train(mlp([2, 16, 16, 2], seed=3), X, labels, nn.functional.cross_entropy, 300 if smoke else 1000)
    X_probe = torch.tensor([[-1.0, 0.0], [0.0, 0.0], [1.0, 0.0], [0.0, 6.0], [8.0, 8.0]], dtype=torch.float64)
    print("\nClassification: MLP 2-16-16-2 on two blobs centred at (-1, 0) and (1, 0)")
    print(f"{'probe':>12} | {'MAP max p':>9} | {'Kron, all':>9} | {'Full, last layer':>16}")
    fits = {}
    for key, weights, structure in (("kron", AllWeights(), Kron()), ("last", LastLayer(), Full())):
        la = fit_laplace(net, X, labels, likelihood="classification", weights=weights, structure=structure)
        optimize_hyperparameters(la, n_steps=30 if smoke else 100)
        fits[key] = la
    with torch.no_grad():
        p_map = torch.softmax(net(X_probe), -1).max(-1).values
        p_kron = fits["kron"].predictive_probs(X_probe).max(-1).values
        p_last = fits["last"].predictive_probs(X_probe).max(-1).values
    for x, a, b, c in zip(X_probe.tolist(), p_map, p_kron, p_last, strict=True):
        print(f"({x[0]:4.1f}, {x[1]:4.1f}) | {float(a):9.3f} | {float(b):9.3f} | {float(c):16.3f}")
    return X, labels, fits["kron"]


def plot(path: Path, reg, cls):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    X, Y, X_test, mean, bands = reg
    keys = [
        k for k in bands if k.startswith(("AllWeights(), Kron", "AllWeights(), Full", "LastLayer(), Full"))
    ]
    keys += [k for k in bands if k.startswith("WeightMask")]
    fig, axes = plt.subplots(1, len(keys) + 1, figsize=(4 * (len(keys) + 1), 3.4))
    x = X_test.squeeze(-1)
    for ax, key in zip(axes, keys, strict=False):
        ax.fill_between(x, mean - 2 * bands[key], mean + 2 * bands[key], alpha=0.3, label="± 2 std (latent)")
        ax.plot(x, mean, "C0", label="MAP network")
        ax.plot(x, torch.sin(3 * x), "k--", lw=0.8, label="sin(3x)")
        ax.plot(X.squeeze(-1), Y.squeeze(-1), "k.", ms=3)
        ax.set_title(key, fontsize=9)
    axes[0].legend(fontsize=7)
    Xc, labels, la = cls
    grid = torch.linspace(-6, 6, 80, dtype=torch.float64)
    G = torch.stack(torch.meshgrid(grid, grid, indexing="xy"), -1).reshape(-1, 2)
    with torch.no_grad():
        conf = la.predictive_probs(G).max(-1).values.reshape(80, 80)
    ax = axes[-1]
    im = ax.contourf(grid, grid, conf, levels=20, vmin=0.5, vmax=1.0)
    ax.scatter(Xc[:, 0], Xc[:, 1], c=labels, s=6, cmap="coolwarm")
    ax.set_title("classification: Laplace confidence (Kron)", fontsize=9)
    fig.colorbar(im, ax=ax)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    print(f"wrote {path}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="short training (a CI check, not a result)")
    parser.add_argument("--out", type=Path, default=None, help="directory for laplace_core.png")
    args = parser.parse_args(argv)
    reg = regression(args.smoke)
    cls = classification(args.smoke)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        plot(args.out / "laplace_core.png", reg, cls)


if __name__ == "__main__":
    main()
