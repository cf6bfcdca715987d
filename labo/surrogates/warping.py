"""A fitted Yeo-Johnson outcome transform: the surrogate models warped targets, its
posterior is returned in the targets' own units.

Why: a heavy tail of bad values (Rosenbrock's corners, Branin's edges, and every BO run
once most of its points sit near the optimum) lets a few points set a stationary
model's amplitude and lengthscales. Standardising and then applying the Yeo-Johnson power
transform with its exponent fitted by maximum likelihood (as HEBO, Cowen-Rivers et al.
2022, does with its targets) makes the targets closer to Gaussian while keeping their
order.

:class:`YeoJohnson` is a BoTorch ``OutcomeTransform``: ``forward`` fits the mean, the
standard deviation and the exponent per output on the training targets (in training
mode), ``untransform_posterior`` returns a ``TransformedPosterior`` whose samples are the
model's samples mapped back (exact for MC acquisition functions) and whose mean and
variance are computed by quadrature of the marginals (512 normal quantiles).

The inverse of the power transform has a bounded domain on one side when the exponent
is below 0 or above 2 (for example ``λ = 3``: warped values below ``-1`` have no
preimage). There the inverse is clamped to the training targets' range widened by that
range on each side: a sample beyond the domain reads as "far worse (or better) than any
observed value", finitely, so that means, variances and gradients stay finite.
"""

from __future__ import annotations

import numpy as np
import torch
from botorch.models.transforms.outcome import OutcomeTransform
from botorch.posteriors import GPyTorchPosterior, Posterior, TransformedPosterior
from linear_operator.operators import DiagLinearOperator
from scipy import stats
from torch import Tensor

from labo.exceptions import HyperparameterError, InputShapeError, NonFiniteInputError, NotFittedError

# The exponent's range: outside it the transform over- or underflows a whole side.
POWER_RANGE = (-3.0, 6.0)
_QUANTILES = 512
_TINY = 1e-12


def fit_power(z: np.ndarray, min_power: float | None = None) -> float:
    """The Yeo-Johnson exponent of standardised values ``z`` by maximum likelihood, clamped
    to :data:`POWER_RANGE` (and to at least ``min_power``)."""
    lam = float(stats.yeojohnson_normmax(z))
    lo = POWER_RANGE[0] if min_power is None else max(POWER_RANGE[0], min_power)
    return min(max(lam, lo), POWER_RANGE[1])


def yeo_johnson(z: Tensor, lam: Tensor) -> Tensor:
    """The Yeo-Johnson transform of ``z`` with exponent ``lam`` (broadcast), differentiable."""
    pos = z >= 0
    zp, zn = z.clamp(min=0), z.clamp(max=0)
    lam_p = torch.where(lam.abs() < 1e-8, torch.ones_like(lam), lam)
    lam_n = torch.where((2 - lam).abs() < 1e-8, torch.ones_like(lam), 2 - lam)
    up = torch.where(lam.abs() < 1e-8, torch.log1p(zp), ((zp + 1).pow(lam_p) - 1) / lam_p)
    down = torch.where((2 - lam).abs() < 1e-8, -torch.log1p(-zn), -((1 - zn).pow(lam_n) - 1) / lam_n)
    return torch.where(pos, up, down)


def yeo_johnson_inverse(w: Tensor, lam: Tensor) -> Tensor:
    """The inverse of :func:`yeo_johnson`; where ``w`` has no preimage (``λ < 0`` above
    ``-1/λ``, ``λ > 2`` below ``-1/(λ - 2)``) the base of the power is floored, which gives
    a large finite value (the caller clamps it)."""
    pos = w >= 0
    wp, wn = w.clamp(min=0), w.clamp(max=0)
    lam_p = torch.where(lam.abs() < 1e-8, torch.ones_like(lam), lam)
    lam_n = torch.where((2 - lam).abs() < 1e-8, torch.ones_like(lam), 2 - lam)
    up = torch.where(lam.abs() < 1e-8, torch.expm1(wp), (lam_p * wp + 1).clamp(min=_TINY).pow(1 / lam_p) - 1)
    down = torch.where(
        (2 - lam).abs() < 1e-8, -torch.expm1(-wn), 1 - (1 - lam_n * wn).clamp(min=_TINY).pow(1 / lam_n)
    )
    return torch.where(pos, up, down)


