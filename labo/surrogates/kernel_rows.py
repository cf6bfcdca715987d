"""The kernel posterior over shared baseline rows and new candidates, read by rows.

BoTorch's cached-root acquisition functions (qNEI, qLogNEI, qNEHVI with ``cache_root=True``)
ask on every evaluation for the joint posterior of ``cat([X_baseline.expand(...), X], -2)``
and read only the covariance rows of the ``q`` candidates, ``C[..., -q:, :]``
(``botorch.utils.low_rank.sample_cached_cholesky``). For the exact kernel posterior
(:class:`~labo.surrogates.kernel_posterior.KernelPosterior`, and its lengthscale average
:class:`~labo.surrogates.averaged_posterior.AveragedKernelPosterior`) the dense joint
covariance costs ``(N + q)²`` kernel entries and ``N + q`` triangular solves per t-batch and
member, with ``N`` baseline rows that are the same in every t-batch and every call. Here the
baseline's terms (``L⁻¹ k(X_train, X_baseline)``, its means, its covariance block) are
computed once per posterior and baseline (:class:`KernelHeadCache`), and each call computes
only the candidates' rows: ``q (N + q)`` entries per t-batch and member. The covariance is a
:class:`TailRowsCovariance`, which forms the dense matrix only when something other than
those rows is asked for. Exact: the same numbers as the dense path.
"""

from __future__ import annotations

import torch
from linear_operator.operators import DenseLinearOperator, LinearOperator
from torch import Tensor

from labo.surrogates.lazy_covariance import tail_row_range


class TailRowsCovariance(LinearOperator):
    """The symmetric covariance ``[[A, Bᵀ], [B, C]]`` of ``N`` head rows shared by every
    t-batch and ``q`` tail rows per t-batch: ``head = A (N, N)`` once, ``rows = [B, C]``
    ``(..., q, N + q)``. Reading ``[..., N + i : N + j, :]`` returns those rows as they are;
    anything else goes through the dense matrix, formed on first use."""

    def __init__(self, head: Tensor, rows: Tensor):
        super().__init__(head, rows)
        self.head, self.rows = head, rows
        self._dense: Tensor | None = None

    def _size(self) -> torch.Size:
        R = self.rows.shape[-1]
        return torch.Size((*self.rows.shape[:-2], R, R))

    def to_dense(self) -> Tensor:
        if self._dense is None:
            N, lead = self.head.shape[-1], self.rows.shape[:-2]
            top = torch.cat([self.head.expand(*lead, N, N), self.rows[..., :N].transpose(-1, -2)], -1)
            self._dense = torch.cat([top, self.rows], -2)
        return self._dense

    def _dense_op(self) -> DenseLinearOperator:
        return DenseLinearOperator(self.to_dense())

    def _matmul(self, rhs: Tensor) -> Tensor:
        return self.to_dense() @ rhs

    def _diagonal(self) -> Tensor:
        return self.to_dense().diagonal(dim1=-2, dim2=-1)

    def _transpose_nonbatch(self) -> LinearOperator:
        return self  # symmetric

    def _get_indices(self, row_index, col_index, *batch_indices) -> Tensor:
        return self._dense_op()._get_indices(row_index, col_index, *batch_indices)

    def _expand_batch(self, batch_shape: torch.Size) -> LinearOperator:
        return TailRowsCovariance(self.head, self.rows.expand(*batch_shape, *self.rows.shape[-2:]))

    def _getitem(self, row_index, col_index, *batch_indices) -> LinearOperator:
        rows = tail_row_range(row_index, col_index, batch_indices, self.head.shape[-1], self.shape[-1])
        if rows is not None:
            return DenseLinearOperator(self.rows[..., rows[0] : rows[1], :])
        return self._dense_op()._getitem(row_index, col_index, *batch_indices)


def _blocks(posterior) -> list:
    """The :class:`KernelPosterior` blocks of ``posterior`` (itself, or an average's blocks)."""
    return getattr(posterior, "blocks", None) or [posterior]


def supports_rows(posterior) -> bool:
    """Whether ``posterior`` (one output, unbatched training data) takes the row path."""
    return posterior.num_outputs == 1 and all(b.X.shape[:-2].numel() == 1 for b in _blocks(posterior))


def _member_terms(block, X: Tensor) -> tuple[Tensor, Tensor]:
    """Means ``(..., k, q)`` and ``V = L⁻¹ k(X_train, X)`` ``(..., k, n, q)`` of the ``k``
    members of ``block`` (``k = 1`` for a plain posterior) at ``X (..., q, d)``."""
    if block.inv_lengthscale.dim() == 3:  # a block of members: (k, 1, d) lengthscales
        mean, V = block.terms(X.unsqueeze(-3))  # (..., k, 1, q), (..., k, 1, n, q)
        return mean[..., 0, :], V[..., 0, :, :]
    mean, V = block.terms(X)  # (..., 1, q), (..., 1, n, q)
    return mean, V


