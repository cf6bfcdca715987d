"""The exact-kernel posterior of ``LaplaceModel(network="rff")`` (``FitOptions(posterior="kernel")``).

The default network is a Bayesian last layer on ``D`` random Fourier features: Bayesian
linear regression whose prior covariance, ``(φ(x)ᵀφ(x') + 1) / λ`` in z-space, is a
``D``-sample Monte Carlo estimate of ``(k(x, x') + 1) / λ``, with ``k`` the stationary
kernel the features approximate at their lengthscales. The evidence fit
(``evidence="kernel"``, :mod:`labo.surrogates.feature_evidence`) already tunes ``ℓ``,
``λ`` and ``σ`` on that kernel's exact evidence; this class gives the posterior that goes
with them: the limit ``D → ∞`` of the last layer's Laplace posterior, which is the GP

    z ~ GP(0, (k(x, x') + 1) / λ),   z_i = f(x_i) + ε_i,   ε_i ~ N(0, σ²_i),

conditioned on the training data, computed exactly (one Cholesky factor of the ``n x n``
training covariance, ``O(n³)`` once per fit and ``O(n²)`` per test point). The features'
posterior has the same mean and covariance up to the ``O(1 / √D)`` error of the
features' kernel; far from the data that error is what remains of the posterior
variance, and its spread across the box decides where an acquisition function looks.

Outputs are independent with the same kernel; the noise may differ per row and output
(known noise). Everything is differentiable w.r.t. the test inputs (acquisition
gradients), and :meth:`KernelPosterior.condition` adds observations exactly (fantasies)
by a block update of the Cholesky factor.
"""

from __future__ import annotations

import torch
from torch import Tensor

from labo.exceptions import InputShapeError
from labo.laplace.structures.precisions import robust_cholesky
from labo.surrogates.networks import squared_distances, stationary_kernel

# FitOptions(posterior="kernel") applies up to this many training rows (O(n²) memory,
# O(n³) per fit); beyond, the model keeps the features' posterior, linear in n.
KERNEL_POSTERIOR_ROWS = 3000


def _solve_lower(L: Tensor, B: Tensor) -> Tensor:
    """``L⁻¹ B`` for lower-triangular ``L (*bl, n, n)`` and ``B (*bb, n, k)``, broadcast.

    Batch dimensions where ``L`` has size one (t-batches, and the test points of every
    member of an averaged posterior) are folded into the columns of ``B``: one solve per
    distinct factor, and ``L`` is never copied per t-batch.
    """
    batch = torch.broadcast_shapes(L.shape[:-2], B.shape[:-2])
    n, k, nb = L.shape[-1], B.shape[-1], len(batch)
    lb = (1,) * (nb - L.dim() + 2) + tuple(L.shape[:-2])
    fold = [i for i in range(nb) if lb[i] == 1 and batch[i] != 1]
    if not fold:
        return torch.linalg.solve_triangular(L.expand(*batch, n, n), B.expand(*batch, n, k), upper=False)
    keep = [i for i in range(nb) if i not in fold]
    keep_shape, fold_shape = [batch[i] for i in keep], [batch[i] for i in fold]
    perm = [*keep, nb, *fold, nb + 1]  # (*keep, n, *fold, k)
    cols = B.expand(*batch, n, k).permute(perm).reshape(*keep_shape, n, -1)
    Lk = L.reshape(*[lb[i] for i in keep], n, n)
    out = torch.linalg.solve_triangular(Lk, cols, upper=False).reshape(*keep_shape, n, *fold_shape, k)
    return out.permute([perm.index(i) for i in range(nb + 2)])


