"""Gaussian RBF features and the closed form of their Kron-rest covariance.

``RBFFeatures`` maps ``x`` to ``φ_j(x) = exp(-‖x − c_j‖² / 2ℓ²)`` for learnable centres
``c_j`` and one learnable lengthscale ``ℓ`` (stored as its log). Under ``Kron`` these
weights are not a Linear layer: they fall into the diagonal "rest" block of the
posterior precision, whose predictive would otherwise go through per-row Jacobians
of ``J·d`` columns (``J`` centres, ``d`` inputs). Their Jacobian has a closed form
through the output gradients ``g_kj = ∂f_k/∂φ_j``:

* ``∂f_k/∂c_ji = g_kj φ_j (x_i − c_ji) / ℓ²``;
* ``∂f_k/∂log ℓ = Σ_j g_kj φ_j ‖x − c_j‖² / ℓ²``.

With the rest's diagonal covariance ``w_ji = 1/h_ji`` (centres) and ``1/h_ℓ``, the
covariance of rows ``m, n`` and outputs ``k, l`` is

``Σ_j u_kj(m) u_lj(n) Σ_i (x_mi − c_ji)(x_ni − c_ji) w_ji + r_k(m) r_l(n) / h_ℓ``

with ``u = g φ / ℓ²`` and ``r`` the lengthscale column: no ``rows x J·d`` Jacobian is
formed, and it stays differentiable w.r.t. ``x`` (acquisition gradients). With the rest
as one full block (``Kron(rest="full")``, which keeps the correlations between centres)
the Jacobian rows are formed and rotated into the block's eigenbasis instead.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from labo.laplace.subsets import ResolvedSubset


class RBFFeatures(nn.Module):
    """``x -> exp(-||x - c_j||² / (2ℓ²))`` for learnable centres ``c_j`` and one learnable
    lengthscale ``ℓ`` (stored as its log). Maps ``... x d`` to ``... x n_centres``."""

    def __init__(self, centres: Tensor, lengthscale: float):
        super().__init__()
        if centres.dim() != 2:
            raise ValueError(f"centres must be n_centres x d, got shape {tuple(centres.shape)}.")
        if not lengthscale > 0:
            raise ValueError(f"lengthscale must be positive, got {lengthscale!r}.")
        self.centres = nn.Parameter(centres.detach().clone())
        self.log_lengthscale = nn.Parameter(
            torch.tensor(float(lengthscale), dtype=centres.dtype, device=centres.device).log()
        )

    def forward(self, x: Tensor) -> Tensor:
        c = self.centres
        sq = x.pow(2).sum(-1, keepdim=True) - 2 * x @ c.T + c.pow(2).sum(-1)
        return torch.exp(-0.5 * sq.clamp_min(0) / self.log_lengthscale.exp().pow(2))


@dataclass
class RBFRestPlan:
    """Where an ``RBFFeatures`` module's weights sit in a Kron posterior's diagonal rest.

    Attributes:
        module: The module's name in ``network.named_modules()``.
        centres: Positions of its centres (row-major ``J x d``) in the rest vector.
        lengthscale: Position of its log-lengthscale in the rest vector, or None (not Bayesian).
        centres_range: ``(start, stop)`` when ``centres`` is that contiguous range, else None.
    """

    module: str
    centres: Tensor
    lengthscale: int | None
    centres_range: tuple[int, int] | None = None


def rbf_rest_plan(network: nn.Module, subset: ResolvedSubset, curvature) -> RBFRestPlan | None:
    """The plan when ``curvature`` is Kron's and its diagonal rest is exactly one
    ``RBFFeatures`` module's whole centres (and optionally its whole log-lengthscale),
    else None."""
    rest_index = getattr(curvature, "rest_index", None)
    rbf = [(n, m) for n, m in network.named_modules() if isinstance(m, RBFFeatures)]
    if rest_index is None or len(rbf) != 1 or rest_index.numel() == 0:
        return None
    name, _ = rbf[0]
    prefix = f"{name}." if name else ""
    by_name = {s.name: s for s in subset.selected}
    cs, ls = by_name.get(prefix + "centres"), by_name.get(prefix + "log_lengthscale")
    if cs is None or cs.index is not None or (ls is not None and ls.index is not None):
        return None
    rest = rest_index.cpu()
    expected = [cs.offset + torch.arange(cs.size)]
    if ls is not None:
        expected.append(torch.tensor([ls.offset]))
    if not torch.equal(torch.sort(rest).values, torch.sort(torch.cat(expected)).values):
        return None
    where = {int(v): i for i, v in enumerate(rest.tolist())}
    positions = [where[cs.offset + i] for i in range(cs.size)]
    contiguous = positions == list(range(positions[0], positions[0] + cs.size))
    centres = torch.tensor(positions, device=rest_index.device)
    span = (positions[0], positions[0] + cs.size) if contiguous else None
    return RBFRestPlan(name, centres, None if ls is None else where[ls.offset], span)


class RBFTerm:
    """The rest's covariance terms for rows: inputs ``x (..., n, d)``, features
    ``φ (..., n, J)`` and output gradients ``g (..., n, K, J)`` (see the module docstring).

    The rest's precision is diagonal (``h``, in rest order) or, for ``Kron(rest="full")``,
    one full block ``Q diag(e) Qᵀ`` (``block=(Q, e)``): the rows are then rotated,
    ``P = J_rest Q`` (``(..., n, K, R)``), and the covariance is ``P diag(1/e) Pᵀ``.
    """

    def __init__(
        self,
        module: RBFFeatures,
        x: Tensor,
        phi: Tensor,
        g: Tensor,
        plan: RBFRestPlan,
        h: Tensor | None = None,
        block: tuple[Tensor, Tensor] | None = None,
    ):
        if (h is None) == (block is None):
            raise ValueError("RBFTerm needs exactly one of h (diagonal rest) and block (full rest).")
        c = module.centres.detach()
        inv_ell2 = module.log_lengthscale.detach().mul(-2).exp()
        self.x, self.c = x, c
        self.u = g * (phi * inv_ell2).unsqueeze(-2)  # (..., n, K, J)
        self.r = None
        if plan.lengthscale is not None:
            sq = (x.unsqueeze(-2) - c).pow(2).sum(-1)  # (..., n, J)
            self.r = (self.u * sq.unsqueeze(-2)).sum(-1)  # (..., n, K)
        self.P = None
        if block is not None:
            Q, e = block
            # Q's centre rows: a view (no R x R copy per call) when they are a range
            rows = Q[slice(*plan.centres_range)] if plan.centres_range else Q[plan.centres.to(Q.device)]
            P = self.jacobian() @ rows
            if self.r is not None:
                P = P + self.r.unsqueeze(-1) * Q[plan.lengthscale]
            self.P, self.inv_e = P, 1.0 / e  # (..., n, K, R), (R,)
            return
        self.w = (1.0 / h[plan.centres.to(h.device)]).reshape(c.shape)  # (J, d)
        self.cw = c * self.w
        self.s = (c * self.cw).sum(-1)  # (J,)
        if self.r is not None:
            self.w_ell = 1.0 / h[plan.lengthscale]

    def jacobian(self) -> Tensor:
        """The centres' Jacobian ``(..., n, K, J·d)`` (row-major ``J x d``), materialised."""
        diff = self.x.unsqueeze(-2) - self.c  # (..., n, J, d)
        T = self.u.unsqueeze(-1) * diff.unsqueeze(-3)  # (..., n, K, J, d)
        return T.flatten(-2)

    def quad(self) -> Tensor:
        """``(..., n·K, n·K)``: the rest's part of ``J S Jᵀ`` within each t-batch.

        Few rows (``n ≤ K d``, a q-batch): pairwise, ``O(n² J d)`` without a Jacobian; many
        rows: through the materialised Jacobian, ``O(n K J d)`` memory instead of ``O(n² J)``.
        """
        if self.P is not None:
            P = self.P.flatten(-3, -2)  # (..., n·K, R)
            return (P * self.inv_e) @ P.transpose(-1, -2)
        x, u = self.x, self.u
        n, K = u.shape[-3], u.shape[-2]
        if n <= K * x.shape[-1]:
            xcw = x @ self.cw.T  # (..., n, J)
            Q = torch.einsum("...mi,...ni,ji->...mnj", x, x, self.w)
            Q = Q - xcw.unsqueeze(-2) - xcw.unsqueeze(-3) + self.s
            out = torch.einsum("...mkj,...mnj,...nlj->...mknl", u, Q, u)
            out = out.reshape(*out.shape[:-4], n * K, n * K)
        else:
            T = self.jacobian().flatten(-3, -2)  # (..., n·K, J·d)
            out = (T * self.w.reshape(-1)) @ T.transpose(-1, -2)
        if self.r is not None:
            r = self.r.flatten(-2)
            out = out + r.unsqueeze(-1) * r.unsqueeze(-2) * self.w_ell
        return out

    def layer_terms(self) -> list[tuple[Tensor, Tensor, Tensor]]:
        """One output (``K = 1``): the rest as ``(Pa, Pb, w)`` terms of
        :func:`labo.laplace.linearization.layer_quads.layer_quad` (Pa the Jacobian rows, Pb ones), so
        factored (lazy) covariances can hold it too."""
        if self.u.shape[-2] != 1:
            raise ValueError("RBFTerm.layer_terms is for one output.")
        ones = torch.ones_like(self.x[..., :1]).unsqueeze(-1)  # (..., n, 1, 1)
        if self.P is not None:
            return [(self.P[..., 0, :], ones, self.inv_e.reshape(1, -1))]
        terms = [(self.jacobian()[..., 0, :], ones, self.w.reshape(1, -1))]
        if self.r is not None:
            terms.append((self.r, ones, self.w_ell.reshape(1, 1)))
        return terms

    def quad_diag(self) -> Tensor:
        """``(..., n·K)``: the diagonal of :meth:`quad`, in ``O(n J d)``."""
        if self.P is not None:
            out = (self.P.pow(2) * self.inv_e).sum(-1)
            return out.reshape(*out.shape[:-2], -1)
        x, u = self.x, self.u
        q = x.pow(2) @ self.w.T - 2 * x @ self.cw.T + self.s  # (..., n, J)
        out = (u.pow(2) * q.unsqueeze(-2)).sum(-1)
        if self.r is not None:
            out = out + self.r.pow(2) * self.w_ell
        return out.reshape(*out.shape[:-2], -1)


__all__ = ["RBFFeatures", "RBFRestPlan", "RBFTerm", "rbf_rest_plan"]
