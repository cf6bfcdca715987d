"""Posterior precisions of the weight-space structures: Full, Diagonal and Kron (K-FAC).

Given hyperparameters, a curvature module (:mod:`labo.laplace.structures.options`) yields a
*posterior precision* ``H = scale · C + Λ₀`` (``scale = 1/σ²``
for regression, 1 for classification; ``Λ₀`` the per-weight prior precision)
offering, for every structure, the operations of ``precision_protocol.Precision``:

* ``logdet()``: ``log det H``
* ``solve(V)``: ``H⁻¹ V`` for ``V`` of shape ``(S, m)``
* ``quad(J)``: ``J H⁻¹ Jᵀ`` for Jacobians ``(..., N, S)`` -> ``(..., N, N)``
* ``quad_diag(J)``: its diagonal ``(..., N)`` without forming the ``N x N`` matrix
* ``sample(n, generator)``: ``δ ~ N(0, H⁻¹)`` of shape ``(n, S)``
* ``precision()`` / ``covariance()``: dense ``(S, S)`` matrices (tests, small S)

All of them are differentiable w.r.t. the prior precision, the scale and ``J``.

The Kron prior rule. In the eigenbasis ``Q = Q_G ⊗ Q_A`` of the K-FAC block
``G ⊗ A`` (eigenvalues ``λ_G ⊗ λ_A``), labo uses

    H_block = Q diag(scale · λ_G ⊗ λ_A + d̃) Qᵀ,   d̃ = diag(Qᵀ D Q),

with ``D`` the block's diagonal prior precision. For a prior that is constant
within the block (scalar or per-layer, weight and bias equal) ``Qᵀ D Q = δ I``
and the rule is exact: ``H_block = scale · G ⊗ A + δ I``. For a prior that
varies within a block (per-weight, or different for weight and bias) it keeps
only the diagonal of the prior in the eigenbasis (the EKFAC-style projection),
computed cheaply as ``d̃ = (Q_G ∘ Q_G)ᵀ D (Q_A ∘ Q_A)``. Selected weights outside
Linear layers (the "rest") get a diagonal GGN block, or with ``Kron(rest="full")`` one
full GGN block, eigendecomposed and handled as a block with ``Q_A = [[1]]`` (the same
prior rule: exact for a prior constant over the rest).
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor

from labo.exceptions import NumericalError, NumericalWarning
from labo.laplace.linearization.layer_quads import (
    SharedRows,
    augmented_inputs,
    layer_quad,
    layer_quad_diag,
    signed_permutation,
)
from labo.laplace.validation import randn

# Relative jitter levels tried, in order, when a Cholesky factorisation fails.
JITTERS = (1e-10, 1e-8, 1e-6, 1e-4)
# Negative eigenvalues of PSD factors larger than this (relative) trigger a warning.
EIG_NEG_TOL = 1e-6


def robust_cholesky(H: Tensor) -> Tensor:
    """Cholesky factor of ``H``; on failure add jitter ``j · mean(diag H)`` with a warning.

    Jitters of :data:`JITTERS` are tried in order; if all fail, NumericalError.
    """
    L, info = torch.linalg.cholesky_ex(H)
    if not bool((info != 0).any()):
        return L
    scale = H.diagonal(dim1=-2, dim2=-1).abs().mean().detach()
    eye = torch.eye(H.shape[-1], dtype=H.dtype, device=H.device)
    for j in JITTERS:
        L, info = torch.linalg.cholesky_ex(H + j * scale * eye)
        if not bool((info != 0).any()):
            warnings.warn(
                f"Cholesky of the posterior precision failed; added jitter {j:g} x mean diagonal.",
                NumericalWarning,
                stacklevel=3,
            )
            return L
    raise NumericalError(
        f"Cholesky of the {H.shape[-1]}x{H.shape[-1]} posterior precision failed even with "
        f"jitter {JITTERS[-1]:g} x mean diagonal; check the prior precision (must be > 0) "
        "and the network outputs for NaN."
    )


def clamped_eigh(M: Tensor, what: str) -> tuple[Tensor, Tensor]:
    """Eigendecomposition of a PSD matrix with eigenvalues clamped at zero.

    Round-off negatives are clamped silently; negatives beyond ``EIG_NEG_TOL``
    times the largest eigenvalue are clamped with a NumericalWarning.
    """
    evals, evecs = torch.linalg.eigh(M)
    lo, hi = evals.min(), evals.abs().max()
    if lo < -EIG_NEG_TOL * max(float(hi), 1e-30):
        warnings.warn(
            f"{what} has a negative eigenvalue {float(lo):.3g}; clamped to 0.",
            NumericalWarning,
            stacklevel=3,
        )
    return evals.clamp_min(0.0), evecs


class FullPrecision:
    """``H = scale · C + diag(prior)`` as a dense matrix with a Cholesky factor."""

    def __init__(self, C: Tensor, prior: Tensor, scale: Tensor, eig=None):
        self.H = scale * C + torch.diag(prior)
        # eig: None, C's eigenvalues, or a callable returning them on first use (predictives
        # never need them, and an S x S eigh costs seconds at S in the thousands)
        self._prior, self._scale, self._eig = prior, scale, eig
        self._L: Tensor | None = None
        self._cov: Tensor | None = None
        self.layer_index: list[Tensor] | None = None
        self.supports_factors = False

    def bind_layers(self, layer_index: list[Tensor]) -> FullPrecision:
        """Enable the Jacobian-free path (see :meth:`DiagonalPrecision.bind_layers`)."""
        self.layer_index = layer_index
        self.supports_factors = sum(int(i.numel()) for i in layer_index) == self.H.shape[0]
        return self

    def _jacobian(self, factors) -> Tensor:
        """Jacobian rows ``(..., n·K, S)`` assembled from the layers' outer products ``b ⊗ ã``."""
        J = None
        for lf, index in zip(factors, self.layer_index, strict=True):
            a = augmented_inputs(lf)
            blk = (lf.b.unsqueeze(-1) * a.unsqueeze(-2).unsqueeze(-2)).flatten(-2)  # (..., n, K, out·in)
            if J is None:
                J = blk.new_zeros(*blk.shape[:-1], self.H.shape[0])
            J = J.index_copy(-1, index, blk)
        return J.reshape(*J.shape[:-3], -1, J.shape[-1])

    def _output_layer_cov(self, factors) -> Tensor | None:
        """``Σ`` as ``(K, in, K, in)`` when the only Bayesian layer is the output layer, else None."""
        if len(factors) != 1 or not factors[0].identity:
            return None
        if self._cov is None:  # Σ's (K, in, K, in) blocks, gathered once per posterior
            index, K = self.layer_index[0], factors[0].n_out
            self._cov = self.covariance()[index][:, index].reshape(K, -1, K, index.numel() // K)
        return self._cov

    def quad_factors(self, factors) -> Tensor:
        """``J H⁻¹ Jᵀ`` ``(..., n·K, n·K)``; last layer: ``ã Σ_{k,l} ãᵀ`` from the blocks of ``Σ``."""
        S4 = self._output_layer_cov(factors)
        if S4 is None:
            return self.quad(self._jacobian(factors))
        a = augmented_inputs(factors[0])
        n, K = a.shape[-2], S4.shape[0]
        tmp = torch.einsum("kilj,...nj->...kiln", S4, a)
        out = torch.einsum("...mi,...kiln->...mknl", a, tmp)
        return out.reshape(*out.shape[:-4], n * K, n * K)

    def quad_diag_factors(self, factors) -> Tensor:
        """Diagonal ``(..., n·K)`` of :meth:`quad_factors`; last layer: ``ã Σ_kk ãᵀ`` per output."""
        S4 = self._output_layer_cov(factors)
        if S4 is None:
            return self.quad_diag(self._jacobian(factors))
        a = augmented_inputs(factors[0])
        Sd = S4.diagonal(dim1=0, dim2=2)  # (in, in, K): Σ_kk blocks
        out = torch.einsum("...ri,ijk,...rj->...rk", a, Sd, a)
        return out.reshape(*out.shape[:-2], -1)

    @property
    def L(self) -> Tensor:
        if self._L is None:
            self._L = robust_cholesky(self.H)
        return self._L

    def logdet(self) -> Tensor:
        # A constant prior shares the eigenvectors of C: O(S) instead of a Cholesky.
        if self._eig is not None:
            eig = self._eig() if callable(self._eig) else self._eig
            return torch.log(self._scale * eig + self._prior[0]).sum()
        return 2 * self.L.diagonal().log().sum()

    def solve(self, V: Tensor) -> Tensor:
        return torch.cholesky_solve(V, self.L)

    def _whiten(self, J: Tensor) -> Tensor:
        """Rows of ``J L⁻ᵀ`` (same shape as ``J``): one triangular solve for all batch rows."""
        S = J.shape[-1]
        W = torch.linalg.solve_triangular(self.L, J.reshape(-1, S).T, upper=False)
        return W.T.reshape(J.shape)

    def quad(self, J: Tensor) -> Tensor:
        W = self._whiten(J)
        return W @ W.transpose(-1, -2)

    def quad_diag(self, J: Tensor) -> Tensor:
        return self._whiten(J).pow(2).sum(-1)

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        z = randn(self.H.shape[0], n, generator=generator, dtype=self.H.dtype, device=self.H.device)
        return torch.linalg.solve_triangular(self.L.T, z, upper=True).T

    def precision(self) -> Tensor:
        return self.H

    def covariance(self) -> Tensor:
        return torch.cholesky_inverse(self.L)


class DiagonalPrecision:
    """``H = diag(scale · c + prior)``."""

    def __init__(self, c: Tensor, prior: Tensor, scale: Tensor):
        self.h = scale * c + prior
        self.layer_index: list[Tensor] | None = None
        self.supports_factors = False
        self._w: list[Tensor] | None = None

    def bind_layers(self, layer_index: list[Tensor]) -> DiagonalPrecision:
        """Enable the Jacobian-free path.

        ``layer_index[l]`` (``out * (in + bias)``,) maps layer ``l``'s row-major
        ``[W, b]`` to positions in the weight vector; the path applies when the
        layers cover every selected weight.
        """
        self.layer_index = layer_index
        covered = sum(int(i.numel()) for i in layer_index)
        self.supports_factors = covered == self.h.shape[0]
        return self

    def layer_terms(self, factors):
        """Per layer ``(ã, b, 1/h)`` in the ``(out, in + bias)`` layout (see :func:`layer_quad`)."""
        if self._w is None:  # the layers' covariance blocks 1/h in the (out, in + bias) layout
            self._w = [
                1.0 / self.h[index].reshape(lf.n_out if lf.identity else lf.b.shape[-1], -1)
                for lf, index in zip(factors, self.layer_index, strict=True)
            ]
        for lf, w in zip(factors, self._w, strict=True):
            yield augmented_inputs(lf), SharedRows(None) if lf.identity else lf.b, w

    def quad_factors(self, factors) -> Tensor:
        """``J H⁻¹ Jᵀ`` ``(..., n·K, n·K)`` from per-layer factors of the rows."""
        return layer_quad(self.layer_terms(factors))

    def quad_diag_factors(self, factors) -> Tensor:
        """Diagonal ``(..., n·K)`` of :meth:`quad_factors`."""
        return layer_quad_diag(self.layer_terms(factors))

    def logdet(self) -> Tensor:
        return self.h.log().sum()

    def solve(self, V: Tensor) -> Tensor:
        return V / self.h.unsqueeze(-1)

    def quad(self, J: Tensor) -> Tensor:
        return (J / self.h) @ J.transpose(-1, -2)

    def quad_diag(self, J: Tensor) -> Tensor:
        return (J.pow(2) / self.h).sum(-1)

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        z = randn(n, self.h.shape[0], generator=generator, dtype=self.h.dtype, device=self.h.device)
        return z / self.h.sqrt()

    def precision(self) -> Tensor:
        return torch.diag(self.h)

    def covariance(self) -> Tensor:
        return torch.diag(1 / self.h)


class KronPrecision:
    """Block-diagonal ``H``: eigendecomposed K-FAC blocks plus a diagonal rest.

    See the module docstring for the prior rule. ``blocks`` holds
    ``(index, Q_G, λ_G, Q_A, λ_A)``; ``rest`` holds ``(index, c)``. ``rest_block``,
    ``(index, Q, λ)`` or None, is the rest as one full eigendecomposed block instead
    (``Kron(rest="full")``): it joins ``blocks`` with ``Q_A = [[1]]``, so every operation
    treats it like a layer, and ``rest`` is then empty.
    """

    def __init__(
        self,
        blocks,
        rest,
        prior: Tensor,
        scale: Tensor,
        n_weights: int,
        rest_block=None,
        prior_is_scalar: bool = False,
    ):
        self.S = n_weights
        self.blocks = []
        self.n_layers = len(blocks)
        if rest_block is not None:
            index, Q, lam = rest_block
            one = torch.ones(1, 1, dtype=Q.dtype, device=Q.device)
            blocks = [*blocks, (index, Q, lam, one, one[0])]
        for index, QG, lG, QA, lA in blocks:
            if prior_is_scalar:  # Qᵀ (δ I) Q = δ I: no O(out² in + out in²) projection
                d_eig = prior[index[:1]]
            else:
                D = prior[index].reshape(QG.shape[0], QA.shape[0])
                d_eig = (QG * QG).T @ D @ (QA * QA)
            e = scale * torch.outer(lG, lA) + d_eig
            self.blocks.append((index, QG, QA, e))
        r_index, c = rest
        self.rest = (r_index, scale * c + prior[r_index])
        self.dtype, self.device = prior.dtype, prior.device
        # The full rest block (index, Q, e) for closed-form predictives, or None.
        self.rest_block = None
        if rest_block is not None:
            index, Q, _, e = self.blocks[-1]
            self.rest_block = (index, Q, e.reshape(-1))
        # Jacobian-free path (linearization.linear_factors) when every weight is in a layer block.
        self.supports_factors = r_index.numel() == 0 and rest_block is None
        # Output-layer G factors are often (signed) permutations: regression's G ∝ I.
        layers = self.blocks[: self.n_layers]
        self._shared = [SharedRows(QG, signed_permutation(QG)) for _, QG, _, _ in layers]
        self._inv_e: list[Tensor] | None = None

    def layer_terms(self, factors):
        """Per layer ``(Pa, Pb, w)``: rotated factors and inverse eigenvalues (see :func:`layer_quad`)."""
        layers = self.blocks[: self.n_layers]
        if self._inv_e is None:
            self._inv_e = [1.0 / e for _, _, _, e in layers]
        for lf, (_, QG, QA, _), shared, w in zip(factors, layers, self._shared, self._inv_e, strict=True):
            Pb = shared if lf.identity else lf.b @ QG
            yield augmented_inputs(lf) @ QA, Pb, w

    def quad_factors(self, factors) -> Tensor:
        """``J H⁻¹ Jᵀ`` ``(..., n·K, n·K)`` from per-layer factors of the rows."""
        return layer_quad(self.layer_terms(factors))

    def quad_diag_factors(self, factors) -> Tensor:
        """Diagonal ``(..., n·K)`` of :meth:`quad_factors`."""
        return layer_quad_diag(self.layer_terms(factors))

    def logdet(self) -> Tensor:
        out = self.rest[1].log().sum()
        for _, _, _, e in self.blocks:
            out = out + e.log().sum()
        return out

    @staticmethod
    def _rotate(Jb: Tensor, QG: Tensor, QA: Tensor) -> Tensor:
        """``Q_Gᵀ Jb Q_A`` for ``Jb`` of shape ``(..., out, in)``."""
        return QG.T @ Jb @ QA

    def _gather(self, J: Tensor, index: Tensor, QG: Tensor, QA: Tensor) -> Tensor:
        Jb = J[..., index].reshape(*J.shape[:-1], QG.shape[0], QA.shape[0])
        return self._rotate(Jb, QG, QA)

    def quad(self, J: Tensor) -> Tensor:
        r_index, h = self.rest
        Jr = J[..., r_index]
        out = (Jr / h) @ Jr.transpose(-1, -2)
        for index, QG, QA, e in self.blocks:
            T = self._gather(J, index, QG, QA).flatten(-2)
            out = out + (T / e.reshape(-1)) @ T.transpose(-1, -2)
        return out

    def quad_diag(self, J: Tensor) -> Tensor:
        r_index, h = self.rest
        out = (J[..., r_index].pow(2) / h).sum(-1)
        for index, QG, QA, e in self.blocks:
            T = self._gather(J, index, QG, QA)
            out = out + (T.pow(2) / e).sum((-1, -2))
        return out

    def _apply(self, V: Tensor, power: float) -> Tensor:
        """``H^power V`` for ``V`` of shape ``(S, m)`` (power -1, 1, or -1/2 on white noise)."""
        out = torch.zeros_like(V)
        r_index, h = self.rest
        out[r_index] = V[r_index] * h.pow(power).unsqueeze(-1)
        for index, QG, QA, e in self.blocks:
            Vb = V[index].T.reshape(-1, QG.shape[0], QA.shape[0])
            T = self._rotate(Vb, QG, QA) * e.pow(power)
            back = QG @ T @ QA.T
            out[index] = back.reshape(V.shape[1], -1).T
        return out

    def solve(self, V: Tensor) -> Tensor:
        return self._apply(V, -1.0)

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        z = randn(self.S, n, generator=generator, dtype=self.dtype, device=self.device)
        out = torch.zeros_like(z)
        r_index, h = self.rest
        out[r_index] = z[r_index] / h.sqrt().unsqueeze(-1)
        for index, QG, QA, e in self.blocks:
            Zb = z[index].T.reshape(n, QG.shape[0], QA.shape[0]) / e.sqrt()
            out[index] = (QG @ Zb @ QA.T).reshape(n, -1).T
        return out.T

    def _dense(self, power: float) -> Tensor:
        M = torch.zeros(self.S, self.S, dtype=self.dtype, device=self.device)
        r_index, h = self.rest
        M[r_index, r_index] = h.pow(power)
        for index, QG, QA, e in self.blocks:
            Q = torch.kron(QG, QA)
            M[index.unsqueeze(-1), index] = (Q * e.reshape(-1).pow(power)) @ Q.T
        return M

    def precision(self) -> Tensor:
        return self._dense(1.0)

    def covariance(self) -> Tensor:
        return self._dense(-1.0)