class KernelPosterior:
    """The exact GP posterior of an rff model's kernel in z-space (module docstring).

    Args:
        kernel: The stationary kernel's name (:func:`~labo.surrogates.networks.stationary_kernel`).
        inv_lengthscale: ``(d,)`` inverse ARD lengthscales, or ``(k, 1, d)`` for ``k`` members
            evaluated together (inputs then carry a size-one dimension before their rows;
            :class:`~labo.surrogates.averaged_posterior.AveragedKernelPosterior`).
        X: ``(*b, n, d)`` training inputs (transformed).
        Z: ``(*b, n, m)`` standardised targets.
        prior_precision: Scalar ``λ``.
        noise_var: ``(*b, n, 1)`` (one noise level for every output) or ``(*b, n, m)`` noise
            variances in z-space.

    Attributes:
        L: Cholesky factor of ``(k(X, X) + 1) / λ + diag(noise)``, ``(*b, m', n, n)`` with
            ``m'`` the last dimension of ``noise_var``.
        alpha: ``(*b, m, n)``, the training covariance's inverse times ``Z``.
    """

    def __init__(
        self,
        kernel: str,
        inv_lengthscale: Tensor,
        X: Tensor,
        Z: Tensor,
        prior_precision: Tensor,
        noise_var: Tensor,
        L: Tensor | None = None,
    ) -> None:
        if Z.shape[-2] != X.shape[-2] or noise_var.shape[-2] != X.shape[-2]:
            raise InputShapeError(
                f"KernelPosterior needs as many rows of Z {tuple(Z.shape)} and noise_var "
                f"{tuple(noise_var.shape)} as of X {tuple(X.shape)}."
            )
        if noise_var.shape[-1] not in (1, Z.shape[-1]):
            raise InputShapeError(
                f"noise_var must have 1 or {Z.shape[-1]} columns, got {tuple(noise_var.shape)}."
            )
        self.kernel_name = kernel
        self.inv_lengthscale = inv_lengthscale.detach().to(X)
        self.prior_precision = prior_precision.detach().to(X).reshape(())
        self.X, self.Z, self.noise_var = X, Z, noise_var
        if L is None:
            K = self.kernel(X, X).unsqueeze(-3)
            L = robust_cholesky(K + torch.diag_embed(noise_var.transpose(-1, -2)))
        self.L = L
        Zt = Z.transpose(-1, -2).unsqueeze(-1)  # (*b, m, n, 1)
        batch = torch.broadcast_shapes(L.shape[:-3], Zt.shape[:-3])
        Lb = L.expand(*batch, *L.shape[-3:])
        self.alpha = torch.cholesky_solve(Zt.expand(*batch, *Zt.shape[-3:]), Lb).squeeze(-1)

    @property
    def batch_shape(self) -> torch.Size:
        return self.alpha.shape[:-2]

    @property
    def num_outputs(self) -> int:
        return self.Z.shape[-1]

    def kernel(self, X1: Tensor, X2: Tensor) -> Tensor:
        """The prior covariance ``(k(x, x') + 1) / λ``, ``(*b, n1, n2)`` (batch dims broadcast)."""
        dist = squared_distances(X1 * self.inv_lengthscale, X2 * self.inv_lengthscale)
        return (stationary_kernel(self.kernel_name, dist) + 1.0) / self.prior_precision

    def _train_kernel(self, X: Tensor) -> Tensor:
        """``kernel(self.X, X)``: ``(*b, n, q)``, or ``(*bx, k, n, q)`` for ``k`` members.

        With unbatched training inputs (no fantasies) it is one matrix product of all test
        points with the training inputs scaled by every member's ``ℓ⁻²`` (cached), using
        ``‖(x − x')/ℓ‖² = Σ x²/ℓ² + Σ x'²/ℓ² − 2 Σ x x'/ℓ²``: no per-member copy of the
        test points, and the backward pass is one product too.
        """
        members = self.inv_lengthscale.dim() == 3
        if self.X.shape[:-2].numel() != 1 or (members and X.dim() < 3):
            return self.kernel(self.X, X)
        d, n = X.shape[-1], self.X.shape[-2]
        cache = self.__dict__.get("_train_cache")
        if cache is None:
            w2 = self.inv_lengthscale.pow(2).reshape(-1, d)  # (k, d)
            Xt = self.X.reshape(n, d)
            cache = self._train_cache = ((Xt * w2.unsqueeze(-2)).reshape(-1, d), w2, Xt.pow(2) @ w2.T)
        W, w2, train_sq = cache  # (k n, d), (k, d), (n, k)
        lead = X.shape[:-3] if members else X.shape[:-2]
        Xf = X.reshape(-1, d)  # (B q, d)
        k = w2.shape[0]
        cross = (Xf @ W.T).reshape(-1, k, n)
        dist = ((Xf.pow(2) @ w2.T).unsqueeze(-1) + train_sq.T - 2 * cross).clamp_min(0)  # (B q, k, n)
        K = (stationary_kernel(self.kernel_name, dist) + 1.0) / self.prior_precision
        K = K.reshape(*lead, X.shape[-2], k, n)
        return K.movedim(-3, -1) if members else K.squeeze(-2).transpose(-1, -2)

    def terms(self, X: Tensor) -> tuple[Tensor, Tensor]:
        """Mean ``(*b, m, q)`` and ``V = L⁻¹ k(X_train, X)``, ``(*b, m', n, q)``."""
        if X.shape[-1] != self.X.shape[-1]:
            raise InputShapeError(f"Expected inputs with {self.X.shape[-1]} columns, got {tuple(X.shape)}.")
        Ks = self._train_kernel(X).unsqueeze(-3)  # (*b, 1, n, q)
        mean = (self.alpha.unsqueeze(-2) @ Ks).squeeze(-2)
        return mean, _solve_lower(self.L, Ks)

    def predictive(self, X: Tensor) -> tuple[Tensor, Tensor]:
        """Mean ``(*b, q, m)`` and joint covariance ``(*b, q, m, q, m)`` at ``X (*bx, q, d)``;
        outputs are independent. Differentiable w.r.t. ``X``."""
        mean, V = self.terms(X)
        C = self.kernel(X, X).unsqueeze(-3) - V.transpose(-1, -2) @ V  # (*b, m', q, q)
        m = self.num_outputs
        batch = torch.broadcast_shapes(mean.shape[:-2], C.shape[:-3])
        C = C.expand(*batch, m, *C.shape[-2:])
        # (*b, m, q, q) -> (*b, q, q, m) -> block-diagonal over outputs (*b, q, q, m, m)
        cov = torch.diag_embed(C.movedim(-3, -1)).permute(*range(len(batch)), -4, -2, -3, -1)
        return mean.expand(*batch, *mean.shape[-2:]).transpose(-1, -2), cov

    def predictive_variance(self, X: Tensor) -> Tensor:
        """Marginal variances ``(*b, q, m)`` at ``X (*bx, q, d)``."""
        return self.mean_and_variance(X)[1]

    def mean_and_variance(self, X: Tensor) -> tuple[Tensor, Tensor]:
        """Mean and marginal variances, both ``(*b, q, m)``, at ``X (*bx, q, d)``."""
        mean, V = self.terms(X)
        prior = (
            stationary_kernel(self.kernel_name, torch.zeros_like(X[..., 0])) + 1.0
        ) / self.prior_precision
        var = prior.unsqueeze(-2) - V.pow(2).sum(-2)  # (*b, m', q)
        batch = torch.broadcast_shapes(mean.shape[:-2], var.shape[:-2])
        var = var.expand(*batch, self.num_outputs, var.shape[-1]).transpose(-1, -2)
        return mean.expand(*batch, *mean.shape[-2:]).transpose(-1, -2), var

    def condition(self, X_new: Tensor, Z_new: Tensor, noise_new: Tensor) -> KernelPosterior:
        """The posterior after also observing ``Z_new (*bz, n', m)`` at ``X_new (*bx, n', d)``
        with noise variances ``noise_new`` (broadcastable to ``(*, n', m)``): exact, by a
        block update of the Cholesky factor (``O(n² n')`` per batch). Batch dimensions
        (fantasies) broadcast; the factor depends on the inputs and noise only."""
        m = self.num_outputs
        noise_new = noise_new.to(Z_new).expand(*noise_new.shape[:-1], m)
        noise_old = self.noise_var
        shared = noise_old.shape[-1] == 1 and bool((noise_new == noise_new[..., :1]).all())
        if shared:
            noise_new = noise_new[..., :1]
        else:
            noise_old = noise_old.expand(*noise_old.shape[:-1], m)
        L = self.L if shared else self.L.expand(*self.L.shape[:-3], m, *self.L.shape[-2:])
        K12 = self.kernel(self.X, X_new).unsqueeze(-3)  # (*b, 1, n, n')
        C = _solve_lower(L, K12)  # (*b, m', n, n')
        K22 = self.kernel(X_new, X_new).unsqueeze(-3) + torch.diag_embed(noise_new.transpose(-1, -2))
        L22 = robust_cholesky(K22 - C.transpose(-1, -2) @ C)
        batch = torch.broadcast_shapes(L.shape[:-3], C.shape[:-3], L22.shape[:-3])
        mp, n, k = L22.shape[-3], L.shape[-1], L22.shape[-1]
        top = torch.cat([L.expand(*batch, mp, n, n), L.new_zeros(*batch, mp, n, k)], -1)
        bottom = torch.cat([C.transpose(-1, -2).expand(*batch, mp, k, n), L22.expand(*batch, mp, k, k)], -1)
        L_new = torch.cat([top, bottom], -2)

        def join(a: Tensor, b: Tensor) -> Tensor:
            lead = torch.broadcast_shapes(a.shape[:-2], b.shape[:-2])
            return torch.cat([a.expand(*lead, *a.shape[-2:]), b.expand(*lead, *b.shape[-2:])], -2)

        X_all, Z_all = join(self.X, X_new), join(self.Z, Z_new)
        noise_all = join(noise_old, noise_new)
        return KernelPosterior(
            self.kernel_name, self.inv_lengthscale, X_all, Z_all, self.prior_precision, noise_all, L=L_new
        )


