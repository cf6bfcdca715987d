"""A lazy GLM covariance whose row blocks cost only what they touch.

For weight-space structures whose Bayesian weights are whole Linear layers
(Kron and Diagonal), the GLM covariance of one output between rows ``m`` and ``n``
is a sum over layers of

    C[m, n] = Σ_{g,i} b_L[m, g] a_L[m, i] w[g, i] b_R[n, g] a_R[n, i]

with per-row factors ``a`` (rotated layer inputs), ``b`` (rotated output
gradients) and the layer's diagonal covariance ``w`` in that basis (see
``labo.laplace.layer_quads.layer_quad``). :class:`LayerFactorCovariance` keeps the
factors instead of the dense matrix, so slicing rows (``C[..., -q:, :]``) costs
``O(q · N · out · in)`` rather than the ``O(N² · out · in)`` of the whole matrix.

That is what BoTorch's cached-root acquisition functions (qNEI, qLogNEI, qNEHVI
with ``cache_root=True``) ask for on every evaluation: the joint posterior over
the baseline points and the ``q`` candidates, of which only the last ``q`` rows are
read; the baseline block is factorised once. With hundreds of baseline points the
dense joint covariance would dominate acquisition optimisation.

Everything else (``to_dense``, root decompositions, solves) goes through the dense
matrix, built on first use and kept.
"""

from __future__ import annotations

import torch
from botorch.models.transforms.outcome import Standardize
from botorch.posteriors.gpytorch import GPyTorchPosterior
from gpytorch.distributions import MultivariateNormal
from linear_operator.operators import DenseLinearOperator, LinearOperator
from torch import Tensor

from labo.laplace.layer_quads import SharedRows
from labo.laplace.predictive import glm_layer_terms

_FIELDS = 5  # per layer: a_L, b_L, a_R, b_R, w


def _is_plain(index) -> bool:
    return isinstance(index, (slice, int))


def _cross(aL: Tensor, bL: Tensor, aR: Tensor, bR: Tensor, w: Tensor) -> Tensor:
    """One layer's ``(..., nL, nR)`` block, contracted in the cheaper order."""
    nL, nR, g, i = aL.shape[-2], aR.shape[-2], bL.shape[-1], aL.shape[-1]
    Y = bL.unsqueeze(-1) * aL.unsqueeze(-2) * w.unsqueeze(-3)  # (..., nL, g, i)
    if nL <= i:  # few left rows: an (nL, g, nR) intermediate is smaller than (nR, g · i)
        Z = Y.reshape(*Y.shape[:-3], nL * g, i) @ aR.transpose(-1, -2)  # (..., nL·g, nR)
        return (Z.reshape(*Z.shape[:-2], nL, g, nR) * bR.transpose(-1, -2).unsqueeze(-3)).sum(-2)
    T = (bR.unsqueeze(-1) * aR.unsqueeze(-2)).reshape(*bR.shape[:-2], nR, g * i)
    return Y.reshape(*Y.shape[:-3], nL, g * i) @ T.transpose(-1, -2)


