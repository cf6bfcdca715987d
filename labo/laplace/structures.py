"""Posterior structures: Full, Diagonal and Kron (K-FAC).

A structure option (``Full()``, ``Diagonal()``, ``Kron()``) builds a
*curvature* module that stores the data-term GGN in its own form (dense matrix,
diagonal, eigendecomposed Kronecker factors). Given hyperparameters, the
curvature yields a *posterior precision* ``H = scale · C + Λ₀`` (``scale = 1/σ²``
for regression, 1 for classification; ``Λ₀`` the per-weight prior precision)
offering the same operations for every structure:

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
Linear layers get a diagonal GGN block.
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor, nn

from labo.exceptions import NotFittedError, NumericalError, NumericalWarning
from labo.laplace.curvature import ggn, kfac_factors, kfac_layer_plan
from labo.laplace.subsets import ResolvedSubset
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


# ----------------------------------------------------------------------------------------
# Posterior precisions: one per (curvature, hyperparameters).


def augmented_inputs(lf) -> Tensor:
    """Layer inputs with a column of ones for the bias: ``(..., n, in + bias)``."""
    a = lf.a
    if lf.has_bias:
        a = torch.cat([a, torch.ones_like(a[..., :1])], dim=-1)
    return a


class SharedRows:
    """Output-side factor equal for every row: ``Pb[r] = M`` ``(K, out)`` (the output layer).

    ``M=None`` is the identity; ``perm`` (optional) says ``M`` is a signed permutation,
    ``M[k, perm[k]] = ±1``, so products with it are gathers.
    """

    def __init__(self, M: Tensor | None, perm: Tensor | None = None):
        self.M, self.perm = M, perm
        self._M2: Tensor | None = None
        self._V: tuple[Tensor, Tensor] | None = None

    def variance_weights(self, w: Tensor) -> Tensor:
        """``V[k, i] = Σ_g M[k, g]² w[g, i]`` ``(K, in)``, computed once per ``w``.

        The marginal variance of output ``k`` is then ``Σ_i Pa[r, i]² V[k, i]``: one
        ``(n x in) @ (in x K)`` product per call, whatever the basis ``M``.
        """
        if self._V is None or self._V[0] is not w:
            if self.M is None:
                V = w
            elif self.perm is not None:
                V = w[self.perm]
            else:
                V = self.M2 @ w
            self._V = (w, V)
        return self._V[1]

    @property
    def M2(self) -> Tensor:
        """``M ∘ M``, computed once (a ``K x K`` product per call otherwise)."""
        if self._M2 is None:
            self._M2 = self.M.pow(2)
        return self._M2


def signed_permutation(Q: Tensor) -> Tensor | None:
    """``perm`` with ``Q[k, perm[k]] = ±1`` if ``Q`` is a signed permutation matrix, else None."""
    nz = Q != 0
    if not bool((nz.sum(-1) == 1).all()) or not bool((nz.sum(-2) == 1).all()):
        return None
    perm = Q.abs().argmax(-1)
    if not torch.allclose(Q.abs().gather(-1, perm.unsqueeze(-1)), torch.ones_like(Q[:, :1])):
        return None
    return perm


def _shared_select(V: Tensor, shared: SharedRows) -> Tensor | None:
    """``V[..., perm]`` (identity: ``V``) along the last dim, or None for a dense ``M``."""
    if shared.M is None:
        return V
    if shared.perm is not None:
        return V[..., shared.perm]
    return None


def layer_quad(terms) -> Tensor:
    """``Σ_l Σ_{g,i} Pb[m,k,g] Pa[m,i] w[g,i] Pb[n,l,g] Pa[n,i]`` as ``(..., n·K, n·K)``.

    ``terms`` yields per layer ``Pa (..., n, in)``, ``Pb (..., n, K, out)`` (or
    :class:`SharedRows` for the output layer) and ``w (out, in)``: the layer's Jacobian
    rows ``Pb ⊗ Pa`` in a basis where its covariance block is diagonal with entries
    ``w`` (Kron: the eigenbasis; Diagonal: the identity).
    """
    out = None
    for Pa, Pb, w in terms:
        n = Pa.shape[-2]
        if isinstance(Pb, SharedRows):
            V = torch.einsum("...mi,...ni,gi->...mng", Pa, Pa, w)
            Vk = _shared_select(V, Pb)
            if Vk is not None:  # cov[m,k,n,l] = δ_kl V[m,n,perm(k)]
                K = Vk.shape[-1]
                term = torch.diag_embed(Vk).transpose(-3, -2)
            else:
                K = Pb.M.shape[0]
                term = torch.einsum("kg,...mng,lg->...mknl", Pb.M, V, Pb.M)
            term = term.reshape(*term.shape[:-4], n * K, n * K)
        elif n <= Pa.shape[-1]:  # few rows (a q-batch): pairwise contraction, O(n² (in + out))
            K = Pb.shape[-2]
            V = torch.einsum("...mi,...ni,gi->...mng", Pa, Pa, w)
            term = torch.einsum("...mkg,...mng,...nlg->...mknl", Pb, V, Pb).reshape(
                *Pb.shape[:-3], n * K, n * K
            )
        else:  # many rows: rotated per-row Jacobians, O(n · out · in) memory instead of O(n² out)
            K = Pb.shape[-2]
            T = (Pb.unsqueeze(-1) * Pa.unsqueeze(-2).unsqueeze(-2)).reshape(*Pb.shape[:-3], n * K, -1)
            term = (T * w.reshape(-1)) @ T.transpose(-1, -2)
        out = term if out is None else out + term
    return out


def layer_quad_diag(terms) -> Tensor:
    """Diagonal ``(..., n·K)`` of :func:`layer_quad`, in ``O(n K (out · in))``.

    For the output layer (:class:`SharedRows`) it is ``Pa² @ Vᵀ`` with the per-posterior
    ``V = M² w`` (:meth:`SharedRows.variance_weights`): the last-layer closed form, one
    ``(n x in) @ (in x K)`` product per call and no ``K x K`` block per row.
    """
    out = None
    for Pa, Pb, w in terms:
        if isinstance(Pb, SharedRows):
            term = Pa.pow(2) @ Pb.variance_weights(w).transpose(-1, -2)  # (..., n, K)
        else:
            term = ((Pb.pow(2) @ w) * Pa.pow(2).unsqueeze(-2)).sum(-1)
        out = term if out is None else out + term
    return out.reshape(*out.shape[:-2], -1)


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
    ``(index, Q_G, λ_G, Q_A, λ_A)``; ``rest`` holds ``(index, c)``.
    """

    def __init__(self, blocks, rest, prior: Tensor, scale: Tensor, n_weights: int):
        self.S = n_weights
        self.blocks = []
        for index, QG, lG, QA, lA in blocks:
            D = prior[index].reshape(QG.shape[0], QA.shape[0])
            d_eig = (QG * QG).T @ D @ (QA * QA)
            e = scale * torch.outer(lG, lA) + d_eig
            self.blocks.append((index, QG, QA, e))
        r_index, c = rest
        self.rest = (r_index, scale * c + prior[r_index])
        self.dtype, self.device = prior.dtype, prior.device
        # Jacobian-free path (labo.laplace.linear_factors) when every weight is in a block.
        self.supports_factors = r_index.numel() == 0
        # Output-layer G factors are often (signed) permutations: regression's G ∝ I.
        self._shared = [SharedRows(QG, signed_permutation(QG)) for _, QG, _, _ in self.blocks]
        self._inv_e: list[Tensor] | None = None

    def layer_terms(self, factors):
        """Per layer ``(Pa, Pb, w)``: rotated factors and inverse eigenvalues (see :func:`layer_quad`)."""
        if self._inv_e is None:
            self._inv_e = [1.0 / e for _, _, _, e in self.blocks]
        for lf, (_, QG, QA, _), shared, w in zip(
            factors, self.blocks, self._shared, self._inv_e, strict=True
        ):
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