def kernel_posterior(model, X: Tensor, Z: Tensor) -> KernelPosterior:
    """The exact-kernel posterior of a fitted rff ``LaplaceModel`` on its ``n x d``
    transformed inputs ``X`` and ``n x m`` z-space targets ``Z``, at its tuned ``λ`` and
    noise (known noise: ``model.train_Yvar`` in z-space)."""
    features, la = model.network[0], model.laplace
    if model.train_Yvar is not None:
        noise = (model.train_Yvar / model.y_scale.pow(2)).clamp_min(1e-12)
    else:
        noise = la.noise_std.detach().pow(2).reshape(1, 1).expand(X.shape[0], 1)
    inv_lengthscale = features.log_lengthscale.detach().neg().exp()
    kernel = getattr(features, "kernel", "rbf")
    return KernelPosterior(kernel, inv_lengthscale, X, Z, la.prior_precision.detach().mean(), noise.to(X))


class KernelFunctionSamples:
    """Deterministic posterior functions of a :class:`KernelPosterior` (z-space) by Matheron's
    rule (pathwise conditioning, Wilson et al. 2020; BoTorch's ``draw_matheron_paths``):

        f_s(x) = g_s(x) + k(x, X) A⁻¹ (Z − g_s(X) − ε_s),   A = k(X, X) + diag(noise),

    with ``g_s(x) = φ(x)ᵀ w_s + b_s`` a prior function on the model's random Fourier features
    (``w_s ~ N(0, I / λ)``, ``b_s ~ N(0, 1 / λ)``: the features' own prior) and
    ``ε_s ~ N(0, diag(noise))``. The mean is the posterior's exactly; the covariance is
    the posterior's up to the features' error in the prior kernel. Differentiable in ``x``;
    the same values on every call (Thompson sampling maximises them).

    Args:
        posterior: An unbatched :class:`KernelPosterior`.
        features: The model's :class:`~labo.surrogates.networks.RandomFourierFeatures`
            (used with detached parameters, and the posterior's lengthscales).
        num_samples: ``s``.
        generator: Optional ``torch.Generator`` for reproducible draws.
    """

    def __init__(self, posterior: KernelPosterior, features, num_samples: int, generator=None) -> None:
        if posterior.batch_shape != torch.Size([]):
            raise InputShapeError(
                "Function samples need an unbatched kernel posterior, "
                f"got batch {tuple(posterior.batch_shape)}."
            )
        X, Z = posterior.X, posterior.Z
        n, m, D = X.shape[-2], Z.shape[-1], features.n_features

        def randn(*shape):  # on the generator's device (a CPU or CUDA generator), then the data's
            device = X.device if generator is None else generator.device
            return torch.randn(*shape, generator=generator, dtype=X.dtype, device=device).to(X.device)

        self.posterior, self.features = posterior, features
        self._params = {name: p.detach() for name, p in features.named_parameters()}
        self._params.update(dict(features.named_buffers()))
        # the prior paths use the posterior's lengthscales (a lengthscale-average member's)
        self._params["log_lengthscale"] = -posterior.inv_lengthscale.log()
        scale = posterior.prior_precision.rsqrt()
        self.w, self.b = randn(num_samples, D, m) * scale, randn(num_samples, m) * scale
        eps = randn(num_samples, n, m) * posterior.noise_var.expand(n, m).sqrt()
        R = (Z - self._prior(X) - eps).transpose(-1, -2).unsqueeze(-1)  # (s, m, n, 1)
        self.update = torch.cholesky_solve(R, posterior.L).squeeze(-1)  # (s, m, n)

    @property
    def num_samples(self) -> int:
        return self.w.shape[0]

    def _phi(self, X: Tensor) -> Tensor:
        return torch.func.functional_call(self.features, self._params, (X,))

    def _prior(self, X: Tensor, paired: bool = False) -> Tensor:
        eq = "s...nD,sDm->s...nm" if paired else "...nD,sDm->s...nm"
        out = torch.einsum(eq, self._phi(X), self.w)
        return out + self.b.reshape(self.num_samples, *([1] * (out.dim() - 2)), -1)

    def __call__(self, X: Tensor) -> Tensor:
        """Every function at ``X (..., q, d)``: ``(s, ..., q, m)``."""
        K = self.posterior.kernel(X, self.posterior.X)  # (..., q, n)
        return self._prior(X) + torch.einsum("...qn,smn->s...qm", K, self.update)

    def paired(self, X: Tensor) -> Tensor:
        """Function ``i`` at ``X[i]``, ``X (s, ..., q, d)``: ``(s, ..., q, m)``."""
        if X.dim() < 3 or X.shape[0] != self.num_samples:
            raise InputShapeError(
                f"Expected X with shape ({self.num_samples}, ..., n, d) for paired evaluation, "
                f"got {tuple(X.shape)}."
            )
        K = self.posterior.kernel(X, self.posterior.X)  # (s, ..., q, n)
        return self._prior(X, paired=True) + torch.einsum("s...qn,smn->s...qm", K, self.update)