def _cross(block, X1: Tensor, X2: Tensor) -> Tensor:
    """Prior covariances ``(..., k, q1, q2)`` of every member of ``block``."""
    if block.inv_lengthscale.dim() == 3:
        return block.kernel(X1.unsqueeze(-3), X2.unsqueeze(-3))
    return block.kernel(X1, X2).unsqueeze(-3)


def head_terms(posterior, H: Tensor) -> tuple:
    """The baseline's terms: per block ``(mean (k, N), V (k, n, N))``, the members' mean
    ``(N,)`` and the averaged covariance block ``(N, N)`` (z-space)."""
    per_block, means, covs = [], [], []
    for block in _blocks(posterior):
        mean, V = _member_terms(block, H)
        per_block.append((mean, V))
        means.append(mean)
        covs.append(_cross(block, H, H) - V.transpose(-1, -2) @ V)
    means, covs = torch.cat(means, -2), torch.cat(covs, -3)  # (S, N), (S, N, N)
    centre = means.mean(-2)
    dev = means - centre
    cov = covs.mean(-3) + dev.transpose(-1, -2) @ dev / means.shape[-2]
    return per_block, centre, dev, cov


def tail_rows(posterior, head: tuple, H: Tensor, T: Tensor) -> tuple[Tensor, Tensor]:
    """The candidates' means ``(..., q)`` and covariance rows ``(..., q, N + q)`` (z-space),
    moment-matched over the members, given the baseline's :func:`head_terms`."""
    per_block, _, dev_head, _ = head
    means, rows = [], []
    for block, (_, V_h) in zip(_blocks(posterior), per_block, strict=True):
        mean, V = _member_terms(block, T)  # (..., k, q), (..., k, n, q)
        Vt = V.transpose(-1, -2)
        to_head = _cross(block, T, H) - Vt @ V_h  # (..., k, q, N)
        to_tail = _cross(block, T, T) - Vt @ V  # (..., k, q, q)
        means.append(mean)
        rows.append(torch.cat([to_head, to_tail], -1))
    S = dev_head.shape[-2]
    means, rows = torch.cat(means, -2), torch.cat(rows, -3).mean(-3)  # (..., S, q), (..., q, N + q)
    centre = means.mean(-2)
    dev = means - centre.unsqueeze(-2)  # (..., S, q)
    dev_all = torch.cat([dev_head.expand(*dev.shape[:-1], dev_head.shape[-1]), dev], -1)
    spread = dev.transpose(-1, -2) @ dev_all / S  # (..., q, N + q)
    return centre, rows + spread


class KernelHeadCache:
    """The baseline's :func:`head_terms`, kept on the kernel posterior they belong to (a
    refit or conditioning builds a new one) while the baseline rows are unchanged (by value)."""

    def __init__(self):
        self._entry = None

    def get(self, posterior, H: Tensor) -> tuple:
        e = self._entry
        if e is not None and e[0].shape == H.shape and torch.equal(e[0], H):
            return e[1]
        with torch.no_grad():
            terms = head_terms(posterior, H)
        self._entry = (H.detach().clone(), terms)
        return terms


def kernel_rows_prediction(posterior, X_tf: Tensor, shared: int, var_scale: Tensor | float = 1.0):
    """Mean ``(..., N + q)`` (z-space) and :class:`TailRowsCovariance` (times ``var_scale``)
    of the joint posterior at ``X_tf (..., N + q, d)``, whose first ``shared = N`` rows are
    the same in every t-batch and carry no gradient. The baseline's terms are kept on ``posterior`` (a
    :class:`KernelHeadCache`), so a refit, which builds a new posterior, drops them."""
    lead = X_tf.shape[:-2]
    H = X_tf[(0,) * len(lead)][:shared].detach()
    head = posterior.__dict__.setdefault("_head_rows_cache", KernelHeadCache()).get(posterior, H)
    mean_t, rows = tail_rows(posterior, head, H, X_tf[..., shared:, :])
    batch = torch.broadcast_shapes(lead, mean_t.shape[:-1])
    mean_t = mean_t.expand(*batch, mean_t.shape[-1])
    mean = torch.cat([head[1].expand(*batch, shared), mean_t], -1)
    return mean, TailRowsCovariance(head[3] * var_scale, rows.expand(*batch, *rows.shape[-2:]) * var_scale)


__all__ = ["KernelHeadCache", "TailRowsCovariance", "kernel_rows_prediction", "supports_rows"]
