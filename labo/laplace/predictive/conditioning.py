"""Exact Gaussian conditioning of the linearised (GLM) posterior on new observations.

Under the linearised model ``f(x) = f(x; θ̂) + J(x)(θ − θ̂)`` with ``θ ~ N(θ̂, H⁻¹)``,
observing ``y_c = f(X_c) + ε`` (``ε ~ N(0, diag(v))``) gives the weight posterior

    H' = H + J_cᵀ V⁻¹ J_c,     θ̄ = θ̂ + H'⁻¹ J_cᵀ V⁻¹ (y_c − f(X_c)),

which is exactly what refitting the Laplace posterior on the union of the data at
the same linearisation point gives (same GGN rows, no retraining), with the mean of
one Newton step of the linearised model. Two exact updates, no refactorisation:

* function space (``Functional()``): ``H'`` has ``q`` more GGN rows; its ``N x N``
  Cholesky factor grows by a block from triangular solves (``O(N² q)``), see
  :mod:`labo.laplace.structures.functional_update`. Used when the conditioning inputs are not batched.
* weight space (every structure, batched inputs): Woodbury,
  ``H'⁻¹ = H⁻¹ − U C⁻¹ Uᵀ`` with ``U = H⁻¹ J_cᵀ`` (``q`` solves) and the ``q x q``
  matrix ``C = J_c U + V`` (:class:`WoodburyPrecision`).

Either way ``θ̄ − θ̂ = U C⁻¹ r`` for residuals ``r``: a batch of targets for the same
inputs (BoTorch fantasies) shares the factorisation and costs one ``q x q`` solve
each. Test covariances come from the structure's ``quad`` (or its Jacobian-free
``quad_factors``) minus the rank-``q`` correction; means are ``J(x)(θ̄ − θ̂)``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from labo.exceptions import HyperparameterError, InputShapeError, NonFiniteInputError
from labo.laplace.linearization.jacobians import output_and_jacobian
from labo.laplace.linearization.linear_factors import LayerFactors, linear_factors
from labo.laplace.predictive.function_samples import FunctionSamples
from labo.laplace.predictive.glm import glm_factors
from labo.laplace.structures.functional import FunctionalPrecision
from labo.laplace.structures.functional_update import extend_functional
from labo.laplace.structures.precisions import robust_cholesky
from labo.laplace.structures.protocol import Precision
from labo.laplace.validation import randn

if TYPE_CHECKING:
    from labo.laplace.laplace import LaplaceApproximation


def jvp_from_factors(la: LaplaceApproximation, factors: list[LayerFactors], V: Tensor) -> Tensor:
    """``J(x) v`` from per-layer factors of whole-Linear-layer subsets, no Jacobian.

    For a Linear layer ``s = W a + b`` the directional derivative of output ``k`` along
    ``v = (V_W, v_b)`` is ``b_k · (V_W a + v_b)``.

    Args:
        la: The ``LaplaceApproximation`` (for the weight layout).
        factors: Factors of the rows: ``a (*bx, n, in)``, ``b (*bx, n, K, out)``.
        V: Directions ``(*bv, S)``.

    Returns:
        ``(*broadcast(bx, bv), n, K)``.
    """
    by_name = {s.name: s for s in la.subset.selected}
    out = None
    for lf in factors:
        prefix = f"{lf.name}." if lf.name else ""
        out_f, in_f = lf.b.shape[-1], lf.a.shape[-1]
        w = by_name[prefix + "weight"]
        Vw = V[..., w.offset : w.offset + w.size].reshape(*V.shape[:-1], 1, out_f, in_f)
        s = (Vw @ lf.a.unsqueeze(-1)).squeeze(-1)  # (*b, n, out)
        if lf.has_bias:
            bias = by_name[prefix + "bias"]
            s = s + V[..., bias.offset : bias.offset + bias.size].unsqueeze(-2)
        term = (lf.b @ s.unsqueeze(-1)).squeeze(-1)  # (*b, n, K)
        out = term if out is None else out + term
    return out


class WoodburyPrecision:
    """``H' = H + J_cᵀ diag(v)⁻¹ J_c`` from a base precision, by Woodbury (batched over ``J_c``).

    Args:
        base: The posterior precision of any structure (needs ``solve`` and ``quad``).
        Jc: Jacobian rows of the observations ``(*bc, m, S)``.
        noise: Noise variances ``(*bc, m)``.
        factor_cross: Optional ``factors -> (..., n·K, m)`` computing ``J U`` without the
            Jacobian (enables ``quad_factors`` when the base supports it).
    """

    def __init__(self, base: Precision, Jc: Tensor, noise: Tensor, factor_cross=None):
        self.base, self.Jc, self.noise = base, Jc, noise
        *bc, m, S = Jc.shape
        flat = Jc.reshape(-1, S).T  # (S, bc·m): one multi-column solve for every batch
        self.U = base.solve(flat).T.reshape(*bc, m, S).transpose(-1, -2)  # H⁻¹ J_cᵀ, (*bc, S, m)
        self.C = Jc @ self.U + torch.diag_embed(noise)
        self.L_C = robust_cholesky(self.C)
        self._factor_cross = factor_cross
        self.supports_factors = factor_cross is not None and base.supports_factors

    def _correction(self, JU: Tensor) -> Tensor:
        """``L_C⁻¹ (J U)ᵀ``: ``(..., m, t)`` for ``JU (..., t, m)``."""
        L = self.L_C
        batch = torch.broadcast_shapes(L.shape[:-2], JU.shape[:-2])
        rhs = JU.transpose(-1, -2)
        return torch.linalg.solve_triangular(
            L.expand(*batch, *L.shape[-2:]), rhs.expand(*batch, *rhs.shape[-2:]), upper=False
        )

    def quad(self, J: Tensor) -> Tensor:
        W = self._correction(J @ self.U)
        return self.base.quad(J) - W.transpose(-1, -2) @ W

    def quad_diag(self, J: Tensor) -> Tensor:
        W = self._correction(J @ self.U)
        return self.base.quad_diag(J) - W.pow(2).sum(-2)

    def quad_factors(self, factors) -> Tensor:
        W = self._correction(self._factor_cross(factors, self.U))
        return self.base.quad_factors(factors) - W.transpose(-1, -2) @ W

    def quad_diag_factors(self, factors) -> Tensor:
        W = self._correction(self._factor_cross(factors, self.U))
        return self.base.quad_diag_factors(factors) - W.pow(2).sum(-2)

    def mean_shift(self, resid: Tensor) -> Tensor:
        """``θ̄ − θ̂ = U C⁻¹ r`` for residuals ``(*b, m)``: ``(*b, S)``."""
        batch = torch.broadcast_shapes(self.L_C.shape[:-2], resid.shape[:-1])
        L = self.L_C.expand(*batch, *self.L_C.shape[-2:])
        a = torch.cholesky_solve(resid.expand(*batch, resid.shape[-1]).unsqueeze(-1), L)
        return (self.U @ a).squeeze(-1)

    def logdet(self) -> Tensor:
        logdet_c = 2 * self.L_C.diagonal(dim1=-2, dim2=-1).log().sum(-1)
        return self.base.logdet() + logdet_c - self.noise.log().sum(-1)

    def solve(self, V: Tensor) -> Tensor:
        """``H'⁻¹ V`` for ``V (S, k)`` (unbatched ``J_c``)."""
        return self.base.solve(V) - self.U @ torch.cholesky_solve(self.U.transpose(-1, -2) @ V, self.L_C)

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """Matheron's rule: ``δ' = δ − U C⁻¹ (J_c δ + ε)``, ``δ ~ N(0, H⁻¹)``: ``(n, S)`` (unbatched)."""
        delta = self.base.sample(n, generator)  # (n, S)
        kw = {"generator": generator, "dtype": delta.dtype, "device": delta.device}
        eps = randn(n, self.noise.shape[-1], **kw) * self.noise.sqrt()
        a = torch.cholesky_solve((delta @ self.Jc.T + eps).T, self.L_C)  # (m, n)
        return delta - (self.U @ a).T

    def precision(self) -> Tensor:
        return self.base.precision() + (self.Jc.transpose(-1, -2) / self.noise.unsqueeze(-2)) @ self.Jc

    def covariance(self) -> Tensor:
        return self.base.covariance() - self.U @ torch.cholesky_solve(self.U.transpose(-1, -2), self.L_C)


