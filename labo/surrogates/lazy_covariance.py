"""The lazy GLM posterior of one output over many points, and the rows BoTorch reads.

:func:`one_output_posterior` gives the GLM posterior with its covariance kept in
per-layer factors (:mod:`labo.surrogates.factor_covariance`). BoTorch's cached-root
acquisition functions (qNEI, qLogNEI, qNEHVI with ``cache_root=True``) ask on every
evaluation for the joint posterior over the baseline points and the ``q``
candidates, of which only the last ``q`` rows are read; the baseline block is
factorised once. With hundreds of baseline points the dense joint covariance would
dominate acquisition optimisation. The baseline rows, the same in every t-batch
(:func:`shared_prefix_rows`), are computed once per call and kept across calls
(:class:`SharedHeadCovariance`, :class:`HeadCache`).
"""

from __future__ import annotations

import torch
from botorch.models.transforms.outcome import Standardize
from botorch.posteriors.gpytorch import GPyTorchPosterior
from linear_operator.operators import DenseLinearOperator, LinearOperator
from torch import Tensor

from labo.laplace.laplace import LaplaceApproximation
from labo.laplace.linearization.layer_quads import SharedRows
from labo.laplace.predictive.glm import glm_layer_terms
from labo.surrogates.factor_covariance import (
    LAYER_FIELDS,
    FactorMultivariateNormal,
    LayerFactorCovariance,
)


def _one_output_rows(Pa: Tensor, Pb) -> Tensor:
    """Output-side factors ``(..., n, out)`` of a one-output model's layer term."""
    if isinstance(Pb, SharedRows):  # output layer: the same row for every input
        M = torch.ones(1, 1, dtype=Pa.dtype, device=Pa.device) if Pb.M is None else Pb.M
        return M[0].expand(*Pa.shape[:-1], M.shape[-1])
    return Pb[..., 0, :]


def shared_prefix_rows(X: Tensor) -> int:
    """Number of leading rows of ``X (..., R, d)`` shared by every t-batch and safe to compute once.

    BoTorch's noisy acquisition functions (qNEI, qLogNEI, qNEHVI) evaluate the posterior
    of ``cat([X_baseline.expand(...), X], -2)``: the same baseline rows in every t-batch.
    Their factors can be computed once and broadcast. That is exact for the values; for
    gradients it is exact only when nothing differentiates with respect to those rows,
    so under autograd the rows are shared only where ``X`` is such a ``cat`` whose first
    piece does not require grad (the second piece's shape gives the split);
    without autograd any prefix of rows equal in every t-batch is shared. With one
    t-batch, the first piece of such a ``cat`` (its rows are kept across calls by
    :class:`HeadCache`). Costs one comparison of the prefix (one host sync on a GPU).
    Returns 0 when nothing is shared.
    """
    if X.dim() < 3 or X.shape[-2] < 2:
        return 0
    R, batches = X.shape[-2], X.shape[:-2].numel()
    limit = R - 1
    if torch.is_grad_enabled() and X.requires_grad:
        limit = _no_grad_cat_prefix(X)
        if limit <= 0 or batches == 1:
            return max(limit, 0)
    elif batches < 2:
        return 0
    flat = X.reshape(-1, R, X.shape[-1])[:, :limit]
    equal = (flat == flat[:1]).all(-1).all(0)
    return int(equal.to(torch.int64).cumprod(0).sum())


