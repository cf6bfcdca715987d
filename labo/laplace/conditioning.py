"""Exact Gaussian conditioning of the linearised (GLM) posterior on new observations.

Under the linearised model ``f(x) = f(x; θ̂) + J(x)(θ − θ̂)`` with ``θ ~ N(θ̂, H⁻¹)``,
function values at any inputs are jointly Gaussian with covariance
``J H⁻¹ Jᵀ``. Observing ``y_c = f(X_c) + ε`` (``ε ~ N(0, diag(noise))``) updates the
predictive at ``X`` by the usual Gaussian conditioning::

    mean = f(X) + K_tc (K_cc + N)⁻¹ (y_c − f(X_c))
    cov  = K_tt − K_tc (K_cc + N)⁻¹ K_ct

which equals the GLM predictive of a weight posterior refitted on the union of the
data at the same linearisation point (no retraining). It works for every
structure, since it only needs ``quad`` (``J H⁻¹ Jᵀ``). Batch dimensions of the
conditioning data (e.g. BoTorch fantasies) broadcast against those of ``X``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from labo.laplace.jacobians import output_and_jacobian
from labo.laplace.structures import robust_cholesky


def _rows(la, X: Tensor) -> tuple[torch.Size, Tensor, Tensor]:
    """Batch shape, outputs ``(*b, n, K)`` and Jacobians ``(*b, n*K, S)`` of ``X (*b, n, d)``."""
    lead, rows = la.split_inputs(X)
    F, J = output_and_jacobian(la.network, la.subset, rows)
    K = F.shape[-1]
    batch, n = lead[:-1], lead[-1]
    return batch, F.reshape(*batch, n, K), J.reshape(*batch, n * K, la.n_weights)


def conditioned_predictive(la, X: Tensor, X_c: Tensor, Y_c: Tensor, noise_c: Tensor) -> tuple[Tensor, Tensor]:
    """GLM predictive at ``X`` after conditioning on ``(X_c, Y_c)``.

    Args:
        la: A fitted regression ``LaplaceApproximation``.
        X: Test inputs ``(*bx, q, d)``.
        X_c: Conditioning inputs ``(*bc, n_c, d)``.
        Y_c: Observations ``(*by, n_c, K)``.
        noise_c: Observation noise variances, broadcastable to ``Y_c``.

    Returns:
        Mean ``(*b, q, K)`` and covariance ``(*b, q, K, q, K)`` with ``b`` the
        broadcast of ``bx``, ``bc`` and ``by``.
    """
    bx, F_t, J_t = _rows(la, X)
    bc, F_c, J_c = _rows(la, X_c)
    batch = torch.broadcast_shapes(bx, bc, Y_c.shape[:-2], noise_c.shape[:-2])
    q, K = F_t.shape[-2:]
    n_c = F_c.shape[-2]
    S = la.n_weights
    J_all = torch.cat([J_c.expand(*batch, n_c * K, S), J_t.expand(*batch, q * K, S)], dim=-2)
    K_all = la.posterior_precision().quad(J_all)
    m = n_c * K
    noise = noise_c.expand(*batch, n_c, K).reshape(*batch, m)
    K_cc = K_all[..., :m, :m] + torch.diag_embed(noise)
    K_ct = K_all[..., :m, m:]
    K_tt = K_all[..., m:, m:]
    resid = (Y_c - F_c).expand(*batch, n_c, K).reshape(*batch, m, 1)
    L = robust_cholesky(K_cc)
    A = torch.linalg.solve_triangular(L, K_ct, upper=False)
    w = torch.linalg.solve_triangular(L, resid, upper=False)
    mean = F_t.expand(*batch, q, K) + (A.transpose(-1, -2) @ w).reshape(*batch, q, K)
    cov = K_tt - A.transpose(-1, -2) @ A
    return mean, cov.reshape(*batch, q, K, q, K)