# ----------------------------------------------------------------------------------------
# The conditioned posterior.


def _check_conditioning_data(
    la: LaplaceApproximation, X_c: Tensor, Y_c: Tensor, noise
) -> tuple[Tensor, Tensor]:
    if la.likelihood != "regression":
        raise ValueError(
            f"Exact conditioning needs a regression posterior, got likelihood={la.likelihood!r}."
        )
    lead, _ = la.split_inputs(X_c)
    K = int(la.n_outputs)
    n_c = lead[-1]
    if not isinstance(Y_c, Tensor) or Y_c.dim() < 2 or tuple(Y_c.shape[-2:]) != (n_c, K):
        raise InputShapeError(
            f"Expected Y_c with shape (..., {n_c}, {K}) to match X_c of shape {tuple(X_c.shape)}, "
            f"got {tuple(getattr(Y_c, 'shape', ()))}."
        )
    if not torch.isfinite(Y_c).all():
        raise NonFiniteInputError(f"Y_c contains {int((~torch.isfinite(Y_c)).sum())} NaN/inf values.")
    if noise is None:
        noise = la.noise_std.detach().pow(2)
    noise = torch.as_tensor(noise, dtype=Y_c.dtype, device=Y_c.device)
    try:
        noise = noise.expand(*noise.shape[:-2], n_c, K) if noise.dim() >= 2 else noise.expand(n_c, K)
    except RuntimeError:
        raise InputShapeError(
            f"noise must broadcast to (..., {n_c}, {K}) (variances of Y_c), got {tuple(noise.shape)}."
        ) from None
    if not torch.isfinite(noise).all() or not (noise > 0).all():
        raise HyperparameterError("noise (observation variances) must be positive and finite everywhere.")
    return Y_c.to(la.theta_map.dtype), noise