def _no_grad_cat_prefix(X: Tensor) -> int:
    """Rows of the first piece of ``X = cat([A, B], -2)`` when ``A`` does not require grad, else 0."""
    # Node.name() and next_functions are torch.autograd.graph.Node's public API. The cat's
    # dimension is only exposed as `_saved_dim` (autograd exposes every saved input as
    # `_saved_<name>`; torch's docs read `grad_fn._saved_self` the same way): there is no
    # public accessor, so a torch that renames it makes this return 0 (no shared prefix,
    # still correct, only slower).
    fn = X.grad_fn
    if fn is None or fn.name() != "CatBackward0" or len(fn.next_functions) != 2:
        return 0
    dim = getattr(fn, "_saved_dim", None)
    if dim is None or dim not in (X.dim() - 2, -2, 2**64 - 2):
        return 0
    (first, _), (second, _) = fn.next_functions
    if first is not None or second is None:
        return 0
    if second.name() == "torch::autograd::AccumulateGrad":  # B is a leaf
        return X.shape[-2] - second.variable.shape[-2]
    # B is computed (BoTorch's fix_features builds it by slice assignment): the shape of B is
    # that of the gradient its node receives, exposed only as `_input_metadata` (absent:
    # 0, the dense path).
    meta = getattr(second, "_input_metadata", None)
    shape = getattr(meta[0], "shape", None) if meta else None
    if shape is None or len(shape) != X.dim():
        return 0
    return X.shape[-2] - shape[-2]


def tail_row_range(row_index, col_index, batch_indices, N: int, R: int) -> tuple[int, int] | None:
    """``(lo, hi)`` when a LinearOperator index ``[..., N + lo : N + hi, :]`` of an ``R x R``
    covariance asks for whole rows below its ``N`` head rows only (what BoTorch's cached-root
    path reads), else None."""
    everything = slice(None, None, None)
    if not (
        isinstance(row_index, slice)
        and col_index == everything
        and all(b == everything for b in batch_indices)
    ):
        return None
    start, stop, step = row_index.indices(R)
    return (start - N, stop - N) if step == 1 and N <= start < stop else None


