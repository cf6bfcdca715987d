"""Weight priors scaled like the network: fan-in (NTK) scaling, a scale pinned in function
space, and log hyperpriors for tuning them by MAP-II (``FitOptions(prior=...)``).

The default MLP's single prior precision lets the first layer's prior variance grow
with the input dimension and with ``‖x‖²``; these priors scale each tensor by its
fan-in. The surrogate screen found they do not bound the variance far from the data on
their own (docs/research-log.md, "Surrogate screen"); they stay options.
"""

from __future__ import annotations

import torch
from torch import Tensor

from labo.laplace.laplace import LaplaceApproximation


def fanin_prior_base(la: LaplaceApproximation) -> Tensor:
    """Per-tensor prior precisions proportional to the fan-in (the NTK scaling).

    A Linear layer's weight gets its ``in_features``; every other selected tensor
    (biases, non-Linear parameters) gets 1. With prior precision ``c · fan_in`` a unit's
    pre-activation has prior variance ``‖a‖² / (c · fan_in)``: O(1) whatever the width
    of the layer below or the input dimension, where one shared precision lets the
    first layer's term grow with ``d`` (and with ``‖x‖²`` towards the corners).

    Returns:
        ``(T,)`` tensor, one value per selected tensor of ``la.subset``.
    """
    fan_in = {}
    for name, module in la.network.named_modules():
        if isinstance(module, torch.nn.Linear):
            fan_in[f"{name}.weight" if name else "weight"] = float(module.in_features)
    values = [fan_in.get(s.name, 1.0) for s in la.subset.selected]
    return torch.tensor(values, dtype=la.theta_map.dtype, device=la.theta_map.device)


def function_space_scale(la: LaplaceApproximation, X: Tensor, base: Tensor, n_points: int = 256) -> Tensor:
    """``c`` such that the prior ``c · base`` gives a mean linearised prior variance of 1.

    The prior predictive variance of the linearised network at ``x`` is
    ``Σ_t ‖J_t(x)‖² / (c · base_t)`` (``J_t``: Jacobian w.r.t. the selected entries of
    tensor ``t`` at the current weights, averaged over outputs). It is averaged over
    ``n_points`` uniform points of the box: the unit cube when the inputs ``X`` lie in
    it (as after ``Normalize``), else their bounding box. Drawn from a fixed generator,
    so the same network gives the same ``c``.

    Args:
        la: The ``LaplaceApproximation`` (its network at the MAP weights).
        X: ``n x d`` model-space training inputs (they set the box).
        base: ``(T,)`` per-tensor base precisions (:func:`fanin_prior_base`).
        n_points: Number of box points.

    Returns:
        Scalar tensor ``c``.
    """
    from torch.func import functional_call, jacrev, vmap

    net = la.network
    lo, hi = X.min(0).values, X.max(0).values
    if bool((lo >= 0).all() and (hi <= 1).all()):
        lo, hi = torch.zeros_like(lo), torch.ones_like(hi)
    g = torch.Generator().manual_seed(0)
    U = torch.rand(n_points, X.shape[-1], generator=g, dtype=torch.float64).to(X)
    box = lo + U * (hi - lo)
    params = {k: v.detach() for k, v in net.named_parameters()}
    names = [s.name for s in la.subset.selected]

    def f(sel: dict, x: Tensor) -> Tensor:
        return functional_call(net, {**params, **sel}, (x.unsqueeze(0),)).squeeze(0)

    with torch.no_grad():
        jac = vmap(jacrev(f), in_dims=(None, 0))({k: params[k] for k in names}, box)
    total = torch.zeros((), dtype=X.dtype, device=X.device)
    for s, b in zip(la.subset.selected, base, strict=True):
        J = jac[s.name].reshape(n_points, -1, params[s.name].numel())
        if s.index is not None:
            J = J[..., s.index]
        total = total + J.pow(2).sum(-1).mean() / b
    return total.clamp_min(1e-12)


def log_hyperprior(hyperprior_std: float | None, noise_prior: bool, base: Tensor | None):
    """The log hyperprior density ``(prior_precision, noise_std) -> scalar`` of
    ``FitOptions(hyperprior_std=..., noise_prior=...)``, or ``None`` (type-II ML).

    ``hyperprior_std``: a normal prior on ``log c`` (the common factor of the prior over
    ``base``, centred at 0); ``noise_prior``: ``LogNormal(-4, 1)`` on the noise variance.
    """
    if hyperprior_std is None and not noise_prior:
        return None

    def log_density(prior: Tensor, noise: Tensor) -> Tensor:
        out = torch.zeros((), dtype=prior.dtype, device=prior.device)
        if hyperprior_std is not None and base is not None:
            log_c = (prior / base).log().mean()
            out = out - 0.5 * (log_c / hyperprior_std).pow(2)
        if noise_prior:  # LogNormal(-4, 1) on the noise variance, as BoTorch's GP default
            log_var = 2 * noise.log()
            out = out + (-0.5 * (log_var + 4.0).pow(2) - log_var).sum()
        return out

    return log_density
