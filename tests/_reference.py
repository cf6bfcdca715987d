"""Dense brute-force references: everything the slow, obvious way, in float64.

Jacobians w.r.t. *all* parameters with ``torch.func.jacrev`` and then columns
selected (the reference may slice; labo must not), explicit GGN ``Σ Jᵀ Λ J``
with ``Λ`` from ``torch.func.hessian``, dense inverses and log-determinants.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.func import functional_call, hessian, jacrev


def param_mask(network: nn.Module, weights) -> Tensor:
    """Boolean mask over the flat vector of all parameters for a subset option."""
    from labo.laplace import AllWeights, LastLayer, WeightMask

    parts = []
    if isinstance(weights, LastLayer):
        name, _ = weights.find(network)
        chosen = {f"{name}.weight", f"{name}.bias"}
    for pname, p in network.named_parameters():
        if isinstance(weights, AllWeights):
            parts.append(torch.ones(p.numel(), dtype=torch.bool))
        elif isinstance(weights, LastLayer):
            parts.append(torch.full((p.numel(),), pname in chosen))
        elif isinstance(weights, WeightMask):
            m = weights.masks.get(pname)
            parts.append(torch.zeros(p.numel(), dtype=torch.bool) if m is None else m.reshape(-1))
    return torch.cat(parts)


def full_jacobian(network: nn.Module, X: Tensor) -> tuple[Tensor, Tensor]:
    """Outputs ``(n, K)`` and the Jacobian w.r.t. all parameters ``(n, K, P)``."""
    names = [n for n, _ in network.named_parameters()]
    shapes = [p.shape for _, p in network.named_parameters()]
    theta = torch.cat([p.detach().reshape(-1) for p in network.parameters()])

    def f(th):
        params, i = {}, 0
        for n, s in zip(names, shapes, strict=True):
            k = math.prod(s)
            params[n] = th[i : i + k].reshape(s)
            i += k
        return functional_call(network, params, (X,))

    return f(theta), jacrev(f)(theta)


def subset_jacobian(network: nn.Module, X: Tensor, weights) -> tuple[Tensor, Tensor]:
    F, J = full_jacobian(network, X)
    return F, J[..., param_mask(network, weights)]


def theta_subset(network: nn.Module, weights) -> Tensor:
    theta = torch.cat([p.detach().reshape(-1) for p in network.parameters()])
    return theta[param_mask(network, weights)]


def loss_hessians(likelihood: str, F: Tensor, Y: Tensor) -> Tensor:
    """``Λ_n`` = Hessian of ``-log p(y_n|f)`` w.r.t. ``f`` (without ``1/σ²``): ``(n, K, K)``."""
    if likelihood == "regression":
        return torch.eye(F.shape[-1], dtype=F.dtype).expand(F.shape[0], -1, -1)
    out = []
    for f, y in zip(F, Y, strict=True):
        out.append(hessian(lambda v, y=y: -torch.log_softmax(v, -1)[y])(f.detach()))
    return torch.stack(out)


def dense_ggn(network, X, Y, likelihood, weights) -> Tensor:
    F, J = subset_jacobian(network, X, weights)
    Lam = loss_hessians(likelihood, F, Y)
    return torch.einsum("nks,nkj,njt->st", J, Lam, J)


def layer_inputs(network: nn.Module, X: Tensor) -> dict[str, Tensor]:
    acts = {}
    hooks = [
        m.register_forward_hook(lambda mod, inp, out, n=n: acts.__setitem__(n, inp[0].detach()))
        for n, m in network.named_modules()
        if isinstance(m, nn.Linear)
    ]
    network(X)
    for h in hooks:
        h.remove()
    return acts


def dense_kfac_blocks(network, X, Y, likelihood, weights):
    """Per Linear layer (with bias) of the subset: ``(positions, A, G)`` by the definition.

    ``B_n = ∂f/∂s = ∂f/∂b`` (the bias Jacobian), ``A = mean a aᵀ`` (a augmented by 1),
    ``G = Σ B_nᵀ Λ_n B_n``; positions are the flat subset indices of ``[W, b]`` row-major.
    """
    F, Jfull = full_jacobian(network, X)
    Lam = loss_hessians(likelihood, F, Y)
    sub = param_mask(network, weights)
    sub_pos = torch.cumsum(sub.long(), 0) - 1
    offsets, i = {}, 0
    for n, p in network.named_parameters():
        offsets[n] = i
        i += p.numel()
    acts = layer_inputs(network, X)
    blocks = []
    for name, m in network.named_modules():
        if not isinstance(m, nn.Linear) or not sub[offsets[f"{name}.weight"]]:
            continue
        out_f, in_f = m.weight.shape
        b0 = offsets[f"{name}.bias"]
        B = Jfull[..., b0 : b0 + out_f]
        a = torch.cat([acts[name], torch.ones(X.shape[0], 1, dtype=X.dtype)], 1)
        A = a.T @ a / X.shape[0]
        G = torch.einsum("nko,nkj,njp->op", B, Lam, B)
        w_pos = offsets[f"{name}.weight"] + torch.arange(out_f * in_f).reshape(out_f, in_f)
        pos = torch.cat([w_pos, (b0 + torch.arange(out_f)).reshape(-1, 1)], 1).reshape(-1)
        blocks.append((sub_pos[pos], A, G))
    return blocks


def expand_prior(network, weights, prior: Tensor) -> Tensor:
    """Per-weight prior vector from a scalar / per-tensor / per-weight prior."""
    S = int(param_mask(network, weights).sum())
    if prior.dim() == 0:
        return prior.expand(S)
    if prior.numel() == S:
        return prior
    mask = param_mask(network, weights)
    counts, i = [], 0
    for _, p in network.named_parameters():
        c = int(mask[i : i + p.numel()].sum())
        if c:
            counts.append(c)
        i += p.numel()
    return torch.repeat_interleave(prior, torch.tensor(counts))


def dense_precision(network, X, Y, likelihood, weights, structure: str, prior, noise) -> Tensor:
    """Posterior precision ``H`` of a structure by its dense definition."""
    scale = noise.pow(-2) if likelihood == "regression" else torch.ones((), dtype=X.dtype)
    d = expand_prior(network, weights, prior)
    if structure in ("full", "functional"):  # Functional is the exact GGN, in function space
        return scale * dense_ggn(network, X, Y, likelihood, weights) + torch.diag(d)
    if structure == "diagonal":
        C = dense_ggn(network, X, Y, likelihood, weights)
        return torch.diag(scale * C.diagonal() + d)
    assert structure == "kron"
    S = d.numel()
    H = torch.zeros(S, S, dtype=X.dtype)
    for pos, A, G in dense_kfac_blocks(network, X, Y, likelihood, weights):
        lA, QA = torch.linalg.eigh(A)
        lG, QG = torch.linalg.eigh(G)
        Q = torch.kron(QG, QA)
        lam = torch.kron(lG.clamp_min(0), lA.clamp_min(0))
        d_eig = torch.diagonal(Q.T @ torch.diag(d[pos]) @ Q)  # the documented prior rule
        H[pos.unsqueeze(-1), pos] = Q @ torch.diag(scale * lam + d_eig) @ Q.T
    return H


def dense_log_marginal_likelihood(
    network, X, Y, likelihood, weights, H, prior, noise, prior_mean=0.0
) -> Tensor:
    F = network(X).detach()
    if likelihood == "regression":
        loglik = torch.distributions.Normal(F, noise).log_prob(Y).sum()
    else:
        loglik = torch.log_softmax(F, -1).gather(-1, Y.unsqueeze(-1)).sum()
    d = expand_prior(network, weights, prior)
    theta = theta_subset(network, weights) - prior_mean
    return loglik - 0.5 * (d * theta**2).sum() - 0.5 * (torch.linalg.slogdet(H)[1] - torch.log(d).sum())


def dense_predictive(network, X_new, weights, H) -> tuple[Tensor, Tensor]:
    """Mean ``(n, K)`` and joint covariance ``(n, K, n, K)``."""
    F, J = subset_jacobian(network, X_new, weights)
    n, K, S = J.shape
    Jf = J.reshape(n * K, S)
    cov = Jf @ torch.linalg.inv(H) @ Jf.T
    return F, cov.reshape(n, K, n, K)


def check_lazy_model_posterior(model, X, g, monkeypatch) -> None:
    """A fitted one-output ``LaplaceModel``'s factored (lazy) posterior over 2 x 20 points,
    and qLogNEI's shared-baseline value on 30 baseline points, against the dense posterior."""
    from botorch.acquisition import qLogNoisyExpectedImprovement

    from labo.surrogates import model_posterior

    d = X.shape[-1]
    Xq = torch.rand(2, 20, d, generator=g, dtype=torch.float64)
    lazy = model.posterior(Xq)
    assert type(lazy.distribution).__name__ == "FactorMultivariateNormal"
    acq = qLogNoisyExpectedImprovement(model, X_baseline=X[:30], prune_baseline=False)
    cand = torch.rand(4, 2, d, generator=g, dtype=torch.float64)
    value = acq(cand)
    monkeypatch.setattr(model_posterior, "LAZY_MIN_ROWS", 10**9)
    dense = model.posterior(Xq)
    torch.testing.assert_close(lazy.mean, dense.mean)
    torch.testing.assert_close(
        lazy.distribution.covariance_matrix, dense.distribution.covariance_matrix, rtol=1e-8, atol=1e-10
    )
    torch.testing.assert_close(acq(cand), value, rtol=1e-6, atol=1e-8)