class SharedHeadCovariance(LinearOperator):
    """The covariance of rows ``[head; tail]`` whose ``N`` head rows are the same in every t-batch.

    Per layer it holds the head factors once (``a_h (N, in)``, ``b_h (N, out)``) and the
    tail factors per t-batch (``a_t (..., q, in)``, ``b_t (..., q, out)``), with ``w (out, in)``
    as in :class:`LayerFactorCovariance`. The rows BoTorch's cached-root path reads,
    ``C[..., -q:, :]``, are then one product with the head's rotated Jacobian rows of all
    layers joined, ``T_h = [b_h ⊗ a_h]_l (N, P)``, formed once:
    ``C[tail, head] = (T_t · w) T_hᵀ`` with ``T_t = [b_t ⊗ a_t]_l``.
    Everything else goes through the equivalent :class:`LayerFactorCovariance` over the
    joined rows, built on first use.
    """

    def __init__(self, *tensors: Tensor, head_rows: list | None = None):
        if not tensors or len(tensors) % LAYER_FIELDS:
            raise ValueError(f"Expected 5 tensors per layer, got {len(tensors)}.")
        super().__init__(*tensors)
        self._layers = [tensors[k : k + LAYER_FIELDS] for k in range(0, len(tensors), LAYER_FIELDS)]
        self._joined: LayerFactorCovariance | None = None
        # [T_h], the head's rotated rows of all layers joined (N, P), filled on first use; a
        # list shared with a HeadCache entry is filled once for all posteriors over the same
        # head rows.
        self._head_rows = [None] if head_rows is None else head_rows

    def _size(self) -> torch.Size:
        aH, _, aT, _, _ = self._layers[0]
        R = aH.shape[-2] + aT.shape[-2]
        return torch.Size((*aT.shape[:-2], R, R))

    def joined(self) -> LayerFactorCovariance:
        """The same covariance as a :class:`LayerFactorCovariance` over the joined rows."""
        if self._joined is None:
            terms = []
            for aH, bH, aT, bT, w in self._layers:
                lead = aT.shape[:-2]
                a = torch.cat([aH.expand(*lead, *aH.shape), aT], dim=-2)
                b = torch.cat([bH.expand(*lead, *bH.shape), bT], dim=-2)
                terms.append((a, b, w))
            self._joined = LayerFactorCovariance.symmetric(terms)
        return self._joined

    def to_dense(self) -> Tensor:
        return self.joined().to_dense()

    def _matmul(self, rhs: Tensor) -> Tensor:
        return self.joined()._matmul(rhs)

    def _diagonal(self) -> Tensor:
        return self.joined()._diagonal()

    def _transpose_nonbatch(self) -> LinearOperator:
        return self.joined()._transpose_nonbatch()

    def _get_indices(self, row_index, col_index, *batch_indices) -> Tensor:
        return self.joined()._get_indices(row_index, col_index, *batch_indices)

    def _expand_batch(self, batch_shape: torch.Size) -> LinearOperator:
        return self.joined()._expand_batch(batch_shape)

    def _getitem(self, row_index, col_index, *batch_indices) -> LinearOperator:
        rows = tail_row_range(
            row_index, col_index, batch_indices, self._layers[0][0].shape[-2], self.shape[-1]
        )
        if rows is not None:
            return DenseLinearOperator(self._tail_rows(*rows))
        return self.joined()._getitem(row_index, col_index, *batch_indices)

    def _tail_rows(self, lo: int, hi: int) -> Tensor:
        """``C[..., N + lo : N + hi, :]`` as a dense ``(..., hi - lo, N + q)`` tensor.

        The rotated Jacobian rows of all layers are joined into one ``P``-wide row per point
        (``T = [b ⊗ a]_l``), so the block is two matrix products, ``(T_r · w) T_hᵀ`` with the
        head's rows (formed once) and ``(T_r · w) T_tᵀ`` with the tail's, whatever the
        number of layers: few kernels per acquisition call.
        """
        if self._head_rows[0] is None:
            self._head_rows[0] = torch.cat(
                [(bH.unsqueeze(-1) * aH.unsqueeze(-2)).flatten(-2) for aH, bH, _, _, _ in self._layers],
                dim=-1,
            )  # (N, P)
        rows, weights = [], []
        for _, _, aT, bT, w in self._layers:
            rows.append((bT.unsqueeze(-1) * aT.unsqueeze(-2)).flatten(-2))  # (..., q, out·in)
            weights.append(w.flatten(-2))
        T = torch.cat(rows, dim=-1) if len(rows) > 1 else rows[0]  # (..., q, P)
        W = torch.cat(weights, dim=-1) if len(weights) > 1 else weights[0]  # (..., P)
        Y = T[..., lo:hi, :] * W.unsqueeze(-2)
        return torch.cat([Y @ self._head_rows[0].transpose(-1, -2), Y @ T.transpose(-1, -2)], dim=-1)


class HeadCache:
    """The head rows' factors kept across posterior calls.

    During acquisition optimisation BoTorch sends the same baseline rows with every
    evaluation. Where they carry no gradient (``detach_head``), their mean, per-layer
    factors and rotated Jacobian rows are a function of their values, the network's
    weights and the posterior precision only: kept here and reused while all three
    are unchanged (values compared exactly; weights by their version counters;
    the precision by identity, which a refit or new hyperparameters replace).
    """

    def __init__(self):
        self._entry = None

    def get(self, la: LaplaceApproximation, X_head: Tensor):
        """``(F, terms, head_rows)`` for ``X_head (N, d)``, computed without autograd; or None."""
        precision = la.posterior_precision()
        # Tensor._version (the in-place write counter) is private, but torch has no public signal
        # of an in-place update of the weights (an optimiser step), which must invalidate the cache.
        versions = tuple(p._version for p in la.network.parameters())
        e = self._entry
        if (
            e is not None
            and e[1] is precision
            and e[2] == versions
            and e[0].shape == X_head.shape
            and e[0].device == X_head.device
            and torch.equal(e[0], X_head)
        ):
            return e[3]
        with torch.no_grad():
            head = glm_layer_terms(la, X_head)
        if head is None:
            return None
        value = (head[0], head[1], [None])
        self._entry = (X_head.detach().clone(), precision, versions, value)
        return value


