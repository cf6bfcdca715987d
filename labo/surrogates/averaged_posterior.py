"""The kernel posterior averaged over lengthscales (``FitOptions(lengthscale_samples=S)``).

The members are :class:`~labo.surrogates.kernel_posterior.KernelPosterior` objects at ``S``
lengthscale vectors drawn from their Laplace marginal (:func:`lengthscale_draws`),
evaluated together in batched blocks and moment-matched into one joint Gaussian.
"""

from __future__ import annotations

import torch
from torch import Tensor

from labo.exceptions import HyperparameterError, InputShapeError
from labo.surrogates.kernel_posterior import KernelFunctionSamples, KernelPosterior, kernel_posterior

# The members are stacked into blocks of at most about this many training-covariance
# entries (all 16 members in one block up to n ≈ 700).
MEMBER_BLOCK_ENTRIES = 2**23


class AveragedKernelPosterior:
    """The moment-matched average of exact kernel posteriors that differ in their lengthscales
    (``FitOptions(lengthscale_samples=S)``).

    With few points in many dimensions most lengthscales are barely determined by the
    evidence, and one MAP-II set of them makes the posterior overconfident where the data
    do not pin the function down. The members are the :class:`KernelPosterior` at ``S``
    lengthscale vectors drawn from their Laplace marginal
    (:func:`lengthscale_draws`); the predictive is one
    Gaussian with the mixture's first two moments (the "marginal GP" of Garnett, Osborne
    and Hennig 2014, by sampling): the mean of the members' means, and the mean of their
    joint covariances plus the covariance of their means. It stays a joint multivariate
    normal, so every BoTorch acquisition function applies.

    The members are evaluated together: they are stacked into batched
    :class:`KernelPosterior` blocks whose lengthscales are ``(k, 1, d)`` and whose inputs
    carry a size-one member dimension just before the rows, so one kernel evaluation and
    one batched triangular solve serve ``k`` members (an acquisition step costs about as
    many kernel calls as one member's). Blocks hold at most about ``MEMBER_BLOCK_ENTRIES``
    training-covariance entries, which bounds the memory of many rows.

    Args:
        members: The member posteriors (unbatched lengthscales; same data, noise and ``λ``).
    """

    def __init__(self, members: list[KernelPosterior]) -> None:
        if not members:
            raise InputShapeError("AveragedKernelPosterior needs at least one member posterior.")
        first = members[0]
        n = first.X.shape[-2]
        per_block = max(1, MEMBER_BLOCK_ENTRIES // (n * n))
        blocks = []
        for start in range(0, len(members), per_block):
            chunk = members[start : start + per_block]
            blocks.append(
                KernelPosterior(
                    first.kernel_name,
                    torch.stack([p.inv_lengthscale for p in chunk]).unsqueeze(-2),
                    first.X.unsqueeze(-3),
                    first.Z.unsqueeze(-3),
                    first.prior_precision,
                    first.noise_var.unsqueeze(-3),
                    L=torch.stack([p.L for p in chunk], -4),
                )
            )
        self.blocks = blocks

    @classmethod
    def _from_blocks(cls, blocks: list[KernelPosterior]) -> AveragedKernelPosterior:
        out = cls.__new__(cls)
        out.blocks = blocks
        return out

    @property
    def X(self) -> Tensor:
        """The training inputs the members share, ``(*b, n, d)``."""
        return self.blocks[0].X.squeeze(-3)

    @property
    def Z(self) -> Tensor:
        """The standardised targets the members share, ``(*b, n, m)``."""
        return self.blocks[0].Z.squeeze(-3)

    @property
    def inv_lengthscales(self) -> Tensor:
        """The members' inverse lengthscales, ``(S, d)``."""
        return torch.cat([block.inv_lengthscale.squeeze(-2) for block in self.blocks])

    @property
    def num_members(self) -> int:
        return sum(block.inv_lengthscale.shape[0] for block in self.blocks)

    @property
    def batch_shape(self) -> torch.Size:
        return self.blocks[0].batch_shape[:-1]

    @property
    def num_outputs(self) -> int:
        return self.blocks[0].num_outputs

    def members(self) -> list[KernelPosterior]:
        """The member posteriors, one :class:`KernelPosterior` each (unbatched posteriors only)."""
        if self.batch_shape != torch.Size([]):
            raise InputShapeError(
                f"members() needs an unbatched averaged posterior, got batch {tuple(self.batch_shape)}."
            )

        def pick(t: Tensor, j: int) -> Tensor:  # member j of a block tensor (..., k or 1, n, c)
            return t[..., 0 if t.shape[-3] == 1 else j, :, :]

        out = []
        for block in self.blocks:
            for j in range(block.inv_lengthscale.shape[0]):
                out.append(
                    KernelPosterior(
                        block.kernel_name,
                        block.inv_lengthscale[j, 0],
                        pick(block.X, j),
                        pick(block.Z, j),
                        block.prior_precision,
                        pick(block.noise_var, j),
                        L=block.L.expand(block.inv_lengthscale.shape[0], *block.L.shape[-3:])[j],
                    )
                )
        return out

    def predictive(self, X: Tensor) -> tuple[Tensor, Tensor]:
        """Mean ``(*b, q, m)`` and joint covariance ``(*b, q, m, q, m)`` (moment-matched)."""
        outs = [block.predictive(X.unsqueeze(-3)) for block in self.blocks]
        means = torch.cat([mean for mean, _ in outs], -3)  # (*b, S, q, m)
        mean = means.mean(-3)
        dev = means - mean.unsqueeze(-3)
        spread = torch.einsum("...sij,...skl->...ijkl", dev, dev) / means.shape[-3]
        return mean, torch.cat([cov for _, cov in outs], -5).mean(-5) + spread

    def predictive_variance(self, X: Tensor) -> Tensor:
        """Marginal variances ``(*b, q, m)``: the members' mean variance plus the variance
        of their means."""
        outs = [block.mean_and_variance(X.unsqueeze(-3)) for block in self.blocks]
        means = torch.cat([mean for mean, _ in outs], -3)
        variances = torch.cat([var for _, var in outs], -3)
        return variances.mean(-3) + means.var(-3, unbiased=False)

    def condition(self, X_new: Tensor, Z_new: Tensor, noise_new: Tensor) -> AveragedKernelPosterior:
        """Every member conditioned on the new observations (:meth:`KernelPosterior.condition`)."""
        blocks = [
            block.condition(X_new.unsqueeze(-3), Z_new.unsqueeze(-3), noise_new.unsqueeze(-3))
            for block in self.blocks
        ]
        return AveragedKernelPosterior._from_blocks(blocks)


class MixtureFunctionSamples:
    """Posterior functions of an :class:`AveragedKernelPosterior`, drawn from the mixture
    itself: each function picks a member uniformly at random and is one of that member's
    pathwise samples (:class:`~labo.surrogates.kernel_posterior.KernelFunctionSamples`).
    The moment-matched Gaussian is the predictive; the functions keep the mixture's shape
    (each one has a single set of lengthscales), which is what Thompson sampling needs.

    Args:
        posterior: An unbatched :class:`AveragedKernelPosterior`.
        features: The model's random Fourier features (their lengthscales are replaced by
            each member's).
        num_samples: ``s``.
        generator: Optional ``torch.Generator`` for reproducible draws.
    """

    def __init__(self, posterior: AveragedKernelPosterior, features, num_samples: int, generator=None):
        members = posterior.members()
        device = posterior.X.device if generator is None else generator.device
        picks = torch.randint(len(members), (num_samples,), generator=generator, device=device)
        counts = torch.bincount(picks.cpu(), minlength=len(members)).tolist()
        self.groups = [
            KernelFunctionSamples(member, features, count, generator)
            for member, count in zip(members, counts, strict=True)
            if count
        ]

    @property
    def num_samples(self) -> int:
        return sum(group.num_samples for group in self.groups)

    def __call__(self, X: Tensor) -> Tensor:
        """Every function at ``X (..., q, d)``: ``(s, ..., q, m)``."""
        return torch.cat([group(X) for group in self.groups])

    def paired(self, X: Tensor) -> Tensor:
        """Function ``i`` at ``X[i]``, ``X (s, ..., q, d)``: ``(s, ..., q, m)``."""
        if X.dim() < 3 or X.shape[0] != self.num_samples:
            raise InputShapeError(
                f"Expected X with shape ({self.num_samples}, ..., n, d) for paired evaluation, "
                f"got {tuple(X.shape)}."
            )
        parts = X.split([group.num_samples for group in self.groups])
        return torch.cat([group.paired(part) for group, part in zip(self.groups, parts, strict=True)])


def averages_at(options, n: int, d: int) -> bool:
    """Whether the lengthscale average of ``FitOptions`` ``options`` applies to ``n`` rows of
    ``d`` inputs: ``rows_per_input · d ≤ n < max_rows_per_input · d`` and
    ``min_rows ≤ n ≤ max_rows``."""
    most_per_input = options.lengthscale_samples_max_rows_per_input
    most = options.lengthscale_samples_max_rows
    return (
        n >= options.lengthscale_samples_rows_per_input * d
        and n >= options.lengthscale_samples_min_rows
        and (most_per_input is None or n < most_per_input * d)
        and (most is None or n <= most)
    )


def _is_number(value) -> bool:
    return not isinstance(value, bool) and isinstance(value, int | float)


def check_average_options(options) -> None:
    """Typed refusals of bad lengthscale-average settings of ``FitOptions``."""
    samples = options.lengthscale_samples
    if not (isinstance(samples, int) and _is_number(samples) and samples >= 0):
        raise HyperparameterError(f"lengthscale_samples must be a non-negative integer, got {samples!r}.")
    per_input = options.lengthscale_samples_rows_per_input
    if not (_is_number(per_input) and per_input >= 0):
        raise HyperparameterError(
            f"lengthscale_samples_rows_per_input must be a number >= 0, got {per_input!r}."
        )
    least = options.lengthscale_samples_min_rows
    if not (isinstance(least, int) and _is_number(least) and least >= 0):
        raise HyperparameterError(f"lengthscale_samples_min_rows must be an integer >= 0, got {least!r}.")
    most = options.lengthscale_samples_max_rows_per_input
    if most is not None and not (_is_number(most) and most > per_input):
        raise HyperparameterError(
            "lengthscale_samples_max_rows_per_input must be None or a number above "
            f"lengthscale_samples_rows_per_input ({per_input!r}), got {most!r}."
        )
    if not isinstance(options.lengthscale_antithetic, bool):
        raise HyperparameterError(
            f"lengthscale_antithetic must be a bool, got {options.lengthscale_antithetic!r}."
        )
    rows = options.lengthscale_samples_max_rows
    if rows is not None and not (isinstance(rows, int) and _is_number(rows) and rows >= 1):
        raise HyperparameterError(
            f"lengthscale_samples_max_rows must be None or an integer >= 1, got {rows!r}."
        )


def averaged_kernel_posterior(
    model, X: Tensor, Z: Tensor, log_lengthscales: Tensor
) -> AveragedKernelPosterior:
    """:func:`kernel_posterior` at each row of ``log_lengthscales (S, d)``, averaged."""
    base = kernel_posterior(model, X, Z)
    members = [
        KernelPosterior(base.kernel_name, (-log_ls).exp(), X, Z, base.prior_precision, base.noise_var)
        for log_ls in log_lengthscales.to(X)
    ]
    return AveragedKernelPosterior(members)


# Floor of the Hessian's eigenvalues in lengthscale_draws: a flat or non-convex direction of
# the MAP-II objective gets at most variance 100 (log units) instead of an improper one.
HESSIAN_FLOOR = 1e-2


def lengthscale_draws(
    neg_log_post,
    log_lengthscale: Tensor,
    log_prior: Tensor,
    log_noise: Tensor,
    free,
    samples: int,
    antithetic: bool = False,
) -> Tensor:
    """``(samples, d)`` log-lengthscales from their marginal under the Laplace
    approximation of the hyperparameter posterior at the MAP-II optimum.

    The Hessian ``H`` of ``neg_log_post(log_ls, log λ, u)`` (minus the MAP-II objective)
    is taken jointly over the log-lengthscales and the free ones of ``log λ`` and the
    noise parameter ``u`` (``free = (λ tuned, noise tuned)``), its eigenvalues floored at
    :data:`HESSIAN_FLOOR`; the draws are ``N(log ℓ̂, (H⁻¹)_{ℓℓ})``, the marginal of the
    lengthscales (``λ`` and the noise are then kept at the optimum). Seeded (seed 0):
    the same fit gives the same draws. ``antithetic``: in pairs ``ℓ̂ ± δ``, so that
    their mean is the optimum exactly.
    """
    d = log_lengthscale.numel()
    others = [t.detach().reshape(1) for t, keep in zip((log_prior, log_noise), free, strict=True) if keep]
    flat = torch.cat([log_lengthscale.detach().reshape(-1), *others])

    def f(v: Tensor) -> Tensor:
        lp = v[d] if free[0] else log_prior.detach()
        ln = v[-1] if free[1] else log_noise.detach()
        return neg_log_post(v[:d].reshape(log_lengthscale.shape), lp, ln)

    H = torch.autograd.functional.hessian(f, flat)
    evals, evecs = torch.linalg.eigh(0.5 * (H + H.T))
    cov = ((evecs / evals.clamp_min(HESSIAN_FLOOR)) @ evecs.T)[:d, :d]
    root = torch.linalg.cholesky(0.5 * (cov + cov.T))
    g = torch.Generator().manual_seed(0)
    if antithetic:  # pairs ±z (an odd last draw is the MAP itself)
        half = torch.randn(samples // 2, d, generator=g, dtype=flat.dtype)
        z = torch.cat([half, -half, half.new_zeros(samples % 2, d)]).to(flat.device)
    else:
        z = torch.randn(samples, d, generator=g, dtype=flat.dtype).to(flat.device)
    return flat[:d] + z @ root.T
