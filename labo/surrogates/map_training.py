"""Full-batch MAP training of a ``LaplaceModel``'s network on the negative log joint.

``Σ‖z − f‖² / (2σ²) + ½ (θ − θ₀)ᵀ Λ (θ − θ₀)`` over n, by Adam (with early stopping) or
L-BFGS (strong-Wolfe line search); the weights outside the Bayesian subset get the
mean prior precision. Used by :func:`labo.surrogates.fit_laplace_model` for every
network but the evidence-fitted ``network="rff"``.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from torch import Tensor

if TYPE_CHECKING:  # fit.py imports this module
    from labo.surrogates.fit import FitOptions
    from labo.surrogates.model import LaplaceModel


def train_map(
    model: LaplaceModel, X: Tensor, Z: Tensor, opts: FitOptions, max_epochs: int, lr: float | None = None
) -> dict:
    """Full-batch training on the negative log joint; returns steps taken and the final loss.

    By L-BFGS or Adam (``opts.optimizer``), at most ``max_epochs`` steps. The network
    ends at the lowest-loss weights seen, so a warm refit never returns weights worse
    than it started from.
    """
    la = model.laplace
    net = model.network
    params = [p for p in net.parameters() if p.requires_grad]
    subset = la.subset
    train_prior = model.map_prior_precision
    prior_vec = la.expand_prior((la.prior_precision if train_prior is None else train_prior).detach())
    other_prior = float(prior_vec.mean())
    noise_var = model.z_noise_var.detach()
    weights = None
    if model.train_Yvar is not None:
        weights = 1.0 / (model.train_Yvar / model.y_scale.pow(2)).clamp_min(1e-12)
    n = X.shape[0]

    anchor = model.anchor_parameters()  # the prior's centre (zeros or the initial weights)
    theta0 = la.prior_mean

    def objective() -> Tensor:
        resid2 = (net(X) - Z).pow(2)
        data = 0.5 * (resid2 * weights).sum() if weights is not None else 0.5 * (resid2 / noise_var).sum()
        sel = torch.cat([_selected(p, s) for p, s in _selected_pairs(net, subset)])
        prior = 0.5 * (prior_vec * (sel - theta0).pow(2)).sum()
        rest = sum(
            (
                (p - anchor[name]).pow(2).sum()
                for name, p in net.named_parameters()
                if p.requires_grad and not subset.is_whole(name)
            ),
            start=torch.zeros((), dtype=X.dtype, device=X.device),
        )
        rest = rest - _partial_selected_sq(net, subset, anchor)
        return (data + prior + 0.5 * other_prior * rest) / n

    if opts.optimizer == "lbfgs":
        return minimize_lbfgs(objective, params, max_epochs)
    lr = opts.lr if lr is None else lr
    opt = torch.optim.Adam(params, lr=lr)
    sched = (
        torch.optim.lr_scheduler.CosineAnnealingLR(opt, max_epochs, eta_min=lr * 1e-2)
        if opts.cosine
        else None
    )
    best, since_best, steps = float("inf"), 0, 0
    lowest, lowest_params = float("inf"), None
    for steps in range(1, max_epochs + 1):  # noqa: B007 - steps is reported
        opt.zero_grad()
        loss = objective()
        loss.backward()
        loss_value = float(loss.detach())
        if loss_value < lowest:  # the weights before this step
            lowest, lowest_params = loss_value, [p.detach().clone() for p in params]
        opt.step()
        if sched is not None:
            sched.step()
        if best == float("inf") or loss_value < best - opts.rel_tol * abs(best):
            best, since_best = loss_value, 0
        else:
            since_best += 1
            if since_best >= opts.patience:
                break
    with torch.no_grad():
        final = float(objective())
        if lowest_params is not None and lowest < final:
            for p, q in zip(params, lowest_params, strict=True):
                p.copy_(q)
            final = lowest
    return {"steps": steps, "loss": final}


def minimize_lbfgs(
    objective,
    params: list[Tensor],
    max_iter: int,
    tolerance_grad: float = 1e-9,
    tolerance_change: float = 1e-12,
    history_size: int = 50,
    on_loss=None,
) -> dict:
    """Full-batch L-BFGS (strong-Wolfe line search) on ``objective()`` from the current ``params``.

    The line search only accepts steps that decrease the loss, so the parameters never
    end worse than they started; a non-finite final loss, or an error inside the
    objective (e.g. a failed Cholesky at an extreme step), restores the starting values.

    Args:
        objective: ``() -> scalar tensor`` to minimise (differentiable in ``params``).
        params: The tensors to optimise (in place).
        max_iter: L-BFGS iterations.
        tolerance_grad, tolerance_change, history_size: ``torch.optim.LBFGS``'s.
        on_loss: Called with each evaluated loss (a float), or ``None``.

    Returns:
        ``{"steps": iterations taken, "loss": final loss}``.
    """
    with torch.no_grad():
        start_loss = float(objective())
    if max_iter == 0 or not params:
        return {"steps": 0, "loss": start_loss}
    start = [p.detach().clone() for p in params]
    opt = torch.optim.LBFGS(
        params,
        lr=1.0,
        max_iter=max_iter,
        tolerance_grad=tolerance_grad,
        tolerance_change=tolerance_change,
        history_size=history_size,
        line_search_fn="strong_wolfe",
    )

    def closure() -> Tensor:
        opt.zero_grad()
        loss = objective()
        loss.backward()
        if on_loss is not None:
            on_loss(float(loss.detach()))
        return loss

    try:
        opt.step(closure)
        with torch.no_grad():
            final = float(objective())
    except RuntimeError:
        final = math.nan
    if not (math.isfinite(final) and final <= start_loss):
        with torch.no_grad():
            for p, q in zip(params, start, strict=True):
                p.copy_(q)
        final = start_loss
    return {"steps": int(opt.state[params[0]].get("n_iter", 0)), "loss": final}


def _selected_pairs(net, subset):
    params = dict(net.named_parameters())
    return [(params[s.name], s) for s in subset.selected]


def _selected(p: Tensor, s) -> Tensor:
    flat = p.reshape(-1)
    return flat if s.index is None else flat[s.index]


def _partial_selected_sq(net, subset, anchor: dict[str, Tensor]) -> Tensor:
    """Sum of squared offsets from the prior's centre of the selected entries inside partly
    selected tensors (counted in ``rest``)."""
    params = dict(net.named_parameters())
    p0 = next(net.parameters())
    total = torch.zeros((), dtype=p0.dtype, device=p0.device)
    for s in subset.selected:
        if s.index is not None:
            offset = params[s.name].reshape(-1)[s.index] - anchor[s.name].reshape(-1)[s.index]
            total = total + offset.pow(2).sum()
    return total
