"""The default network of ``LaplaceModel``.

An MLP ``d -> 64 -> 64 -> m`` with tanh activations. Why: tanh keeps the
surrogate smooth, so acquisition gradients w.r.t. the inputs (which flow
through the network Jacobians) are well behaved, unlike ReLU's piecewise-linear
surface; two hidden layers of 64 units fit BO-sized data sets (tens to thousands
of points) without overfitting badly once the prior precision is tuned by the
marginal likelihood; and the first layer, the only one that grows with ``d``,
stays at ``64 d`` weights, so ``d = 1000`` gives about 68k weights, which the
default Kron posterior handles with 1000x1000 and 64x64 factors.
"""

from __future__ import annotations

import torch
from torch import nn

DEFAULT_WIDTH = 64


def default_network(
    d: int, m: int, width: int = DEFAULT_WIDTH, dtype: torch.dtype | None = None, device=None
) -> nn.Sequential:
    """MLP ``d -> width -> width -> m`` with tanh activations."""
    net = nn.Sequential(
        nn.Linear(d, width), nn.Tanh(), nn.Linear(width, width), nn.Tanh(), nn.Linear(width, m)
    )
    return net.to(dtype=dtype, device=device)
