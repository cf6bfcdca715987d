"""GLM (linearised) and sampling predictives of a Laplace posterior.

The GLM predictive of the latent function at inputs ``x`` is
``N(f(x; θ̂), J(x) H⁻¹ J(x)ᵀ)`` with ``J`` the Jacobian w.r.t. the selected
weights. Inputs ``(..., n, d)`` are treated as independent batch elements over
the leading dimensions: the covariance is joint over the ``n`` points and ``K``
outputs of one element, so cost is linear in the number of elements.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor
from torch.func import jvp, vmap

from labo.exceptions import HyperparameterError, StructureError
from labo.laplace.linearization.jacobians import chunk_rows, network_output, output_and_jacobian
from labo.laplace.linearization.linear_factors import linear_factors
from labo.laplace.linearization.rbf import RBFTerm
from labo.laplace.predictive.jsjt import auto_mode, check_mode, loop_joint, loop_variance
from labo.laplace.structures.precisions import KronPrecision
from labo.laplace.structures.protocol import LayerTermsPrecision, Precision

if TYPE_CHECKING:
    from labo.laplace.laplace import LaplaceApproximation


def _jacobians(la: LaplaceApproximation, X: Tensor) -> tuple[torch.Size, int, Tensor, Tensor]:
    lead, rows = la.split_inputs(X)
    F, J = output_and_jacobian(la.network, la.subset, rows)
    return lead, F.shape[-1], F, J


def glm_factors(la: LaplaceApproximation, rows: Tensor, lead: torch.Size, precision: Precision):
    """Per-layer factors of the rows shaped ``(*lead, ...)``, or None (Jacobian path)."""
    plan = la.factor_plan
    if plan is None or not precision.supports_factors:
        return None
    res = linear_factors(la.network, plan, rows)
    if res is None:
        return None
    F, factors = res
    return F.reshape(*lead, F.shape[-1]), [f.reshape_rows(lead) for f in factors]


def _rbf_terms(la: LaplaceApproximation, rows: Tensor, lead: torch.Size, precision: Precision):
    """Mean, Linear-layer factors and the :class:`~labo.laplace.linearization.rbf.RBFTerm` of the rows for a
    Kron posterior whose rest (diagonal or full) is an ``RBFFeatures`` module
    (``la.rbf_plan``), or None."""
    plan = la.rbf_plan
    if plan is None or type(precision) is not KronPrecision:
        return None
    modules = dict(la.network.named_modules())
    layers = [(name, modules[name].bias is not None) for name in la.curvature.layer_names]
    res = linear_factors(la.network, layers, rows, extra=plan.module)
    if res is None:
        return None
    F, factors, (phi, g) = res
    K = F.shape[-1]
    term = RBFTerm(
        modules[plan.module],
        rows.reshape(*lead, rows.shape[-1]),
        phi.reshape(*lead, phi.shape[-1]),
        g.reshape(*lead, K, g.shape[-1]),
        plan,
        h=None if precision.rest_block is not None else precision.rest[1],
        block=None if precision.rest_block is None else precision.rest_block[1:],
    )
    return F.reshape(*lead, K), [f.reshape_rows(lead) for f in factors], term


def _mode(la: LaplaceApproximation, mode: str, precision: Precision) -> str:
    """The backend mode to use (see :mod:`labo.laplace.predictive.jsjt`), checked against the posterior."""
    check_mode(mode)
    has_factors = la.factor_plan is not None and precision.supports_factors
    if mode == "factors" and not has_factors:
        raise StructureError(
            "mode='factors' needs whole Linear layers as Bayesian weights and a Full, Diagonal, Kron "
            f"or Functional posterior; got weights={la.weights!r}, structure={la.structure!r}."
        )
    if mode == "auto":
        if la.rbf_plan is not None and type(precision) is KronPrecision:
            return "rbf"
        return auto_mode(has_factors, int(la.n_outputs), la.n_weights)
    return mode


def glm_predictive(la: LaplaceApproximation, X: Tensor, mode: str = "auto") -> tuple[Tensor, Tensor]:
    """Mean ``(..., n, K)`` and joint covariance ``(..., n, K, n, K)``; ``mode``: see :mod:`jsjt`."""
    precision = la.posterior_precision()
    lead, rows = la.split_inputs(X)
    mode = _mode(la, mode, precision)
    if mode == "rbf":
        res = _rbf_terms(la, rows, lead, precision)
        if res is not None:
            F, factors, term = res
            n, K = F.shape[-2:]
            cov = term.quad()
            if factors:
                cov = cov + precision.quad_factors(factors)
            return F, cov.reshape(*lead[:-1], n, K, n, K)
        mode = auto_mode(False, int(la.n_outputs), la.n_weights)
    if mode == "factors":
        fac = glm_factors(la, rows, lead, precision)
        if fac is not None:
            F, factors = fac
            n, K = F.shape[-2:]
            cov = precision.quad_factors(factors)
            return F, cov.reshape(*lead[:-1], n, K, n, K)
        mode = "jacobian"  # the network's layers did not run as planned (e.g. reused)
    if mode == "loop":
        K = int(la.n_outputs)
        F = network_output(la.network, rows)
        cov = loop_joint(la, rows, lead[:-1], lead[-1], precision, K)
        return F.reshape(*lead, K), cov
    lead, K, F, J = _jacobians(la, X)
    batch, n = lead[:-1], lead[-1]
    Jb = J.reshape(*batch, n * K, la.n_weights)
    cov = precision.quad(Jb)
    return F.reshape(*lead, K), cov.reshape(*batch, n, K, n, K)


def glm_layer_terms(la: LaplaceApproximation, X: Tensor):
    """Mean ``(..., n, K)`` and per-layer covariance factors ``[(Pa, Pb, w)]``, or None.

    Available for weight-space structures with a Jacobian-free path (Kron, Diagonal)
    when the selected weights are whole Linear layers: the joint covariance is then
    ``layer_quads.layer_quad`` of the terms, which callers may keep unevaluated.
    """
    precision = la.posterior_precision()
    if not isinstance(precision, LayerTermsPrecision):
        return None
    lead, rows = la.split_inputs(X)
    if la.rbf_plan is not None and int(la.n_outputs) == 1:
        res = _rbf_terms(la, rows, lead, precision)
        if res is None:
            return None
        F, factors, term = res
        return F, list(precision.layer_terms(factors)) + term.layer_terms()
    fac = glm_factors(la, rows, lead, precision)
    if fac is None:
        return None
    F, factors = fac
    return F, list(precision.layer_terms(factors))


def glm_variance(la: LaplaceApproximation, X: Tensor, mode: str = "auto") -> Tensor:
    """Marginal variances ``(..., n, K)``, never the joint covariance; ``mode``: see :mod:`jsjt`."""
    lead, rows = la.split_inputs(X)
    precision = la.posterior_precision()
    K = int(la.n_outputs)
    mode = _mode(la, mode, precision)
    if mode == "rbf":
        res = _rbf_terms(la, rows, lead, precision)
        if res is not None:
            _, factors, term = res
            var = term.quad_diag()
            if factors:
                var = var + precision.quad_diag_factors(factors)
            return var.reshape(*lead, K)
        mode = auto_mode(False, K, la.n_weights)
    if mode == "factors":
        fac = glm_factors(la, rows, lead, precision)
        if fac is not None:
            F, factors = fac
            return precision.quad_diag_factors(factors).reshape(*lead, K)
        mode = "jacobian"
    if mode == "loop":
        return loop_variance(la, rows, precision, K).reshape(*lead, K)
    step = chunk_rows(rows.shape[0], K * la.n_weights)
    parts = []
    for start in range(0, rows.shape[0], step):
        _, J = output_and_jacobian(la.network, la.subset, rows[start : start + step])
        parts.append(precision.quad_diag(J.reshape(-1, J.shape[-1])))
    return torch.cat(parts).reshape(*lead, K)


def sample_weights(
    la: LaplaceApproximation, n_samples: int, generator: torch.Generator | None = None
) -> Tensor:
    """``θ̂ + δ`` with ``δ ~ N(0, H⁻¹)``: shape ``(n_samples, S)``."""
    if not isinstance(n_samples, int) or n_samples < 1:
        raise HyperparameterError(f"n_samples must be a positive int, got {n_samples!r}.")
    delta = la.posterior_precision().sample(n_samples, generator)
    return la.theta_map + delta


def predictive_samples(
    la: LaplaceApproximation,
    X: Tensor,
    n_samples: int,
    generator: torch.Generator | None = None,
    linearized: bool = True,
) -> Tensor:
    """Function samples ``(n_samples, ..., n, K)``: linearised (GLM) or of the network itself."""
    lead, rows = la.split_inputs(X)
    thetas = sample_weights(la, n_samples, generator)
    f = la.subset.functional(la.network)
    if linearized:
        theta_map = la.theta_map

        def lin(delta: Tensor) -> Tensor:
            out, tangent = jvp(lambda th: f(th, rows), (theta_map,), (delta,))
            return out + tangent

        out = vmap(lin)(thetas - theta_map)
    else:
        out = vmap(lambda th: f(th, rows))(thetas)
    return out.reshape(n_samples, *lead, out.shape[-1])


def class_probabilities(
    la: LaplaceApproximation,
    X: Tensor,
    link: str = "probit",
    n_samples: int = 100,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Predictive class probabilities ``(..., n, K)`` of a classification posterior.

    ``link="probit"``: ``softmax(f / sqrt(1 + π/8 · var))`` (MacKay's probit
    approximation), which needs only the marginal variances (never a ``K x K``
    block). ``link="mc"``: the mean of ``softmax`` over ``n_samples`` linearised
    function samples ``f(x) + J(x)(θ_s − θ̂)``, drawn by ``jvp`` in weight space at a
    cost independent of K.
    """
    if la.likelihood != "classification":
        raise HyperparameterError(
            f"class_probabilities needs a classification posterior, got likelihood={la.likelihood!r}."
        )
    if link == "probit":
        lead, rows = la.split_inputs(X)
        F = network_output(la.network, rows).reshape(*lead, -1)
        var = glm_variance(la, X)
        return torch.softmax(F / torch.sqrt(1 + torch.pi / 8 * var), dim=-1)
    if link == "mc":
        samples = predictive_samples(la, X, n_samples, generator, linearized=True)
        return torch.softmax(samples, dim=-1).mean(0)
    raise HyperparameterError(f"link must be 'probit' or 'mc', got {link!r}.")


__all__ = [
    "class_probabilities",
    "glm_predictive",
    "glm_layer_terms",
    "glm_variance",
    "sample_weights",
    "predictive_samples",
]
