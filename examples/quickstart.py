"""Quickstart: fit a Laplace posterior to a small network and print its predictive.

Trains a 1-32-32-1 MLP on noisy samples of sin(3x), fits the Laplace
approximation with each structure (Kron, Diagonal, Full; all weights and the
last layer), tunes the prior precision and noise by the marginal likelihood and
prints the predictive mean ± two standard deviations at a few test inputs:
inside the data the uncertainty is small, outside it grows.

Run from the repository root: ``.venv/bin/python examples/quickstart.py`` (``make test``
or ``make demo`` creates ``.venv``; ``make demo`` itself runs ``labo demo``, the BO demo).
"""

import torch
from torch import nn

from labo.laplace import AllWeights, Diagonal, Full, Kron, LastLayer, fit_laplace, optimize_hyperparameters


def train_map(X, Y, steps=1500):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(1, 32), nn.Tanh(), nn.Linear(32, 32), nn.Tanh(), nn.Linear(32, 1)).double()
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(steps):
        opt.zero_grad()
        loss = (net(X) - Y).pow(2).mean() + 1e-4 * sum(p.pow(2).sum() for p in net.parameters())
        loss.backward()
        opt.step()
    return net


def main():
    g = torch.Generator().manual_seed(1)
    X = torch.rand(60, 1, generator=g, dtype=torch.float64) * 2 - 1  # data in [-1, 1]
    Y = torch.sin(3 * X) + 0.1 * torch.randn(60, 1, generator=g, dtype=torch.float64)
    net = train_map(X, Y)
    X_test = torch.tensor([[-2.0], [-1.0], [0.0], [0.5], [1.0], [2.0]], dtype=torch.float64)
    print(f"MAP network trained on n={len(X)} points in [-1, 1]; test inputs {X_test.squeeze(-1).tolist()}")
    for weights in (AllWeights(), LastLayer()):
        for structure in (Kron(), Diagonal(), Full()):
            la = fit_laplace(net, X, Y, weights=weights, structure=structure, noise_std=0.1)
            optimize_hyperparameters(la)
            mean, cov = la.predictive(X_test)
            std = cov.reshape(len(X_test), len(X_test)).diagonal().sqrt()
            cells = "  ".join(f"{m:+.2f}±{2 * s:.2f}" for m, s in zip(mean.squeeze(-1), std, strict=True))
            print(
                f"{weights!r:13} {structure!r:11} S={la.n_weights:5d} "
                f"prior={float(la.prior_precision):7.3f} noise={float(la.noise_std):.3f} "
                f"lml={float(la.log_marginal_likelihood()):8.2f} | {cells}"
            )
    truth = "  ".join(f"{float(v):+.2f}" for v in torch.sin(3 * X_test))
    print(f"true sin(3x) at the test inputs: {truth}")


if __name__ == "__main__":
    main()
