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


def _patches(layer: nn.Module, a: Tensor) -> Tensor:
    """Rows ``(n, T, in·kernel)`` of a layer input: the input itself for a Linear layer (T = 1),
    for a convolution the zero-padded patch of each output position read off index by index."""
    if isinstance(layer, nn.Linear):
        return a.unsqueeze(1)
    k, s, p, dil = layer.kernel_size, layer.stride, layer.padding, layer.dilation
    if isinstance(layer, nn.Conv1d):  # as a Conv2d of height 1
        a, k, s, p, dil = a.unsqueeze(2), (1, *k), (1, *s), (0, *p), (1, *dil)
    n, c, h, w = a.shape
    padded = torch.zeros(n, c, h + 2 * p[0], w + 2 * p[1], dtype=a.dtype)
    padded[:, :, p[0] : p[0] + h, p[1] : p[1] + w] = a
    H = (h + 2 * p[0] - dil[0] * (k[0] - 1) - 1) // s[0] + 1
    W = (w + 2 * p[1] - dil[1] * (k[1] - 1) - 1) // s[1] + 1
    rows = []
    for i in range(H):
        for j in range(W):
            patch = torch.zeros(n, c, k[0], k[1], dtype=a.dtype)
            for u in range(k[0]):
                for v in range(k[1]):
                    patch[:, :, u, v] = padded[:, :, i * s[0] + u * dil[0], j * s[1] + v * dil[1]]
            rows.append(patch.reshape(n, -1))
    return torch.stack(rows, 1)


def dense_kfac_expand_blocks(network, X, Y, likelihood, weights, noise_var=None):
    """K-FAC(-expand) blocks of every Linear, Conv1d and Conv2d layer of the subset, by the definition.

    Per output position t of a layer (one for a Linear layer): ``ã_{n,t}`` the patch of
    inputs augmented by 1 and ``B_{n,t} = ∂f_n/∂s_{n,:,t}`` (K x out, by ``jacrev`` w.r.t. a
    zero perturbation of the layer's output); ``A = (1/(N T)) Σ ã ãᵀ`` and
    ``G = Σ_{n,t} B_{n,t}ᵀ Λ_n B_{n,t}`` with ``Λ_n = diag(1/noise_var_n)`` if given.
    Returns ``(positions, A, G)`` per layer, positions of the row-major ``[W, b]``.
    """
    F = network(X).detach()
    Lam = loss_hessians(likelihood, F, Y)
    if noise_var is not None:
        Lam = torch.diag_embed(1 / noise_var)
    sub = param_mask(network, weights)
    sub_pos = torch.cumsum(sub.long(), 0) - 1
    offsets, i = {}, 0
    for n, p in network.named_parameters():
        offsets[n] = i
        i += p.numel()
    blocks = []
    for name, m in network.named_modules():
        if not isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d)) or not sub[offsets[f"{name}.weight"]]:
            continue
        store = {}

        def hook(mod, inp, out, store=store):
            store["a"] = inp[0].detach()
            return out + store["eps"] if "eps" in store else None

        h = m.register_forward_hook(hook)
        try:
            with torch.no_grad():
                network(X)
            a = store["a"]
            s_shape = m(a).shape  # (n, out, ...)

            def f(eps, store=store):
                store["eps"] = eps
                return network(X)

            Jeps = jacrev(f)(torch.zeros(s_shape, dtype=X.dtype))  # (n, K, n, out, ...)
        finally:
            h.remove()
        n = X.shape[0]
        B = torch.stack([Jeps[r, :, r] for r in range(n)])  # (n, K, out, ...)
        B = B.reshape(n, B.shape[1], B.shape[2], -1)  # (n, K, out, T)
        P = _patches(m, a)  # (n, T, in·kernel)
        T = P.shape[1]
        Pa = torch.cat([P, torch.ones(n, T, 1, dtype=X.dtype)], -1)
        A = torch.einsum("nti,ntj->ij", Pa, Pa) / (n * T)
        G = torch.einsum("nkot,nkj,njpt->op", B, Lam, B)
        out_f = m.weight.shape[0]
        in_k = m.weight[0].numel()
        b0 = offsets[f"{name}.bias"]
        w_pos = offsets[f"{name}.weight"] + torch.arange(out_f * in_k).reshape(out_f, in_k)
        pos = torch.cat([w_pos, (b0 + torch.arange(out_f)).reshape(-1, 1)], 1).reshape(-1)
        blocks.append((sub_pos[pos], A, G))
    return blocks


def kron_precision_from_blocks(blocks, S, d, scale, dtype=torch.float64) -> Tensor:
    """Dense Kron posterior precision from ``(positions, A, G)`` blocks (documented prior rule)."""
    H = torch.zeros(S, S, dtype=dtype)
    for pos, A, G in blocks:
        lA, QA = torch.linalg.eigh(A)
        lG, QG = torch.linalg.eigh(G)
        Q = torch.kron(QG, QA)
        lam = torch.kron(lG.clamp_min(0), lA.clamp_min(0))
        d_eig = torch.diagonal(Q.T @ torch.diag(d[pos]) @ Q)
        H[pos.unsqueeze(-1), pos] = Q @ torch.diag(scale * lam + d_eig) @ Q.T
    return H


def dense_map_ii_objective(X, Z, log_ls, log_lam, u, ls_prior, min_noise_std=1e-2) -> Tensor:
    """Minus the MAP-II objective of ``network="rff"``'s kernel-evidence fit, written out:
    the RBF kernel's evidence ``N(Z | 0, (k + 1) / λ + σ² I)``, ``σ = min_noise_std + e^u``,
    ``LogNormal(-4, 1)`` on ``σ²``, ``N(log 2, 1)`` on ``log λ``, minus ``ls_prior(log_ls)``
    (the lengthscale prior's negative log density, summed)."""
    n = X.shape[0]
    K = torch.exp(-0.5 * torch.cdist(X / log_ls.exp(), X / log_ls.exp()).pow(2)) + 1.0
    sigma = min_noise_std + u.exp()
    C = K / log_lam.exp() + sigma.pow(2) * torch.eye(n, dtype=X.dtype)
    z = Z.reshape(-1)
    value = -0.5 * z @ torch.linalg.solve(C, z) - 0.5 * torch.logdet(C) - 0.5 * n * math.log(2 * math.pi)
    log_var = 2 * sigma.log()
    value = value - 0.5 * (log_var + 4.0).pow(2) - log_var - 0.5 * (log_lam - math.log(2.0)).pow(2)
    return -value + ls_prior(log_ls)


def kernel_posterior_members(m: int = 1, n: int = 10, d: int = 3) -> list:
    """Three float64 RBF :class:`KernelPosterior` objects on the same data that differ only in
    their lengthscales (0.7, 1.6, 3.0): the members of a lengthscale average, built explicitly."""
    from labo.surrogates.kernel_posterior import KernelPosterior

    g = torch.Generator().manual_seed(1)
    X = torch.rand(n, d, generator=g, dtype=torch.float64)
    Z = torch.randn(n, m, generator=g, dtype=torch.float64)
    noise = torch.full((n, 1), 0.05, dtype=torch.float64)
    lam = torch.tensor(1.5, dtype=torch.float64)
    scales = (0.7, 1.6, 3.0)
    return [
        KernelPosterior("rbf", torch.full((d,), s, dtype=torch.float64), X, Z, lam, noise) for s in scales
    ]
