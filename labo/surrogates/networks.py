"""The networks of ``LaplaceModel``.

``default_network``: an MLP ``d -> 64 -> 64 -> m`` with tanh activations. Why: tanh
keeps the surrogate smooth, so acquisition gradients w.r.t. the inputs (which flow
through the network Jacobians) are well behaved, unlike ReLU's piecewise-linear
surface; two hidden layers of 64 units fit BO-sized data sets (tens to thousands
of points) without overfitting badly once the prior precision is tuned by the
marginal likelihood; and the first layer, the only one that grows with ``d``,
stays at ``64 d`` weights, so ``d = 1000`` gives about 68k weights, which the
default Kron posterior handles with 1000x1000 and 64x64 factors.

``rbf_network``: Gaussian radial-basis features ``exp(-||x - c_j||² / (2ℓ²))`` around
64 learnable centres, then ``64 -> 64 -> m`` with tanh (``LaplaceModel(network="rbf")``).
Its features vanish away from the centres, so the network's mean flattens and its
predictive variance settles away from the data, as a stationary GP's do; the MLP's
mean keeps rising towards the faces of the box, where qLogNEI's candidates then pile
up (``docs/benchmarks.md``, "What pushes the default model's candidates onto the
bounds"). By default only its two linear layers are Bayesian (``RBF_BAYESIAN_LAYERS``)
and the centres and the lengthscale are fitted by MAP training; with every weight
Bayesian under Kron the centres get a closed-form predictive (``labo.laplace.rbf``).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from labo.laplace.rbf import RBFFeatures

DEFAULT_WIDTH = 64
# The modules of rbf_network whose weights LaplaceModel(network="rbf") makes Bayesian.
RBF_BAYESIAN_LAYERS = ("1", "3")


def default_network(
    d: int, m: int, width: int = DEFAULT_WIDTH, dtype: torch.dtype | None = None, device=None
) -> nn.Sequential:
    """MLP ``d -> width -> width -> m`` with tanh activations."""
    net = nn.Sequential(
        nn.Linear(d, width), nn.Tanh(), nn.Linear(width, width), nn.Tanh(), nn.Linear(width, m)
    )
    return net.to(dtype=dtype, device=device)


def rbf_centres(X: Tensor, n_centres: int) -> Tensor:
    """``n_centres`` rows of ``X`` drawn without replacement; when ``X`` has fewer rows,
    all of them plus uniform draws in the bounding box of ``X``."""
    n = X.shape[0]
    if n >= n_centres:
        return X[torch.randperm(n, device=X.device)[:n_centres]]
    lo, hi = X.min(0).values, X.max(0).values
    hi = torch.where(hi > lo, hi, lo + 1)
    extra = lo + (hi - lo) * torch.rand(n_centres - n, X.shape[1], dtype=X.dtype, device=X.device)
    return torch.cat([X, extra])


def rbf_network(
    X: Tensor, m: int, n_centres: int = DEFAULT_WIDTH, width: int = DEFAULT_WIDTH
) -> nn.Sequential:
    """RBF features around ``n_centres`` centres drawn from the (transformed) inputs
    ``X`` (``n x d``), then ``n_centres -> width -> m`` with tanh.

    The lengthscale starts at the median distance between the centres (``sqrt(d / 6)``,
    that of uniform points in the unit cube, when they coincide).
    """
    centres = rbf_centres(X, n_centres)
    dist = torch.cdist(centres, centres)
    off = dist[~torch.eye(n_centres, dtype=torch.bool, device=X.device)]
    off = off[off > 0]
    lengthscale = float(off.median()) if off.numel() else (X.shape[1] / 6) ** 0.5
    net = nn.Sequential(
        RBFFeatures(centres, lengthscale), nn.Linear(n_centres, width), nn.Tanh(), nn.Linear(width, m)
    )
    return net.to(dtype=X.dtype, device=X.device)