class LayerFactorCovariance(LinearOperator):
    """``(..., N_L, N_R)`` covariance block ``Σ_l (b_L ⊗ a_L) diag(w) (b_R ⊗ a_R)ᵀ`` kept in factors.

    Args:
        *tensors: Per layer, five tensors: ``a_L (..., N_L, in)``, ``b_L (..., N_L, out)``,
            ``a_R (..., N_R, in)``, ``b_R (..., N_R, out)`` and ``w (..., out, in)``, all
            with the same batch shape.
    """

    def __init__(self, *tensors: Tensor):
        if not tensors or len(tensors) % _FIELDS:
            raise ValueError(f"Expected 5 tensors per layer, got {len(tensors)}.")
        super().__init__(*tensors)
        self._layers = [tensors[k : k + _FIELDS] for k in range(0, len(tensors), _FIELDS)]
        self._dense: Tensor | None = None

    @classmethod
    def symmetric(cls, terms) -> LayerFactorCovariance:
        """The covariance of rows with themselves from ``[(a, b, w)]`` (``w`` unbatched is expanded)."""
        tensors = []
        for a, b, w in terms:
            w = w.expand(*a.shape[:-2], *w.shape[-2:])
            tensors += [a, b, a, b, w]
        return cls(*tensors)

    def _size(self) -> torch.Size:
        aL, _, aR, _, _ = self._layers[0]
        return torch.Size((*aL.shape[:-2], aL.shape[-2], aR.shape[-2]))

    def _transpose_nonbatch(self) -> LayerFactorCovariance:
        tensors = []
        for aL, bL, aR, bR, w in self._layers:
            tensors += [aR, bR, aL, bL, w]
        return self.__class__(*tensors)

    def to_dense(self) -> Tensor:
        if self._dense is None:
            out = None
            for layer in self._layers:
                term = _cross(*layer)
                out = term if out is None else out + term
            self._dense = out
        return self._dense

    def _matmul(self, rhs: Tensor) -> Tensor:
        out = None
        for aL, bL, aR, bR, w in self._layers:
            U = torch.einsum("...ng,...ni,...nc->...gic", bR, aR, rhs)
            term = torch.einsum("...mg,...mi,...gi,...gic->...mc", bL, aL, w, U)
            out = term if out is None else out + term
        return out

    def _diagonal(self) -> Tensor:
        if self.shape[-1] != self.shape[-2]:
            raise RuntimeError("diagonal of a non-square LayerFactorCovariance")
        out = None
        for aL, bL, aR, bR, w in self._layers:
            term = (((bL * bR) @ w) * (aL * aR)).sum(-1)
            out = term if out is None else out + term
        return out

    def _getitem(self, row_index, col_index, *batch_indices) -> LinearOperator:
        if not all(_is_plain(i) for i in (row_index, col_index, *batch_indices)):
            return DenseLinearOperator(self.to_dense())._getitem(row_index, col_index, *batch_indices)
        tensors = []
        for aL, bL, aR, bR, w in self._layers:
            left = (*batch_indices, row_index, slice(None))
            right = (*batch_indices, col_index, slice(None))
            tensors += [
                aL[left],
                bL[left],
                aR[right],
                bR[right],
                w[(*batch_indices, slice(None), slice(None))],
            ]
        return self.__class__(*tensors)

    def _get_indices(self, row_index, col_index, *batch_indices) -> Tensor:
        return self.to_dense()[(*batch_indices, row_index, col_index)]

    def _expand_batch(self, batch_shape: torch.Size) -> LayerFactorCovariance:
        return self.__class__(*[t.expand(*batch_shape, *t.shape[-2:]) for t in self._args])


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
    piece does not require grad (and whose second piece, a leaf, gives the split);
    without autograd any prefix of rows equal in every t-batch is shared. Costs one
    comparison of the prefix (one host sync on a GPU). Returns 0 when nothing is shared.
    """
    if X.dim() < 3 or X.shape[:-2].numel() < 2 or X.shape[-2] < 2:
        return 0
    R = X.shape[-2]
    limit = R - 1
    if torch.is_grad_enabled() and X.requires_grad:
        limit = _no_grad_cat_prefix(X)
        if limit <= 0:
            return 0
    flat = X.reshape(-1, R, X.shape[-1])[:, :limit]
    equal = (flat == flat[:1]).all(-1).all(0)
    return int(equal.to(torch.int64).cumprod(0).sum())


def _no_grad_cat_prefix(X: Tensor) -> int:
    """Rows of the first piece of ``X = cat([A, B], -2)`` when ``A`` does not require grad, else 0."""
    fn = X.grad_fn
    if fn is None or type(fn).__name__ != "CatBackward0" or len(fn.next_functions) != 2:
        return 0
    dim = getattr(fn, "_saved_dim", None)
    if dim is None or dim not in (X.dim() - 2, -2, 2**64 - 2):
        return 0
    (first, _), (second, _) = fn.next_functions
    if first is not None or type(second).__name__ != "AccumulateGrad":
        return 0
    return X.shape[-2] - second.variable.shape[-2]


def _layer_terms_shared(la, X_tf: Tensor, shared: int):
    """``glm_layer_terms`` with the first ``shared`` rows computed once for every t-batch."""
    if shared <= 0:
        return glm_layer_terms(la, X_tf)
    lead = X_tf.shape[:-2]
    first = X_tf[(0,) * len(lead)][:shared]
    head, tail = glm_layer_terms(la, first), glm_layer_terms(la, X_tf[..., shared:, :])
    if head is None or tail is None:
        return None

    def join(a: Tensor, b: Tensor) -> Tensor:
        return torch.cat([a.expand(*lead, *a.shape), b], dim=-2)

    F = join(head[0], tail[0])
    terms = []
    for (Pa0, Pb0, w), (Pa1, Pb1, _) in zip(head[1], tail[1], strict=True):
        Pb = (
            Pb1
            if isinstance(Pb1, SharedRows)
            else join(Pb0.flatten(-2), Pb1.flatten(-2)).unflatten(-1, Pb1.shape[-2:])
        )
        terms.append((join(Pa0, Pa1), Pb, w))
    return F, terms


def one_output_posterior(
    la, X_tf: Tensor, y_mean: Tensor, y_scale: Tensor, outcome_transform, shared_rows: int = 0
):
    """The GLM posterior of a one-output model with a :class:`LayerFactorCovariance`, or None.

    ``y_mean``/``y_scale`` undo the model's internal standardisation; a BoTorch
    ``Standardize`` outcome transform is folded in too (any other transform: None,
    the caller takes the dense path). None also where the structure has no
    per-layer factors (Functional, Full, partial masks). The first ``shared_rows`` rows
    are the same in every t-batch (:func:`shared_prefix_rows`) and computed once.
    """
    if outcome_transform is not None and type(outcome_transform) is not Standardize:
        return None
    res = _layer_terms_shared(la, X_tf, shared_rows)
    if res is None:
        return None
    F, terms = res
    mean = y_mean + y_scale * F[..., 0]
    var_scale = y_scale.pow(2)
    if outcome_transform is not None:
        mean = outcome_transform.means[..., 0] + outcome_transform.stdvs[..., 0] * mean
        var_scale = var_scale * outcome_transform.stdvs[..., 0].pow(2)
    terms = [(Pa, _one_output_rows(Pa, Pb), w * var_scale) for Pa, Pb, w in terms]
    return GPyTorchPosterior(distribution=MultivariateNormal(mean, LayerFactorCovariance.symmetric(terms)))


__all__ = ["LayerFactorCovariance", "one_output_posterior", "shared_prefix_rows"]