# ----------------------------------------------------------------------------------------
# Curvature modules: store the data-term GGN (buffers, so state_dict works).


class Curvature(nn.Module):
    """Data-term curvature in one structure's form; ``compute`` fills it."""

    def __init__(self):
        super().__init__()
        self.register_buffer("fitted", torch.tensor(False))

    def check_fitted(self) -> None:
        if not bool(self.fitted):
            raise NotFittedError("The Laplace posterior has no curvature yet: call fit() first.")

    def compute(self, network, subset, likelihood, X, n_outputs, noise_var=None) -> None:  # pragma: no cover
        raise NotImplementedError

    def precision(self, prior: Tensor, scale: Tensor, prior_is_scalar: bool = False):
        raise NotImplementedError  # pragma: no cover

    def dense(self) -> Tensor:  # pragma: no cover
        raise NotImplementedError


class FullCurvature(Curvature):
    def __init__(self, n_weights: int):
        super().__init__()
        self.register_buffer("C", torch.zeros(n_weights, n_weights))
        self._eig: Tensor | None = None

    def compute(self, network, subset, likelihood, X, n_outputs, noise_var=None) -> None:
        self.C = ggn(network, subset, likelihood, X, n_outputs, noise_var=noise_var)
        self._eig = None
        self.fitted.fill_(True)

    def _load_from_state_dict(self, *args, **kwargs):
        self._eig = None
        super()._load_from_state_dict(*args, **kwargs)

    def eigenvalues(self) -> Tensor:
        """Eigenvalues ``(S,)`` of C clamped at 0, computed once per fit on first use."""
        if self._eig is None:
            self._eig = torch.linalg.eigvalsh(self.C).clamp_min(0.0)
        return self._eig

    def precision(self, prior: Tensor, scale: Tensor, prior_is_scalar: bool = False):
        self.check_fitted()
        return FullPrecision(self.C, prior, scale, self.eigenvalues if prior_is_scalar else None)

    def dense(self) -> Tensor:
        return self.C


