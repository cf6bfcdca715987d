"""Curvature of the data term: the exact generalised Gauss-Newton (GGN) and K-FAC.

Which code computes a curvature is an implementation detail (same API, same numbers
to round-off, tested in ``tests/laplace/test_library_curvature.py``); the dispatch
keeps the fastest path measured for each case (``benchmarks/core_timing.py
--libraries``, numbers in ``docs/benchmarks.md``):

* K-FAC (``Kron``): whole Linear layers from labo's closed form below (one forward
  and K backward passes for all rows; curvlinops is 1.1-4.5x slower there); as soon as
  a convolution (``nn.Conv1d``/``nn.Conv2d``) is among the blocks, every block from
  curvlinops' ``KFACLinearOperator`` (KFAC-expand), see
  :mod:`labo.laplace.structures.library_curvature`.
* GGN diagonal (``Diagonal``, Kron's diagonal rest): whole Linear layers from labo's
  closed form, except for big inputs (rows x widest Linear input >= 5e6) of a Sequential
  BackPACK knows, where BackPACK's ``DiagGGNExact`` is about 20 % faster (on a GPU: from a
  widest input of 1000 on); other whole tensors of such a Sequential (e.g. convolutions)
  from BackPACK (3-9x faster than per-row Jacobians on the CPU; on a GPU only from
  rows x input entries >= 5e6); everything else from ``torch.func`` Jacobians.
* Dense GGN (``Full``) and its square root (``Functional``): ``torch.func``.

Why ``torch.func`` stays where it does. labo's subsets may select individual weights
(``WeightMask`` and the subnetwork strategies), and the GGN must then be taken w.r.t.
those weights only: curvlinops' operators and BackPACK's extensions work on whole
parameter tensors (BackPACK also needs a Sequential of modules it knows), so neither
can restrict the Jacobian to a per-weight subset without computing the full one first.
``torch.func`` (``vmap`` of ``jacrev`` on a functional network whose only free input
is the flat vector of selected weights) does, for any module, and stays
differentiable. For a dense GGN curvlinops' ``GGNLinearOperator`` would need S
matrix-vector products, each a pass over the data: 2-22x slower than the per-row
Jacobians for S = 65 to 4929 (measured), and it has no square root ``R`` for ``Functional``.
The closed forms of :mod:`labo.laplace.linearization.rbf` and
:mod:`labo.laplace.linearization.layer_quads` are predictive-time contractions no library
offers. The GGN is exact:
``C = Σ_n J_nᵀ Λ_n J_n`` with ``Λ_n = M_n M_nᵀ`` (see ``likelihoods.hessian_sqrt``).

K-FAC for a Linear layer ``s = W a + b`` (weight and bias together as
``W̃ = [W, b]``, row-major ``(out, in+1)``): the per-example GGN block is
``G_n ⊗ a_n a_nᵀ`` with ``G_n = B_nᵀ Λ_n B_n`` and ``B_n = ∂f/∂s`` (K x out).
K-FAC replaces the sum of Kronecker products by the Kronecker product of sums,
``C ≈ G ⊗ A`` with ``G = Σ_n G_n`` and ``A = (1/N) Σ_n a_n a_nᵀ``; this is exact
for N = 1. ``B_n`` is obtained with ``jacrev`` w.r.t. a zero perturbation added
to the layer's output by a forward hook, so it also costs K vector-Jacobian
products per example, whatever the layer sizes. For a convolution (weight
``(out, in, k...)`` flattened row-major to ``(out, in·k)``, bias appended) the same
holds per output position t (KFAC-expand): ``A = (1/(N T)) Σ_{n,t} ã_{n,t} ã_{n,t}ᵀ``
over the patches and ``G = Σ_{n,t} B_{n,t}ᵀ Λ_n B_{n,t}``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.func import functional_call, jacrev, vmap

from labo.exceptions import StructureError
from labo.laplace.likelihoods import hessian_sqrt
from labo.laplace.linearization.jacobians import chunk_rows, iter_output_and_jacobian
from labo.laplace.linearization.linear_factors import factor_plan, linear_factors
from labo.laplace.structures.library_curvature import (
    backpack_ggn_diagonal,
    backpack_plan,
    backpack_preferred_for_linear,
    backpack_preferred_for_rest,
    curvlinops_kfac_factors,
    is_kfac_conv,
)
from labo.laplace.subsets import ResolvedSubset


def _apply_sqrt(M: Tensor | None, J: Tensor) -> Tensor:
    """``Mᵀ J`` per example: M ``(n, K, K)``, J ``(n, K, ...)``."""
    if M is None:
        return J
    return torch.einsum("nkj,nk...->nj...", M, J)


def row_sqrt(likelihood: str, F: Tensor, noise_var: Tensor | None) -> Tensor | None:
    """Hessian square root per row; ``diag(1/√v)`` for fixed heteroscedastic noise."""
    if noise_var is not None:
        return torch.diag_embed(noise_var.rsqrt())
    return hessian_sqrt(likelihood, F)


def ggn(
    network: nn.Module,
    subset: ResolvedSubset,
    likelihood: str,
    X: Tensor,
    n_outputs: int,
    diagonal: bool = False,
    noise_var: Tensor | None = None,
) -> Tensor:
    """The exact GGN of the data term w.r.t. the selected weights.

    Args:
        network: Network at its MAP weights.
        subset: The S selected weights.
        likelihood: ``"regression"`` (curvature without the ``1/σ²`` factor) or
            ``"classification"``.
        X: Training inputs ``(N, ...)``.
        n_outputs: K, the number of network outputs.
        diagonal: Return only the diagonal ``(S,)`` instead of the matrix ``(S, S)``.
        noise_var: Fixed per-observation noise variances ``(N, K)`` (regression);
            the GGN then includes ``1/noise_var`` per row.
    """
    S = subset.n_weights
    dtype, device = X.dtype, X.device
    if diagonal:
        backpack = backpack_plan(network, subset, noise_var)
        if backpack and backpack_preferred_for_linear(network, X):
            return backpack_ggn_diagonal(network, subset, likelihood, X, n_outputs)
        fast = linear_ggn_diagonal(network, subset, likelihood, X, noise_var)
        if fast is not None:
            return fast
        if backpack and backpack_preferred_for_rest(X):
            return backpack_ggn_diagonal(network, subset, likelihood, X, n_outputs)
    out = torch.zeros(S if diagonal else (S, S), dtype=dtype, device=device)
    for sl, F, J in iter_output_and_jacobian(network, subset, X, n_outputs):
        M = row_sqrt(likelihood, F.detach(), None if noise_var is None else noise_var[sl])
        MJ = _apply_sqrt(M, J.detach())
        if diagonal:
            out += MJ.pow(2).sum(dim=(0, 1))
        else:
            flat = MJ.reshape(-1, S)
            out += flat.T @ flat
    return out


def linear_ggn_diagonal(
    network: nn.Module, subset: ResolvedSubset, likelihood: str, X: Tensor, noise_var: Tensor | None
) -> Tensor | None:
    """The GGN diagonal from per-layer factors when the weights are whole Linear layers, else None.

    For a Linear layer the diagonal is ``Σ_n diag(B_nᵀ Λ_n B_n)[o] · ã_n[i]²``: one
    ``(out x N) @ (N x in)`` product per layer after a forward pass and K backward
    passes, instead of per-row Jacobians (``K x S`` each). For the output layer
    ``B_n = I``, so a last-layer diagonal never touches a Jacobian: with K = 3100
    classes the per-row Jacobian would hold ``K² · F`` numbers.
    """
    plan = factor_plan(network, subset)
    if plan is None:
        return None
    res = linear_factors(network, plan, X)
    if res is None:
        return None
    F, factors = res
    p = torch.softmax(F, dim=-1) if likelihood == "classification" else None
    out = torch.zeros(subset.n_weights, dtype=X.dtype, device=X.device)
    for lf, (_, index) in zip(factors, kfac_layer_plan(network, subset)[0], strict=True):
        if p is not None:  # Λ = diag(p) - p pᵀ
            if lf.identity:
                Bsq = p - p.pow(2)
            else:
                Bsq = (p.unsqueeze(-1) * lf.b.pow(2)).sum(-2) - (p.unsqueeze(-1) * lf.b).sum(-2).pow(2)
        elif noise_var is not None:  # Λ = diag(1 / v)
            Bsq = 1 / noise_var if lf.identity else (lf.b.pow(2) / noise_var.unsqueeze(-1)).sum(-2)
        else:  # Λ = I (the 1/σ² scale is applied by the posterior)
            Bsq = torch.ones_like(F) if lf.identity else lf.b.pow(2).sum(-2)
        a = lf.a
        if lf.has_bias:
            a = torch.cat([a, torch.ones_like(a[:, :1])], dim=-1)
        out[index] = (Bsq.T @ a.pow(2)).reshape(-1)
    return out


def ggn_sqrt(
    network: nn.Module,
    subset: ResolvedSubset,
    likelihood: str,
    X: Tensor,
    n_outputs: int,
    noise_var: Tensor | None = None,
) -> Tensor:
    """A square root ``R`` of the GGN, ``C = Rᵀ R``: the rows ``M_nᵀ J_n``, ``(N·K, S)``.

    The function-space (GP) view works with ``R`` directly: its Gram matrix
    ``R Λ₀⁻¹ Rᵀ`` is the kernel matrix of the linearised network.
    """
    rows = []
    for sl, F, J in iter_output_and_jacobian(network, subset, X, n_outputs):
        M = row_sqrt(likelihood, F.detach(), None if noise_var is None else noise_var[sl])
        rows.append(_apply_sqrt(M, J.detach()).reshape(-1, subset.n_weights))
    return torch.cat(rows)


def kfac_layer_plan(network: nn.Module, subset: ResolvedSubset) -> tuple[list, Tensor]:
    """Split the selected weights into K-FAC blocks (whole Linear or Conv layers) and the rest.

    Returns:
        ``(blocks, rest)``: ``blocks`` is a list of ``(module_name, index)`` where
        ``index`` (``out * (in·kernel + bias)``,) maps the block's row-major ``[W, b]``
        entries to positions in the flat selected vector; ``rest`` holds the
        positions of selected weights outside any such layer (they get a
        diagonal GGN block). Convolutions qualify under
        :func:`~labo.laplace.structures.library_curvature.is_kfac_conv`.

    Raises:
        StructureError: if a parameter is only partly selected (Kron needs whole layers).
    """
    by_name = {s.name: s for s in subset.selected}
    partial = [s.name for s in subset.selected if s.index is not None]
    if partial:
        raise StructureError(
            f"Kron() needs whole parameter tensors, but {partial} are only partly selected "
            "by the WeightMask; use Full() or Diagonal() for per-weight subsets."
        )
    blocks, covered = [], set()
    for mname, module in network.named_modules():
        if not isinstance(module, nn.Linear) and not is_kfac_conv(module):
            continue
        prefix = f"{mname}." if mname else ""
        w = by_name.get(prefix + "weight")
        b = by_name.get(prefix + "bias") if module.bias is not None else None
        if w is None or (module.bias is not None and b is None):
            continue  # layer not (fully) selected: its selected tensors go to the rest
        out_f, in_f = module.weight.shape[0], module.weight[0].numel()
        w_idx = w.offset + torch.arange(out_f * in_f).reshape(out_f, in_f)
        if b is not None:
            b_idx = b.offset + torch.arange(out_f).reshape(out_f, 1)
            w_idx = torch.cat([w_idx, b_idx], dim=1)
            covered.add(b.name)
        covered.add(w.name)
        blocks.append((mname, w_idx.reshape(-1)))
    rest = [s.offset + torch.arange(s.size) for s in subset.selected if s.name not in covered]
    rest_idx = torch.cat(rest) if rest else torch.zeros(0, dtype=torch.long)
    return blocks, rest_idx


def _kfac_from_linear_factors(network, layer_names, likelihood, X, n_outputs, noise_var):
    """K-FAC ``(A, G)`` from one forward and K backward passes per chunk of rows (see
    :mod:`labo.laplace.linearization.linear_factors`), or None where those factors do not apply.

    ``G = Σ_n B_nᵀ Λ_n B_n`` is contracted without per-row ``K x K`` matrices; for the
    output layer ``B_n = I`` and ``G = Σ_n Λ_n`` needs no backward pass at all.
    """
    modules = dict(network.named_modules())
    plan = [(n, modules[n].bias is not None) for n in layer_names]
    # Memory per row: the output gradients of the inner layers (the output layer stores none).
    outs = [modules[n].out_features for n in layer_names]
    if outs[-1] == n_outputs:
        outs = outs[:-1]
    step = chunk_rows(X.shape[0], max(1, n_outputs * sum(outs)))
    A = [None] * len(plan)
    G = [None] * len(plan)
    for start in range(0, X.shape[0], step):
        res = linear_factors(network, plan, X[start : start + step])
        if res is None:
            return None
        F, factors = res
        p = torch.softmax(F, dim=-1) if likelihood == "classification" else None
        v = None if noise_var is None else noise_var[start : start + step]
        for i, lf in enumerate(factors):
            a = lf.a
            if lf.has_bias:
                a = torch.cat([a, torch.ones_like(a[:, :1])], dim=1)
            if p is not None:  # Λ_n = diag(p) - p pᵀ
                if lf.identity:
                    g = torch.diag(p.sum(0)) - p.T @ p
                else:
                    Bp = torch.einsum("nk,nko->no", p, lf.b)
                    g = torch.einsum("nk,nko,nkq->oq", p, lf.b, lf.b) - Bp.T @ Bp
            elif v is not None:  # Λ_n = diag(1 / v_n)
                g = (
                    torch.diag((1 / v).sum(0))
                    if lf.identity
                    else torch.einsum("nko,nk,nkq->oq", lf.b, 1 / v, lf.b)
                )
            else:  # Λ_n = I
                if lf.identity:
                    g = a.shape[0] * torch.eye(lf.n_out, dtype=a.dtype, device=a.device)
                else:
                    g = torch.einsum("nko,nkq->oq", lf.b, lf.b)
            A[i] = a.T @ a if A[i] is None else A[i] + a.T @ a
            G[i] = g if G[i] is None else G[i] + g
    n = X.shape[0]
    return [(a / n, g) for a, g in zip(A, G, strict=True)]


def kfac_factors(
    network: nn.Module,
    layer_names: list[str],
    likelihood: str,
    X: Tensor,
    n_outputs: int,
    noise_var: Tensor | None = None,
) -> list[tuple[Tensor, Tensor]]:
    """K-FAC factors ``(A, G)`` of the named Linear / Conv layers (see the module docstring).

    ``A`` is ``(in+1, in+1)`` with the bias (``(in, in)`` without one; ``in·kernel`` for
    a convolution) and ``G`` is ``(out, out)``, such that the layer's GGN block is
    ``≈ G ⊗ A``. With a convolution among the layers all factors come from curvlinops.
    """
    if not layer_names:
        return []
    modules = dict(network.named_modules())
    if any(is_kfac_conv(modules[n]) for n in layer_names):
        return curvlinops_kfac_factors(network, layer_names, likelihood, X, n_outputs, noise_var)
    fast = _kfac_from_linear_factors(network, layer_names, likelihood, X, n_outputs, noise_var)
    if fast is not None:
        return fast
    layers = [(n, modules[n]) for n in layer_names]
    params = {n: p.detach() for n, p in network.named_parameters()}
    eps_now: dict[str, Tensor] = {}
    acts: dict[str, Tensor] = {}

    def make_hook(name: str):
        def hook(module, inputs, output):
            acts[name] = inputs[0]
            if name in eps_now:
                return output + eps_now[name]
            return None

        return hook

    def single(eps: dict[str, Tensor], x: Tensor) -> Tensor:
        eps_now.clear()
        eps_now.update(eps)
        return functional_call(network, params, (x.unsqueeze(0),)).squeeze(0)

    dtype, device = X.dtype, X.device
    A = [None] * len(layers)
    G = [torch.zeros(m.out_features, m.out_features, dtype=dtype, device=device) for _, m in layers]
    per_row = n_outputs * sum(m.out_features for _, m in layers)
    rows = chunk_rows(X.shape[0], per_row)
    handles = [m.register_forward_hook(make_hook(n)) for n, m in layers]
    try:
        for start in range(0, X.shape[0], rows):
            Xc = X[start : start + rows]
            eps_now.clear()
            with torch.no_grad():
                F = functional_call(network, params, (Xc,))
            for i, (name, module) in enumerate(layers):
                a = acts[name].detach()
                if a.dim() != 2:
                    raise StructureError(
                        f"Kron(): layer {name!r} receives inputs of shape {tuple(a.shape)}; "
                        "K-FAC here supports Linear layers applied to (batch, features) only."
                    )
                if module.bias is not None:
                    a = torch.cat([a, torch.ones_like(a[:, :1])], dim=1)
                A[i] = a.T @ a if A[i] is None else A[i] + a.T @ a
            zeros = {n: torch.zeros(1, m.out_features, dtype=dtype, device=device) for n, m in layers}
            B = vmap(jacrev(single), in_dims=(None, 0))(zeros, Xc)  # name -> (n, K, 1, out)
            M = row_sqrt(likelihood, F, None if noise_var is None else noise_var[start : start + rows])
            for i, (name, _) in enumerate(layers):
                MB = _apply_sqrt(M, B[name].squeeze(-2).detach())
                G[i] += torch.einsum("nko,nkp->op", MB, MB)
    finally:
        for h in handles:
            h.remove()
        eps_now.clear()
        acts.clear()
    n = X.shape[0]
    return [(a / n, g) for a, g in zip(A, G, strict=True)]
