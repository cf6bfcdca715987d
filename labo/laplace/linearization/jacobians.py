"""Network outputs and their Jacobians w.r.t. the selected weights.

The Jacobian is taken with ``torch.func``: ``vmap`` over inputs of ``jacrev``
with respect to the flat vector of *selected* weights only (see
``subsets.ResolvedSubset.functional``), so its cost and memory scale with the
number of selected weights S, never with the full parameter count. ``jacrev``
costs one vector-Jacobian product per output, the cheap direction for the few
outputs of a BO surrogate. The result stays differentiable w.r.t. ``X``
(acquisition gradients flow through it).
"""

from __future__ import annotations

from torch import Tensor, nn
from torch.func import jacrev, vmap

from labo.exceptions import InputShapeError
from labo.laplace.linearization.masked_jacobians import masked_linear_jacobian
from labo.laplace.subsets import ResolvedSubset

# Largest number of Jacobian entries built at once (about 32 MB in float64).
JACOBIAN_CHUNK_ENTRIES = 2**22


def chunk_rows(n: int, per_row: int, budget: int = JACOBIAN_CHUNK_ENTRIES) -> int:
    """Rows per chunk so that ``rows * per_row`` stays within ``budget`` entries."""
    return max(1, min(n, budget // max(per_row, 1)))


def output_and_jacobian(
    network: nn.Module, subset: ResolvedSubset, X: Tensor, theta: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Outputs ``(N, K)`` and Jacobians ``(N, K, S)`` for inputs ``X`` of shape ``(N, ...)``.

    Args:
        network: The network; it maps ``(B, ...)`` inputs to ``(B, K)`` outputs.
        subset: The selected weights (S of them).
        X: Inputs, one row per data point.
        theta: Values of the selected weights; the network's current ones if omitted.
    """
    if theta is None:  # partly selected Linear tensors: O(N K S) instead of per-row full gradients
        fast = masked_linear_jacobian(network, subset, X)
        if fast is not None:
            return fast
        theta = subset.get_theta(network)
    f = subset.functional(network)

    def single(th: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
        out = f(th, x.unsqueeze(0)).squeeze(0)
        return out, out

    jac = vmap(jacrev(single, has_aux=True), in_dims=(None, 0))
    J, F = jac(theta, X)
    return F, J


def iter_output_and_jacobian(network: nn.Module, subset: ResolvedSubset, X: Tensor, n_outputs: int):
    """Yield ``(rows, F, J)`` over chunks of ``X`` sized to bound the Jacobian's memory."""
    rows = chunk_rows(X.shape[0], n_outputs * subset.n_weights)
    for start in range(0, X.shape[0], rows):
        sl = slice(start, start + rows)
        F, J = output_and_jacobian(network, subset, X[sl])
        yield sl, F, J


def network_output(network: nn.Module, X: Tensor) -> Tensor:
    """The network output for ``X`` of shape ``(N, ...)``, checked to be ``(N, K)``."""
    F = network(X)
    if F.dim() != 2 or F.shape[0] != X.shape[0]:
        raise InputShapeError(
            f"The network must map inputs of shape (n, ...) to outputs (n, K); "
            f"for X of shape {tuple(X.shape)} it returned {tuple(F.shape)}."
        )
    return F


__all__ = ["output_and_jacobian", "iter_output_and_jacobian", "network_output", "chunk_rows"]