class DiagonalCurvature(Curvature):
    def __init__(self, n_weights: int):
        super().__init__()
        self.register_buffer("c", torch.zeros(n_weights))

    def compute(self, network, subset, likelihood, X, n_outputs, noise_var=None) -> None:
        self.c = ggn(network, subset, likelihood, X, n_outputs, diagonal=True, noise_var=noise_var)
        self.fitted.fill_(True)

    def precision(self, prior: Tensor, scale: Tensor, prior_is_scalar: bool = False):
        self.check_fitted()
        return DiagonalPrecision(self.c, prior, scale)

    def dense(self) -> Tensor:
        return torch.diag(self.c)


class KronCurvature(Curvature):
    def __init__(self, network: nn.Module, subset: ResolvedSubset):
        super().__init__()
        plan, rest_index = kfac_layer_plan(network, subset)
        self.layer_names = [name for name, _ in plan]
        self.n_weights = subset.n_weights
        modules = dict(network.named_modules())
        for i, (name, index) in enumerate(plan):
            out_f, in_f = modules[name].weight.shape
            in_f += modules[name].bias is not None
            self.register_buffer(f"index_{i}", index)
            self.register_buffer(f"QG_{i}", torch.zeros(out_f, out_f))
            self.register_buffer(f"lG_{i}", torch.zeros(out_f))
            self.register_buffer(f"QA_{i}", torch.zeros(in_f, in_f))
            self.register_buffer(f"lA_{i}", torch.zeros(in_f))
        self.register_buffer("rest_index", rest_index)
        self.register_buffer("rest_c", torch.zeros(rest_index.numel()))
        self._rest_subset = None
        if rest_index.numel():
            self._rest_subset = _restrict(subset, rest_index)

    def _blocks(self):
        return [
            tuple(getattr(self, f"{k}_{i}") for k in ("index", "QG", "lG", "QA", "lA"))
            for i in range(len(self.layer_names))
        ]

    def compute(self, network, subset, likelihood, X, n_outputs, noise_var=None) -> None:
        factors = kfac_factors(network, self.layer_names, likelihood, X, n_outputs, noise_var)
        for i, (A, G) in enumerate(factors):
            lA, QA = clamped_eigh(A, f"K-FAC factor A of layer {self.layer_names[i]!r}")
            lG, QG = clamped_eigh(G, f"K-FAC factor G of layer {self.layer_names[i]!r}")
            for k, v in (("QG", QG), ("lG", lG), ("QA", QA), ("lA", lA)):
                setattr(self, f"{k}_{i}", v)
        if self._rest_subset is not None:
            self.rest_c = ggn(
                network, self._rest_subset, likelihood, X, n_outputs, diagonal=True, noise_var=noise_var
            )
        else:
            self.rest_c = self.rest_c.to(X)
        self.fitted.fill_(True)

    def precision(self, prior: Tensor, scale: Tensor, prior_is_scalar: bool = False):
        self.check_fitted()
        return KronPrecision(self._blocks(), (self.rest_index, self.rest_c), prior, scale, self.n_weights)

    def dense(self) -> Tensor:
        """The K-FAC data curvature ``G ⊗ A`` per block (plus the diagonal rest), dense."""
        S = self.n_weights
        C = torch.zeros(S, S, dtype=self.rest_c.dtype, device=self.rest_c.device)
        C[self.rest_index, self.rest_index] = self.rest_c
        for index, QG, lG, QA, lA in self._blocks():
            Q = torch.kron(QG, QA)
            C[index.unsqueeze(-1), index] = (Q * torch.outer(lG, lA).reshape(-1)) @ Q.T
        return C


def _restrict(subset: ResolvedSubset, positions: Tensor) -> ResolvedSubset:
    """The sub-subset of whole selected tensors covering the given flat positions."""
    from labo.laplace.subsets import SelectedParameter

    keep, offset = [], 0
    pos = set(positions.tolist())
    for s in subset.selected:
        if s.offset in pos:
            keep.append(SelectedParameter(s.name, s.shape, s.index, offset, s.size))
            offset += s.size
    restricted = ResolvedSubset.__new__(ResolvedSubset)
    restricted.selected = keep
    restricted.n_weights = offset
    restricted._names = {s.name for s in keep}
    restricted._param_names = subset._param_names
    return restricted


# ----------------------------------------------------------------------------------------
# User-facing options.


class Structure:
    """Base class of structure options; :meth:`build` makes an empty curvature module."""

    def build(self, network: nn.Module, subset: ResolvedSubset) -> Curvature:  # pragma: no cover
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class Full(Structure):
    """Dense ``S x S`` posterior precision (exact GGN). Memory ``O(S²)``, factorisation ``O(S³)``."""

    def build(self, network: nn.Module, subset: ResolvedSubset) -> Curvature:
        return FullCurvature(subset.n_weights)


class Diagonal(Structure):
    """Diagonal of the exact GGN plus the prior. Memory ``O(S)``."""

    def build(self, network: nn.Module, subset: ResolvedSubset) -> Curvature:
        return DiagonalCurvature(subset.n_weights)


class Kron(Structure):
    """K-FAC: per Linear layer ``G ⊗ A``, eigendecomposed (see the module docstring)."""

    def build(self, network: nn.Module, subset: ResolvedSubset) -> Curvature:
        return KronCurvature(network, subset)
