"""Jacobians w.r.t. individually selected weights of Linear layers, in ``O(N K S)`` memory.

``jacobians.output_and_jacobian`` takes ``vmap(jacrev)`` w.r.t. the flat vector of
selected weights. When a parameter tensor is only *partly* selected (a
``WeightMask``), the backward pass of each row still builds the gradient of the
whole tensor before the selected entries are gathered: for an MLP 10-512-512-1
that is ``rows x 262k`` numbers per chunk, so memory and time scale with P, not S.

For a Linear layer ``s = W a + b`` the Jacobian entry of output ``k`` w.r.t.
``W[o, i]`` is ``∂f_k/∂s_o · a_i`` and w.r.t. ``b[o]`` it is ``∂f_k/∂s_o``. So the
Jacobian w.r.t. any set of entries is a gather-and-multiply of the per-layer
factors (inputs ``a (N, in)`` and output gradients ``B (N, K, out)``, one forward
and K backward passes for all rows, see :mod:`labo.laplace.linearization.linear_factors`):

    J[n, k, s] = B[n, k, o_s] · a[n, i_s]      (weights),     B[n, k, o_s]   (biases).

Memory is ``O(N (K S + widths))``. The path applies when some selected tensor
is partly selected, every selected tensor is the weight or bias of an
``nn.Linear`` run once per forward on ``(rows, features)`` inputs; otherwise
(whole tensors, where ``jacrev`` wastes nothing, or other modules) it returns
``None`` and the caller uses ``jacrev``. Differentiable w.r.t. ``X`` when ``X``
requires grad (acquisition gradients).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from labo.laplace.linearization.linear_factors import linear_factors
from labo.laplace.subsets import ResolvedSubset


def masked_linear_plan(network: nn.Module, subset: ResolvedSubset) -> list[tuple[str, bool]] | None:
    """``[(layer_name, has_bias)]`` of the Linear layers holding the selected weights, or None.

    None when no selected tensor is partly selected or a selected tensor is not
    the weight or bias of an ``nn.Linear``.
    """
    if all(s.index is None for s in subset.selected):
        return None
    owner: dict[str, tuple[str, bool]] = {}
    for mname, module in network.named_modules():
        if isinstance(module, nn.Linear):
            prefix = f"{mname}." if mname else ""
            for pname in ("weight", "bias"):
                owner[prefix + pname] = (mname, module.bias is not None)
    plan: list[tuple[str, bool]] = []
    for s in subset.selected:
        if s.name not in owner:
            return None
        if owner[s.name] not in plan:
            plan.append(owner[s.name])
    return plan


def masked_linear_jacobian(
    network: nn.Module, subset: ResolvedSubset, X: Tensor
) -> tuple[Tensor, Tensor] | None:
    """Outputs ``(N, K)`` and Jacobians ``(N, K, S)`` w.r.t. the selected weights, or None.

    Args:
        network: The network at its current weights, mapping ``(N, ...)`` to ``(N, K)``.
        subset: The selected weights (see the module docstring for when this applies).
        X: Inputs ``(N, ...)``.

    Returns:
        ``(F, J)`` equal to ``jacobians.output_and_jacobian`` at the network's
        current weights, or None when the path does not apply.
    """
    plan = masked_linear_plan(network, subset)
    if plan is None:
        return None
    res = linear_factors(network, plan, X)
    if res is None:
        return None
    F, factors = res
    by_layer = {lf.name: lf for lf in factors}
    pieces = []
    for s in subset.selected:  # theta order: network parameter order, offsets increasing
        layer, pname = s.name.rsplit(".", 1) if "." in s.name else ("", s.name)
        B = by_layer[layer].b  # (N, K, out)
        if pname == "bias":
            pieces.append(B if s.index is None else B[..., s.index])
            continue
        n_in = s.shape[1]
        index = s.index if s.index is not None else torch.arange(s.size, device=B.device)
        rows, cols = torch.div(index, n_in, rounding_mode="floor"), index % n_in
        pieces.append(B[..., rows] * by_layer[layer].a[..., cols].unsqueeze(-2))
    return F, torch.cat(pieces, dim=-1)


__all__ = ["masked_linear_jacobian", "masked_linear_plan"]