def _slope(z: Tensor, lam: Tensor) -> Tensor:
    """``d yeo_johnson(z) / dz = (|z| + 1)^(±(λ - 1))``; each branch on its own side of 0
    (so that the unused branch's gradient is finite)."""
    return torch.where(z >= 0, (z.clamp(min=0) + 1).pow(lam - 1), (1 - z.clamp(max=0)).pow(1 - lam))


class YeoJohnson(OutcomeTransform):
    """Standardise each output, then apply the Yeo-Johnson transform fitted to it.

    Args:
        m: The number of outputs.
        min_power: A lower limit of the fitted exponent (e.g. ``1.0``: only the low values
            are ever compressed, in the maximisation convention); ``None``: the full
            :data:`POWER_RANGE`.
        linearized: ``untransform_posterior`` returns a ``GPyTorchPosterior`` (a Gaussian
            in raw units) by the delta method: mean ``g⁻¹(μ)``, covariance ``D Σ D`` with
            ``D = diag(g⁻¹'(μ))``, the posterior's linearisation at its mean (as the GLM
            predictive linearises the network). ``False``: the exact
            ``TransformedPosterior``.
    """

    def __init__(self, m: int, min_power: float | None = None, linearized: bool = False) -> None:
        super().__init__()
        if not isinstance(m, int) or m < 1:
            raise HyperparameterError(f"YeoJohnson needs m >= 1 outputs, got {m!r}.")
        self._m, self._min_power, self._linearized = m, min_power, linearized
        self.register_buffer("means", torch.zeros(m, dtype=torch.float64))
        self.register_buffer("stdvs", torch.ones(m, dtype=torch.float64))
        self.register_buffer("powers", torch.ones(m, dtype=torch.float64))
        self.register_buffer("z_low", torch.full((m,), -10.0, dtype=torch.float64))
        self.register_buffer("z_high", torch.full((m,), 10.0, dtype=torch.float64))

    @property
    def _is_linear(self) -> bool:
        """BoTorch's flag for "a Gaussian posterior stays a ``GPyTorchPosterior``": true of
        the linearised transform, so qLogNEI keeps its cached baseline root (the baseline's
        block of ``D Σ D`` does not depend on the candidates)."""
        return self._linearized

    def subset_output(self, idcs: list[int]) -> YeoJohnson:
        new = YeoJohnson(len(idcs), self._min_power, self._linearized)
        for name in ("means", "stdvs", "powers", "z_low", "z_high"):
            setattr(new, name, getattr(self, name)[idcs].clone())
        if not self.training:
            new.eval()
        return new

    def _fit(self, Y: Tensor) -> None:
        if Y.ndim != 2 or Y.shape[-1] != self._m or Y.shape[0] < 2:
            raise InputShapeError(
                f"YeoJohnson fits on n x {self._m} training targets with n >= 2, got shape {tuple(Y.shape)}."
            )
        if not torch.isfinite(Y).all():
            raise NonFiniteInputError("YeoJohnson got non-finite training targets.")
        y = Y.detach().cpu().double().numpy()
        means, stdvs = y.mean(0), y.std(0)
        stdvs = np.where(stdvs > 0, stdvs, 1.0)
        z = (y - means) / stdvs
        powers = [fit_power(z[:, j], self._min_power) if np.ptp(z[:, j]) > 0 else 1.0 for j in range(self._m)]
        span = np.maximum(z.max(0) - z.min(0), 1.0)
        values = {
            "means": means,
            "stdvs": stdvs,
            "powers": np.array(powers),
            "z_low": z.min(0) - span,
            "z_high": z.max(0) + span,
        }
        for name, value in values.items():
            setattr(self, name, torch.as_tensor(value, dtype=Y.dtype, device=Y.device))

    def _params(self, ref: Tensor) -> tuple[Tensor, ...]:
        names = ("means", "stdvs", "powers", "z_low", "z_high")
        return tuple(getattr(self, name).to(ref) for name in names)

    def forward(self, Y: Tensor, Yvar: Tensor | None = None, X: Tensor | None = None):
        if self.training:
            self._fit(Y)
        means, stdvs, powers, _, _ = self._params(Y)
        z = (Y - means) / stdvs
        W = yeo_johnson(z, powers)
        if Yvar is None:
            return W, None
        # first order: Var[g(z)] ≈ g'(z)² Var[z], g'(z) = (|z| + 1)^(±(λ - 1))
        slope = _slope(z, powers)
        return W, Yvar / stdvs.pow(2) * slope.pow(2)

    def _inverse(self, W: Tensor) -> Tensor:
        return self._inverse_and_slope(W)[0]

    def _inverse_and_slope(self, W: Tensor) -> tuple[Tensor, Tensor]:
        """``g⁻¹(W)`` in raw units and its derivative ``d g⁻¹(W) / dW`` (zero where clamped)."""
        means, stdvs, powers, z_low, z_high = self._params(W)
        z = yeo_johnson_inverse(W, powers)
        inside = (z > z_low) & (z < z_high)
        slope = torch.where(inside, stdvs / _slope(z, powers), torch.zeros_like(z))
        z = torch.maximum(torch.minimum(z, z_high), z_low)
        return z * stdvs + means, slope

    def untransform(self, Y: Tensor, Yvar: Tensor | None = None, X: Tensor | None = None):
        if self.training:
            raise NotFittedError("YeoJohnson.untransform needs a fitted transform (eval mode).")
        out = self._inverse(Y)
        if Yvar is None:
            return out, None
        means, stdvs, powers, _, _ = self._params(Y)
        z = (out - means) / stdvs
        slope = _slope(z, powers)
        return out, Yvar * stdvs.pow(2) / slope.pow(2)

    def untransform_posterior(self, posterior: Posterior, X: Tensor | None = None) -> Posterior:
        if self.training:
            raise NotFittedError("YeoJohnson.untransform_posterior needs a fitted transform (eval mode).")
        if self._linearized and type(posterior) is GPyTorchPosterior:
            return self._linearized_posterior(posterior)
        # the midpoint rule on the normal's quantiles: robust to the clamp's kinks, where
        # Gauss-Hermite converges slowly (1 % of the variance at 512 points, against 2e6 draws)
        nodes = stats.norm.ppf((np.arange(_QUANTILES) + 0.5) / _QUANTILES)

        def moments(mean: Tensor, variance: Tensor) -> tuple[Tensor, Tensor]:
            shape = (-1,) + (1,) * mean.ndim  # the nodes on a leading dimension
            t = torch.as_tensor(nodes, dtype=mean.dtype, device=mean.device).view(shape)
            values = self._inverse(mean + variance.clamp(min=0).sqrt() * t)
            first = values.mean(0)
            return first, (values - first).pow(2).mean(0)

        return TransformedPosterior(
            posterior,
            sample_transform=self._inverse,
            mean_transform=lambda mean, var: moments(mean, var)[0],
            variance_transform=lambda mean, var: moments(mean, var)[1],
        )

    def _linearized_posterior(self, posterior: GPyTorchPosterior) -> GPyTorchPosterior:
        mvn = posterior.distribution
        mean = mvn.mean  # (..., n) for one output, (..., n, m) for several
        mean_tf, scale = self._inverse_and_slope(mean if posterior._is_mt else mean.unsqueeze(-1))
        if not posterior._is_mt:
            mean_tf, scale = mean_tf.squeeze(-1), scale.squeeze(-1)
        elif mvn._interleaved:
            scale = scale.reshape(*scale.shape[:-2], -1)
        else:
            scale = scale.transpose(-1, -2).reshape(*scale.shape[:-2], -1)
        lcv = mvn.lazy_covariance_matrix
        diag = DiagLinearOperator(scale.expand(lcv.shape[:-1]))
        kwargs = {"interleaved": mvn._interleaved} if posterior._is_mt else {}
        return GPyTorchPosterior(mvn.__class__(mean_tf, diag @ lcv @ diag, **kwargs))
