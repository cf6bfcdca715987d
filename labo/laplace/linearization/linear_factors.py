"""Jacobian-free predictives for networks whose Bayesian weights are whole Linear layers.

For a Linear layer ``s = W a + b`` the Jacobian of output ``k`` w.r.t. ``W`` is the
outer product ``b_k ⊗ a`` of the output gradient ``b_k = ∂f_k/∂s`` and the layer
input ``a``. So ``J(x) S J(x')ᵀ`` for the Functional and Kron structures can be
contracted from per-layer factors ``(a(x), b(x))`` without ever forming the
``rows x S`` Jacobian:

* Functional (per-tensor prior ``λ_W, λ_b``): the kernel
  ``J(x) Λ₀⁻¹ J(x')ᵀ = Σ_l (b·b') (a·a' / λ_W + 1 / λ_b)``;
* Kron: ``Σ_l Σ_{g,i} (Q_Gᵀb)_g (Q_Aᵀã)_i (Q_Gᵀb')_g (Q_Aᵀã')_i / e_{gi}``.

The factors cost one forward pass and K backward passes for all rows together
(``create_graph`` when the inputs require grad, so acquisition gradients flow),
instead of a ``jacrev`` per row whose double backward dominates acquisition
optimisation. The path applies when every selected weight belongs to a Linear
layer selected whole (weight and bias) and each such layer runs once per
forward on ``(rows, features)`` inputs; otherwise the Jacobian path is used.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.func import functional_call

from labo.laplace.subsets import ResolvedSubset


class LayerFactors:
    """Per-layer factors of the rows: inputs ``a (..., n, in)``, output gradients ``b (..., n, K, out)``.

    For the output layer (its output is the network's output) the gradients are the
    identity for every row; they are then not stored (``b=None``, ``identity`` is
    True) and closed forms skip them, e.g. a last-layer Diagonal variance is one
    ``(n x in) @ (in x K)`` product. ``b`` still reads as the expanded identity.
    """

    def __init__(self, name: str, a: Tensor, b: Tensor | None, has_bias: bool, n_out: int | None = None):
        if b is None and n_out is None:
            raise ValueError("LayerFactors with b=None (identity) need n_out.")
        self.name, self.a, self._b, self.has_bias = name, a, b, has_bias
        self.n_out = int(b.shape[-1]) if b is not None else int(n_out)

    @property
    def identity(self) -> bool:
        return self._b is None

    @property
    def b(self) -> Tensor:
        if self._b is not None:
            return self._b
        eye = torch.eye(self.n_out, dtype=self.a.dtype, device=self.a.device)
        return eye.expand(*self.a.shape[:-1], self.n_out, self.n_out)

    def reshape_rows(self, lead: torch.Size) -> LayerFactors:
        """The same factors with the rows dimension reshaped to ``lead``."""
        b = None if self._b is None else self._b.reshape(*lead, *self._b.shape[-2:])
        return LayerFactors(self.name, self.a.reshape(*lead, self.a.shape[-1]), b, self.has_bias, self.n_out)


def factor_plan(network: nn.Module, subset: ResolvedSubset) -> list[tuple[str, bool]] | None:
    """``[(layer_name, has_bias)]`` if the subset is exactly a set of whole Linear layers, else None."""
    by_name = {s.name: s for s in subset.selected}
    if any(s.index is not None for s in subset.selected):
        return None
    plan, covered = [], set()
    for mname, module in network.named_modules():
        if not isinstance(module, nn.Linear):
            continue
        prefix = f"{mname}." if mname else ""
        names = [prefix + "weight"] + ([prefix + "bias"] if module.bias is not None else [])
        chosen = [n in by_name for n in names]
        if any(chosen) and not all(chosen):
            return None
        if all(chosen):
            plan.append((mname, module.bias is not None))
            covered.update(names)
    if covered != set(by_name) or not plan:
        return None
    return plan


def linear_factors(
    network: nn.Module, plan: list[tuple[str, bool]], X: Tensor, extra: str | None = None
) -> tuple[Tensor, list[LayerFactors]] | tuple[Tensor, list[LayerFactors], tuple[Tensor, Tensor]] | None:
    """Outputs ``(N, K)`` and per-layer factors for rows ``X (N, ...)``; None if not applicable.

    Differentiable w.r.t. ``X`` when ``X`` requires grad. With ``extra`` (a module name)
    also ``(φ, g)``: that module's output ``φ (N, J)`` and the output gradients
    ``g = ∂f/∂φ (N, K, J)``; the module must run once, on the network's inputs.
    """
    modules = dict(network.named_modules())
    names = [n for n, _ in plan] + ([extra] if extra is not None else [])
    inputs: dict[str, list[Tensor]] = {n: [] for n in names}
    outputs: dict[str, list[Tensor]] = {n: [] for n in names}

    def make_hook(name):
        def hook(module, inp, out):
            inputs[name].append(inp[0])
            outputs[name].append(out)

        return hook

    handles = [modules[n].register_forward_hook(make_hook(n)) for n in names]
    create_graph = X.requires_grad and torch.is_grad_enabled()
    # The weights are constants here (the MAP): run on detached parameters so that no
    # gradient flows into (and accumulates in) the network's .grad; the graph only needs
    # the layer outputs, which depend on the inputs.
    params = {name: p.detach() for name, p in network.named_parameters()}
    try:
        with torch.enable_grad():
            X_in = X if X.requires_grad else X.detach().requires_grad_(True)
            F = functional_call(network, params, (X_in,))
    finally:
        for h in handles:
            h.remove()
    if any(len(v) != 1 for v in inputs.values()) or any(inputs[n][0].dim() != 2 for n, _ in plan):
        return None
    if extra is not None and (inputs[extra][0] is not X_in or outputs[extra][0].dim() != 2):
        return None
    s_list = [outputs[n][0] for n, _ in plan]
    if F.dim() != 2 or not all(s.requires_grad for s in s_list):
        return None
    K = F.shape[-1]
    # The output layer's gradients are the identity: no backward pass for it.
    inner = [i for i, s in enumerate(s_list) if s is not F]
    targets = [s_list[i] for i in inner] + ([outputs[extra][0]] if extra is not None else [])
    grads = []
    if targets:
        with torch.enable_grad():
            for k in range(K):
                g = torch.autograd.grad(F[:, k].sum(), targets, retain_graph=True, create_graph=create_graph)
                grads.append(g)
    factors = []
    for i, (name, has_bias) in enumerate(plan):
        a = inputs[name][0]
        b = torch.stack([grads[k][inner.index(i)] for k in range(K)], dim=1) if i in inner else None
        if not create_graph:
            a = a.detach()
            b = None if b is None else b.detach()
        factors.append(LayerFactors(name, a, b, has_bias, n_out=K))
    F = F if create_graph else F.detach()
    if extra is None:
        return F, factors
    phi = outputs[extra][0]
    g = torch.stack([grads[k][-1] for k in range(K)], dim=1)  # (N, K, J)
    if not create_graph:
        phi, g = phi.detach(), g.detach()
    return F, factors, (phi, g)


def per_tensor_prior(
    prior: Tensor, subset: ResolvedSubset, plan
) -> list[tuple[Tensor, Tensor | None]] | None:
    """``[(λ_W, λ_b)]`` per layer if the per-weight prior is constant within each tensor, else None."""
    offsets = {s.name: s for s in subset.selected}
    out = []
    for name, has_bias in plan:
        prefix = f"{name}." if name else ""
        vals = []
        for pname in [prefix + "weight"] + ([prefix + "bias"] if has_bias else []):
            s = offsets[pname]
            block = prior[s.offset : s.offset + s.size]
            if not bool((block == block[0]).all()):
                return None
            vals.append(block[0])
        out.append((vals[0], vals[1] if has_bias else None))
    return out


def kernel_from_factors(
    f1: list[LayerFactors], f2: list[LayerFactors], priors, batch_dims: int = 0
) -> Tensor:
    """``J₁ Λ₀⁻¹ J₂ᵀ`` from factors: ``(..., n1, K1, n2, K2)`` (leading dims broadcast)."""
    out = None
    for l1, l2, (lw, lb) in zip(f1, f2, priors, strict=True):
        bb = torch.einsum("...mko,...njo->...mknj", l1.b, l2.b)
        aa = (l1.a @ l2.a.transpose(-1, -2)) / lw
        if lb is not None:
            aa = aa + 1.0 / lb
        term = bb * aa.unsqueeze(-1).unsqueeze(-3)
        out = term if out is None else out + term
    return out


def kernel_diag_from_factors(f: list[LayerFactors], priors) -> Tensor:
    """Diagonal ``(..., n, K)`` of the kernel of the rows with themselves."""
    out = None
    for lf, (lw, lb) in zip(f, priors, strict=True):
        aa = lf.a.pow(2).sum(-1) / lw
        if lb is not None:
            aa = aa + 1.0 / lb
        term = lf.b.pow(2).sum(-1) * aa.unsqueeze(-1)
        out = term if out is None else out + term
    return out