def _split_terms(
    la: LaplaceApproximation, X_tf: Tensor, shared: int, detach_head: bool, cache: HeadCache | None
):
    """Mean, per-layer ``(a, b, w)`` of the head (first ``shared`` rows, once) and of the tail,
    and the head's rotated rows (a list to fill, shared with the cache)."""
    lead = X_tf.shape[:-2]
    first = X_tf[(0,) * len(lead)][:shared]
    if detach_head and cache is not None:
        head = cache.get(la, first.detach())
    else:
        head = glm_layer_terms(la, first.detach() if detach_head else first)
        head = None if head is None else (*head, [None])
    tail = glm_layer_terms(la, X_tf[..., shared:, :])
    if head is None or tail is None:
        return None
    F = torch.cat([head[0].expand(*lead, *head[0].shape), tail[0]], dim=-2)
    return F, head[1], tail[1], head[2]


def outcome_affine(y_mean: Tensor, y_scale: Tensor, outcome_transform) -> tuple[Tensor, Tensor] | None:
    """``(shift, scale)`` with ``y = shift + scale · z`` for one output: the model's target
    standardisation, then a BoTorch ``Standardize`` outcome transform undone; None for any
    other outcome transform (the caller takes the dense path)."""
    if outcome_transform is None:
        return y_mean, y_scale
    if type(outcome_transform) is not Standardize:
        return None
    means, stdvs = outcome_transform.means[..., 0], outcome_transform.stdvs[..., 0]
    return means + stdvs * y_mean, stdvs * y_scale


def one_output_posterior(
    la: LaplaceApproximation,
    X_tf: Tensor,
    y_mean: Tensor,
    y_scale: Tensor,
    outcome_transform,
    shared_rows: int = 0,
    detach_head: bool = False,
    cache: HeadCache | None = None,
):
    """The GLM posterior of a one-output model with a factored (lazy) covariance, or None.

    ``y_mean``/``y_scale`` undo the model's internal standardisation; a BoTorch
    ``Standardize`` outcome transform is folded in too (any other transform: None,
    the caller takes the dense path). None also where the structure has no
    per-layer factors (Functional, Full, partial masks). The first ``shared_rows`` rows
    are the same in every t-batch (:func:`shared_prefix_rows`): computed once, from the
    first t-batch (detached with ``detach_head``, for rows no gradient may reach), and
    kept in a :class:`SharedHeadCovariance`; with ``detach_head`` a ``cache`` keeps them
    across calls.
    """
    affine = outcome_affine(y_mean, y_scale, outcome_transform)
    if affine is None:
        return None
    shift, scale = affine
    var_scale = scale.pow(2)
    if shared_rows > 0:
        res = _split_terms(la, X_tf, shared_rows, detach_head, cache)
        if res is None:
            return None
        F, head, tail, head_rows = res
        tensors = []
        for (Pa0, Pb0, w), (Pa1, Pb1, _) in zip(head, tail, strict=True):
            tensors += [Pa0, _one_output_rows(Pa0, Pb0), Pa1, _one_output_rows(Pa1, Pb1), w * var_scale]
        covar = SharedHeadCovariance(*tensors, head_rows=head_rows)
    else:
        res = glm_layer_terms(la, X_tf)
        if res is None:
            return None
        F, terms = res
        covar = LayerFactorCovariance.symmetric(
            [(Pa, _one_output_rows(Pa, Pb), w * var_scale) for Pa, Pb, w in terms]
        )
    return GPyTorchPosterior(distribution=FactorMultivariateNormal(shift + scale * F[..., 0], covar))


__all__ = [
    "FactorMultivariateNormal",
    "HeadCache",
    "LayerFactorCovariance",
    "SharedHeadCovariance",
    "one_output_posterior",
    "outcome_affine",
    "shared_prefix_rows",
]
