"""Per-layer closed forms of ``J S Jᵀ`` for weights that are whole Linear layers.

A Linear layer's Jacobian rows are outer products ``b ⊗ ã`` of the output
gradients ``b`` and the inputs ``ã`` (with a 1 for the bias; see
:mod:`labo.laplace.linearization.linear_factors`). In a basis where the layer's covariance block
is diagonal (Kron: the K-FAC eigenbasis; Diagonal: the identity) the covariance
of the outputs is a contraction of the rotated factors with that diagonal, which
:func:`layer_quad` and :func:`layer_quad_diag` compute without forming a Jacobian.
For the output layer ``b`` is the identity for every row (:class:`SharedRows`).
"""

from __future__ import annotations

import torch
from torch import Tensor


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