class ConditionedLaplace:
    """The GLM posterior of a fitted regression ``LaplaceApproximation`` after observing ``(X_c, Y_c)``.

    Build it with :func:`condition`. The factorisation depends on ``X_c`` and the noise
    only; a batch of targets ``Y_c`` (fantasies) shares it.

    Attributes:
        precision: The conditioned posterior precision (same operations as the structures').
        delta: Posterior mean offsets ``θ̄ − θ̂``, ``(*b, S)``.
    """

    def __init__(self, la: LaplaceApproximation, X_c: Tensor, Y_c: Tensor, noise: Tensor | None = None):
        Y_c, noise = _check_conditioning_data(la, X_c, Y_c, noise)
        self.la = la
        base = la.posterior_precision()
        lead, rows = la.split_inputs(X_c)
        F_c, J_c = output_and_jacobian(la.network, la.subset, rows)
        K, S = F_c.shape[-1], la.n_weights
        bc, n_c = lead[:-1], lead[-1]
        F_c = F_c.reshape(*bc, n_c, K)
        J_c = J_c.reshape(*bc, n_c * K, S)
        bn = noise.shape[:-2]
        bp = torch.broadcast_shapes(bc, bn)  # batch of the factorisation
        v = noise.expand(*bp, n_c, K).reshape(*bp, n_c * K)
        resid = (Y_c - F_c).reshape(*Y_c.shape[:-2], n_c * K) if bc == () else None
        if resid is None:
            b = torch.broadcast_shapes(bc, Y_c.shape[:-2])
            resid = (Y_c.expand(*b, n_c, K) - F_c.expand(*b, n_c, K)).reshape(*b, n_c * K)
        if isinstance(base, FunctionalPrecision) and bp == ():
            # function space: grow the Cholesky factor of the N x N matrix by a block
            row_scale = (la.curvature_scale(la.noise_std) * v).rsqrt()
            new_factors = None
            if base.supports_factors:
                res = linear_factors(la.network, la.factor_plan, rows)
                if res is not None:
                    rs = row_scale.reshape(n_c, K, 1)
                    new_factors = [LayerFactors(f.name, f.a, f.b * rs, f.has_bias) for f in res[1]]
            self.precision = extend_functional(base, J_c * row_scale.unsqueeze(-1), new_factors)
            self.delta = self.precision.solve((J_c / v.unsqueeze(-1)).T @ resid.reshape(-1, n_c * K).T).T
            self.delta = self.delta.reshape(*resid.shape[:-1], S)
        else:
            cross = None
            if la.factor_plan is not None:
                cross = self._factor_cross
            self.precision = WoodburyPrecision(base, J_c.expand(*bp, n_c * K, S), v, cross)
            self.delta = self.precision.mean_shift(resid)

    def _factor_cross(self, factors, U: Tensor) -> Tensor:
        """``J U`` ``(..., n·K, m)`` from the rows' factors (``U (*bc, S, m)``)."""
        f = [LayerFactors(x.name, x.a.unsqueeze(-3), x.b.unsqueeze(-4), x.has_bias) for x in factors]
        JU = jvp_from_factors(self.la, f, U.transpose(-1, -2))  # (..., m, n, K)
        return JU.flatten(-2).transpose(-1, -2)

    @property
    def batch_shape(self) -> torch.Size:
        """Batch shape of the conditioned posterior (conditioning inputs, noise and targets)."""
        return self.delta.shape[:-1]

    def predictive(self, X: Tensor) -> tuple[Tensor, Tensor]:
        """Mean ``(*b, q, K)`` and joint covariance ``(*b, q, K, q, K)`` at ``X (*bx, q, d)``.

        ``b`` broadcasts ``bx`` with :attr:`batch_shape`. Differentiable w.r.t. ``X``.
        """
        la = self.la
        lead, rows = la.split_inputs(X)
        bx, q = lead[:-1], lead[-1]
        fac = glm_factors(la, rows, lead, self.precision)
        if fac is not None:
            F, factors = fac  # F (*bx, q, K)
            cov = self.precision.quad_factors(factors)
            shift = jvp_from_factors(la, factors, self.delta)
        else:
            F, J = output_and_jacobian(la.network, la.subset, rows)
            F = F.reshape(*bx, q, F.shape[-1])
            J = J.reshape(*bx, -1, la.n_weights)
            cov = self.precision.quad(J)
            shift = (J @ self.delta.unsqueeze(-1)).reshape(
                *torch.broadcast_shapes(bx, self.batch_shape), q, -1
            )
        K = F.shape[-1]
        b = torch.broadcast_shapes(bx, cov.shape[:-2], shift.shape[:-2])
        mean = (F + shift).expand(*b, q, K)
        return mean, cov.expand(*b, q * K, q * K).reshape(*b, q, K, q, K)

    def predictive_variance(self, X: Tensor) -> Tensor:
        """Marginal variances ``(*b, q, K)`` without the joint covariance."""
        la = self.la
        lead, rows = la.split_inputs(X)
        fac = glm_factors(la, rows, lead, self.precision)
        if fac is not None:
            var = self.precision.quad_diag_factors(fac[1])
        else:
            _, J = output_and_jacobian(la.network, la.subset, rows)
            var = self.precision.quad_diag(J.reshape(*lead[:-1], -1, la.n_weights))
        b = torch.broadcast_shapes(var.shape[:-1], self.batch_shape)
        return var.expand(*b, var.shape[-1]).reshape(*b, lead[-1], -1)

    def sample_functions(self, num_samples: int, generator: torch.Generator | None = None) -> FunctionSamples:
        """Posterior functions of the conditioned posterior (unbatched conditioning only).

        ``f_s(x) = f(x; θ̂) + J(x)(θ̄ − θ̂ + δ_s)`` with ``δ_s ~ N(0, H'⁻¹)``; see
        :mod:`labo.laplace.predictive.function_samples`.
        """
        if self.batch_shape != torch.Size([]):
            raise NotImplementedError(
                f"sample_functions of a batched conditioned posterior (batch {tuple(self.batch_shape)}): "
                "condition on unbatched data."
            )
        if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
            raise HyperparameterError(f"num_samples must be a positive int, got {num_samples!r}.")
        deltas = self.delta + self.precision.sample(num_samples, generator)
        return FunctionSamples(self.la, deltas.detach())


