"""The lazy GLM covariance of weight-space Laplace posteriors, kept in per-layer factors.

For weight-space structures whose Bayesian weights are whole Linear layers
(Kron and Diagonal), the GLM covariance of one output between rows ``m`` and ``n``
is a sum over layers of

    C[m, n] = Σ_{g,i} b_L[m, g] a_L[m, i] w[g, i] b_R[n, g] a_R[n, i]

with per-row factors ``a`` (rotated layer inputs), ``b`` (rotated output
gradients) and the layer's diagonal covariance ``w`` in that basis (see
``labo.laplace.linearization.layer_quads.layer_quad``). :class:`LayerFactorCovariance` keeps the
factors instead of the dense matrix, so slicing rows (``C[..., -q:, :]``) costs
``O(q · N · out · in)`` rather than the ``O(N² · out · in)`` of the whole matrix.

Everything else (``to_dense``, root decompositions, solves) goes through the dense
matrix, built on first use and kept, with one exception: sampling. The factors are
an exact root of the covariance, ``C = R Rᵀ`` with ``R = [(b ⊗ a) diag(√w)]_l`` of
``N x P`` (``P`` = the Bayesian weights), so where ``P < N`` (the matrix has rank at
most ``P``) :class:`FactorMultivariateNormal` draws samples as ``R ε`` without forming
``C``: ``O(N · P · S)`` for ``S`` samples instead of the dense ``O(N² · P)`` matrix, its
Cholesky (which needs jitter, the matrix being singular) and the ``O(N² · S)`` product.
BoTorch's ``prune_inferior_points`` samples the joint posterior over every
observation this way when a noisy acquisition function is built.
"""

from __future__ import annotations

import torch
from gpytorch.distributions import MultivariateNormal
from linear_operator.operators import DenseLinearOperator, LinearOperator
from torch import Tensor

LAYER_FIELDS = 5  # per layer: a_L, b_L, a_R, b_R, w
_NO_SAMPLES = torch.Size()
_ROOT_CHUNK = 2**24  # elements of one row chunk of the factor root (128 MiB in float64)


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
        if not tensors or len(tensors) % LAYER_FIELDS:
            raise ValueError(f"Expected 5 tensors per layer, got {len(tensors)}.")
        super().__init__(*tensors)
        self._layers = [tensors[k : k + LAYER_FIELDS] for k in range(0, len(tensors), LAYER_FIELDS)]
        self._dense: Tensor | None = None
        self.is_symmetric = all(aL is aR and bL is bR for aL, bL, aR, bR, _ in self._layers)

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

    @property
    def root_rank(self) -> int:
        """``P``, the columns of the exact factor root ``R`` (``C = R Rᵀ``): the Bayesian weights."""
        return sum(bL.shape[-1] * aL.shape[-1] for aL, bL, _, _, _ in self._layers)

    def root_matmul(self, eps: Tensor) -> Tensor:
        """``R @ eps`` for the exact factor root ``R (..., N, P)`` and ``eps (..., P, S)``.

        ``R``'s columns are, layer after layer, ``b[:, g] a[:, i] √w[g, i]`` (``g`` major),
        formed ``_ROOT_CHUNK`` elements at a time, never whole. Only for the covariance of
        rows with themselves (``is_symmetric``).
        """
        if not self.is_symmetric:
            raise RuntimeError("root_matmul needs the covariance of rows with themselves.")
        if eps.shape[-2] != self.root_rank:
            raise ValueError(f"eps has {eps.shape[-2]} rows, the factor root has {self.root_rank} columns.")
        N, out, start = self.shape[-1], None, 0
        for a, b, _, _, w in self._layers:
            g, i = b.shape[-1], a.shape[-1]
            sw = w.clamp_min(0).sqrt()
            e = eps[..., start : start + g * i, :]
            start += g * i
            step = max(1, _ROOT_CHUNK // (g * i))
            rows = []
            for lo in range(0, N, step):
                R = (
                    b[..., lo : lo + step, :, None] * a[..., lo : lo + step, None, :] * sw[..., None, :, :]
                ).flatten(-2)
                rows.append(R @ e)
            term = rows[0] if len(rows) == 1 else torch.cat(rows, dim=-2)
            out = term if out is None else out + term
        return out


class FactorMultivariateNormal(MultivariateNormal):
    """A ``MultivariateNormal`` whose samples use the exact factor root where it is low-rank.

    Where the covariance is a symmetric :class:`LayerFactorCovariance` (or a
    ``SharedHeadCovariance``, through its joined factors) with fewer root columns ``P`` than rows ``N``,
    ``rsample`` returns ``mean + R ε`` (:meth:`LayerFactorCovariance.root_matmul`),
    taking the first ``P`` of each sample's ``N`` base samples, as GPyTorch does for a
    low-rank root. The samples have exactly the distribution's covariance; the
    dense path would form the ``N x N`` matrix and add jitter to factor it. Everything
    else is the parent's; so is sampling where ``P ≥ N``.
    """

    def _factor_root(self) -> LayerFactorCovariance | None:
        covar = self.lazy_covariance_matrix
        if not isinstance(covar, LayerFactorCovariance) and hasattr(covar, "joined"):
            covar = covar.joined()  # a SharedHeadCovariance (labo.surrogates.lazy_covariance)
        if (
            isinstance(covar, LayerFactorCovariance)
            and covar.is_symmetric
            and covar.root_rank < covar.shape[-1]
        ):
            return covar
        return None

    def rsample(self, sample_shape: torch.Size = _NO_SAMPLES, base_samples: Tensor | None = None) -> Tensor:
        covar = self._factor_root()
        if covar is None:
            return super().rsample(sample_shape, base_samples)
        loc, P = self.loc, covar.root_rank
        if base_samples is None:
            sample_shape = torch.Size(sample_shape)
            eps = torch.randn(
                max(sample_shape.numel(), 1), *loc.shape[:-1], P, dtype=loc.dtype, device=loc.device
            )
        else:
            if base_samples.shape[base_samples.dim() - loc.dim() :] != loc.shape:
                raise RuntimeError(
                    f"base_samples of shape {tuple(base_samples.shape)} do not end in the mean's shape "
                    f"{tuple(loc.shape)}."
                )
            sample_shape = base_samples.shape[: base_samples.dim() - loc.dim()]
            eps = base_samples.reshape(-1, *loc.shape)[..., :P]
        res = covar.root_matmul(eps.movedim(0, -1)) + loc.unsqueeze(-1)  # (..., N, S)
        return res.movedim(-1, 0).reshape(*sample_shape, *loc.shape)


__all__ = ["FactorMultivariateNormal", "LayerFactorCovariance"]
