"""Function-space conditioning: the ``Functional()`` posterior with more data rows, by a block update.

``FunctionalPrecision`` works with ``M = R Λ₀⁻¹ Rᵀ + I/s`` over the ``N`` GGN rows
``R`` and its Cholesky factor ``L``. New Gaussian observations add ``q`` rows
``R_new`` (for noise variances ``v``: ``J / sqrt(s v)``). The new ``M`` is
``[[M, B R_newᵀ], [R_new Bᵀ, R_new Λ₀⁻¹ R_newᵀ + I/s]]`` (``B = R Λ₀⁻¹``) and its
Cholesky factor keeps ``L`` and adds one block row:

    C = (L⁻¹ B R_newᵀ)ᵀ          triangular solves, O(N² q)
    L₂₂ = chol(M₂₂ − C Cᵀ)       O(N q² + q³)

instead of rebuilding ``M`` (``O(N² S)``) and refactorising (``O(N³)``). The result
equals the ``Functional()`` posterior refitted on the union of the rows (tested).
The rows are kept as a list of blocks, so neither ``R`` nor ``B`` (``N x S`` each) is
copied: every operation works block by block, and a chain of updates (sequential
conditioning) stays ``O(N² q)`` per step.
"""

from __future__ import annotations

import torch
from torch import Tensor

from labo.laplace.linearization.linear_factors import LayerFactors, kernel_from_factors
from labo.laplace.structures.functional import FunctionalPrecision
from labo.laplace.structures.precisions import robust_cholesky
from labo.laplace.validation import randn


class ExtendedFunctionalPrecision(FunctionalPrecision):
    """A ``FunctionalPrecision`` whose rows are blocks ``[(R_b, B_b)]`` and whose ``L`` is given.

    Built by :func:`extend_functional`; offers every operation of ``FunctionalPrecision``.
    ``R``, ``B`` and ``M`` are assembled only on request (dense tests).
    """

    def __init__(self, base: FunctionalPrecision, blocks: list[tuple[Tensor, Tensor]], L: Tensor, factors):
        self.prior, self.scale, self.dinv, self._eig = base.prior, base.scale, base.dinv, None
        self.layer_priors = base.layer_priors
        self.train_factors = factors
        self.blocks = blocks
        self._L = L

    @property
    def R(self) -> Tensor:
        return torch.cat([R for R, _ in self.blocks])

    @property
    def B(self) -> Tensor:
        return torch.cat([B for _, B in self.blocks])

    @property
    def M(self) -> Tensor:
        return self.L @ self.L.T

    @property
    def n_rows(self) -> int:
        return sum(R.shape[0] for R, _ in self.blocks)

    def _rows_times(self, V: Tensor) -> Tensor:
        """``R V`` ``(N, k)`` for ``V (S, k)``, block by block."""
        return torch.cat([R @ V for R, _ in self.blocks])

    def _B_transpose_times(self, W: Tensor) -> Tensor:
        """``Bᵀ W`` ``(S, k)`` for ``W (N, k)``, block by block."""
        out, start = None, 0
        for _, B in self.blocks:
            term = B.T @ W[start : start + B.shape[0]]
            out = term if out is None else out + term
            start += B.shape[0]
        return out

    def logdet(self) -> Tensor:
        return (
            self.prior.log().sum() + 2 * self.L.diagonal().log().sum() + self.n_rows * torch.log(self.scale)
        )

    def _cross(self, J: Tensor) -> Tensor:
        C = torch.cat([J @ B.T for _, B in self.blocks], dim=-1)  # (..., n, N)
        flat = C.reshape(-1, C.shape[-1]).T
        W = torch.linalg.solve_triangular(self.L, flat, upper=False)
        return W.T.reshape(C.shape).transpose(-1, -2)

    def solve(self, V: Tensor) -> Tensor:
        DV = V * self.dinv.unsqueeze(-1)
        return DV - self._B_transpose_times(torch.cholesky_solve(self._rows_times(DV), self.L))

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        S = self.dinv.shape[0]
        kw = {"generator": generator, "dtype": self.dinv.dtype, "device": self.dinv.device}
        z0 = randn(S, n, **kw) * self.dinv.sqrt().unsqueeze(-1)
        eps = randn(self.n_rows, n, **kw) / self.scale.sqrt()
        u = self._rows_times(z0) + eps
        return (z0 - self._B_transpose_times(torch.cholesky_solve(u, self.L))).T


def _blocks(precision: FunctionalPrecision) -> list[tuple[Tensor, Tensor]]:
    if isinstance(precision, ExtendedFunctionalPrecision):
        return list(precision.blocks)
    return [(precision.R, precision.B)]


def extend_functional(
    precision: FunctionalPrecision, R_new: Tensor, new_factors: list[LayerFactors] | None = None
) -> ExtendedFunctionalPrecision:
    """The precision with more data rows, ``H + s · R_newᵀ R_new``, by a Cholesky block update.

    Args:
        precision: A ``FunctionalPrecision`` (possibly already extended).
        R_new: New GGN square-root rows ``(q, S)`` (Gaussian observations with noise
            variances ``v``: ``J / sqrt(s v)`` row-wise).
        new_factors: Per-layer factors of the new rows with the same row scaling (keeps
            the Jacobian-free path); ignored when ``precision`` has none.

    Returns:
        An :class:`ExtendedFunctionalPrecision`, equal to the precision refitted on all rows.
    """
    blocks = _blocks(precision)
    q = R_new.shape[0]
    N = sum(R.shape[0] for R, _ in blocks)
    eye = torch.eye(q, dtype=R_new.dtype, device=R_new.device)
    B_new = R_new * precision.dinv
    factors = None
    if precision.train_factors is not None and new_factors is not None:
        tf, lp = precision.train_factors, precision.layer_priors
        M12 = kernel_from_factors(tf, new_factors, lp).reshape(N, q)
        M22 = kernel_from_factors(new_factors, new_factors, lp).reshape(q, q)
        factors = [
            LayerFactors(a.name, torch.cat([a.a, b.a]), torch.cat([a.b, b.b]), a.has_bias)
            for a, b in zip(tf, new_factors, strict=True)
        ]
    else:
        M12 = torch.cat([B @ R_new.T for _, B in blocks])
        M22 = B_new @ R_new.T
    M22 = M22 + eye / precision.scale
    L = precision.L
    C = torch.linalg.solve_triangular(L, M12, upper=False).T  # (q, N)
    L22 = robust_cholesky(M22 - C @ C.T)
    zeros = torch.zeros(N, q, dtype=R_new.dtype, device=R_new.device)
    L_new = torch.cat([torch.cat([L, zeros], 1), torch.cat([C, L22], 1)])
    return ExtendedFunctionalPrecision(precision, blocks + [(R_new, B_new)], L_new, factors)


__all__ = ["ExtendedFunctionalPrecision", "extend_functional"]