def condition(
    la: LaplaceApproximation, X_c: Tensor, Y_c: Tensor, noise: Tensor | float | None = None
) -> ConditionedLaplace:
    """The exact GLM posterior of ``la`` after observing ``Y_c`` at ``X_c`` (no retraining).

    Args:
        la: A fitted regression ``LaplaceApproximation``.
        X_c: Conditioning inputs ``(*bc, n_c, d)``.
        Y_c: Observations ``(*by, n_c, K)``; ``by`` broadcasts against ``bc`` (a batch of
            targets for the same inputs, e.g. fantasies, shares the factorisation).
        noise: Observation noise variances broadcastable to ``(*bn, n_c, K)``; default
            ``la.noise_std²``.

    Returns:
        A :class:`ConditionedLaplace` with ``predictive`` and ``predictive_variance``.
    """
    return ConditionedLaplace(la, X_c, Y_c, noise)


def conditioned_predictive(
    la: LaplaceApproximation, X: Tensor, X_c: Tensor, Y_c: Tensor, noise_c: Tensor
) -> tuple[Tensor, Tensor]:
    """GLM predictive at ``X`` after conditioning on ``(X_c, Y_c)``: ``condition(...).predictive(X)``.

    Returns:
        Mean ``(*b, q, K)`` and covariance ``(*b, q, K, q, K)`` with ``b`` the broadcast
        of the batch shapes of ``X``, ``X_c``, ``Y_c`` and ``noise_c``.
    """
    return condition(la, X_c, Y_c, noise_c).predictive(X)


__all__ = [
    "ConditionedLaplace",
    "WoodburyPrecision",
    "condition",
    "conditioned_predictive",
    "jvp_from_factors",
]
