"""``J(x) S J(x)ᵀ`` without materialising the Jacobian of all outputs at once.

The backend of laplace-torch issue #203 (``../shared/seeds/001_*``): for a
posterior covariance ``S = H⁻¹`` over the selected weights, the GLM covariance of
the outputs is the operator ``v ↦ J S Jᵀ v``, computed with ``torch.func``:

* ``vjp`` (reverse mode) gives rows ``J_k(x)ᵀ``: one output ``k`` for every input
  row at once (``vmap`` over the rows of ``grad``), memory ``O(n · S)``;
* ``S`` is applied by the structure's ``solve`` (Full, Diagonal, Kron, Functional);
* ``jvp`` (forward mode) maps a weight direction ``w`` to ``J(x) w`` for all outputs.

Modes of :func:`glm_predictive` / :func:`glm_variance` in ``labo.laplace.predictive.glm``:

``"factors"``
    Closed forms from per-layer factors, no Jacobian at all (whole Linear layers;
    see :mod:`labo.laplace.linearization.linear_factors`). The fastest where it applies.
``"jacobian"``
    ``vmap`` over the K outputs of ``vjp`` (``jacrev``): the ``(rows, K, S)``
    Jacobian, in memory-bounded chunks of rows. Small K; differentiable w.r.t. x.
``"loop"``
    One output at a time: ``U_k = J_k(x)ᵀ`` ``(rows, S)``; variances are
    ``quad_diag(U_k)``; the joint covariance takes columns ``J(x) (S U_kᵀ)`` by
    ``jvp``. Peak memory ``O(rows · S)`` whatever K: large K. Differentiable too
    (the loop is ordinary autograd), at the memory cost of the graph.
``"auto"``
    ``"factors"`` if available, else ``"jacobian"`` while one row's ``K x S``
    Jacobian fits the chunk budget, else ``"loop"``. A Kron posterior whose diagonal
    rest is an ``RBFFeatures`` module's centres takes the Linear-layer factors plus the
    closed form of :mod:`labo.laplace.linearization.rbf` instead.

Linearised function samples ``f(x) + J(x)(θ_s − θ̂)`` (cost independent of K, one
``jvp`` per sample) are :func:`labo.laplace.predictive.glm.predictive_samples`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor
from torch.func import grad, jvp, vmap

from labo.exceptions import StructureError
from labo.laplace.linearization.jacobians import JACOBIAN_CHUNK_ENTRIES
from labo.laplace.structures.protocol import Precision

if TYPE_CHECKING:
    from labo.laplace.laplace import LaplaceApproximation

MODES = ("auto", "factors", "jacobian", "loop")


def check_mode(mode: str) -> str:
    if mode not in MODES:
        raise StructureError(f"mode must be one of {MODES}, got {mode!r}.")
    return mode


def auto_mode(has_factors: bool, n_outputs: int, n_weights: int) -> str:
    """The ``"auto"`` rule (see the module docstring)."""
    if has_factors:
        return "factors"
    return "jacobian" if n_outputs * n_weights <= JACOBIAN_CHUNK_ENTRIES else "loop"


def output_rows(la: LaplaceApproximation, rows: Tensor, k: int) -> Tensor:
    """``J_k(x)`` for every row: ``(N, S)``, by ``vmap`` over rows of one reverse-mode pass."""
    f = la.subset.functional(la.network)
    theta = la.subset.get_theta(la.network)

    def out_k(th: Tensor, x: Tensor) -> Tensor:
        return f(th, x.unsqueeze(0))[0, k]

    return vmap(grad(out_k), in_dims=(None, 0))(theta, rows)


def loop_variance(la: LaplaceApproximation, rows: Tensor, precision: Precision, n_outputs: int) -> Tensor:
    """Marginal variances ``(N, K)``, one output at a time (peak memory ``O(N · S)``)."""
    return torch.stack([precision.quad_diag(output_rows(la, rows, k)) for k in range(n_outputs)], dim=-1)


def loop_joint(
    la: LaplaceApproximation, rows: Tensor, batch: torch.Size, n: int, precision: Precision, n_outputs: int
) -> Tensor:
    """Joint covariance ``(*batch, n, K, n, K)`` within each t-batch, one output at a time.

    For output ``k``: ``W = S U_kᵀ`` (one solve), then ``J(x_b) W[:, b]`` by a ``jvp``
    per column over the rows of the same t-batch ``b`` only.
    """
    f = la.subset.functional(la.network)
    theta = la.subset.get_theta(la.network)
    B = rows.shape[0] // n
    rows_b = rows.reshape(B, n, *rows.shape[1:])

    def directional(r: Tensor, w: Tensor) -> Tensor:  # r: (n, ...), w: (S,) -> (n, K)
        return jvp(lambda th: f(th, r), (theta,), (w,))[1]

    per_batch = vmap(vmap(directional, in_dims=(None, 0)), in_dims=(0, 0))
    cols = []
    for k in range(n_outputs):
        U = output_rows(la, rows, k)  # (B·n, S)
        W = precision.solve(U.T).T.reshape(B, n, -1)  # rows of (S U_kᵀ)ᵀ
        cols.append(per_batch(rows_b, W))  # (B, n_col, n_row, K)
    out = torch.stack(cols, dim=-1)  # (B, n_col, n_row, K_row, K_col)
    out = out.permute(0, 2, 3, 1, 4)  # (B, n_row, K_row, n_col, K_col)
    return out.reshape(*batch, n, n_outputs, n, n_outputs)


__all__ = ["MODES", "auto_mode", "check_mode", "loop_joint", "loop_variance", "output_rows"]
