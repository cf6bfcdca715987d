"""Monotone warps of a run's targets before the surrogate sees them.

The default method ``laplace`` warps with ``"yeo-johnson"``; the other kinds are
research variants (:mod:`labo.bench.methods`).

A heavy tail of bad values (Rosenbrock's corners are 10^6 times worse than its valley)
lets a few points set a stationary model's amplitude and lengthscales, so the region
that matters looks flat. A monotone warp fitted to the observed targets keeps their
order, and so the acquisition's target (the incumbent and where to improve on it),
while making them closer to Gaussian, as HEBO (Cowen-Rivers et al. 2022) does with a
power transform. The surrogate then models the warped values and the acquisition runs
on that scale; regret is always measured on the raw values.

Kinds (targets in the maximisation convention, one column per output, each warped alone):

- ``"yeo-johnson"``: standardise, then the Yeo-Johnson power transform with its
  exponent fitted by maximum likelihood (:class:`labo.surrogates.warping.YeoJohnson`).
- ``"yeo-johnson-up"``: the same with the exponent held at 1 or more, so the warp only
  compresses the low (bad) values and never the good ones near the incumbent.
- ``"yeo-johnson-pos"``: the same with the exponent held at 0 or more. A negative
  exponent bounds the warped values from above, so the best values are squeezed against
  a ceiling; from 0 up the top of the scale is never bounded.
- ``"copula"``: the normal scores of the ranks, ``Φ⁻¹((rank − 0.5) / n)`` with ties
  averaged (a Gaussian copula, Salinas et al. 2020): only the order is kept.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import stats
from torch import Tensor

from labo.exceptions import BenchmarkError
from labo.surrogates.warping import YeoJohnson

WARPS = ("yeo-johnson", "yeo-johnson-up", "yeo-johnson-pos", "copula")
# The lower bound of each Yeo-Johnson kind's exponent (None: free within POWER_RANGE).
_MIN_POWER = {"yeo-johnson": None, "yeo-johnson-up": 1.0, "yeo-johnson-pos": 0.0}


def warp_targets(Y: Tensor, kind: str) -> Tensor:
    """``Y`` (``n x m``) warped column by column by ``kind`` (see the module docstring)."""
    values = _checked_values(Y, kind)
    columns = [_warp_column(values[:, j], kind)[0] for j in range(Y.shape[1])]
    return torch.as_tensor(np.stack(columns, axis=1), dtype=Y.dtype, device=Y.device)


def warp_targets_and_reference(Y: Tensor, reference: Tensor, kind: str) -> tuple[Tensor, Tensor]:
    """``Y`` (``n x m``) warped as by :func:`warp_targets`, and a hypervolume reference point.

    The reference point (``m`` values, maximisation convention) goes through the same
    fitted warps as the targets. Each warp is increasing, so the Pareto order and the
    reference point's place in it are kept, and the hypervolume improvement is measured
    on the warped scale, as the single-objective improvement is. Only the Yeo-Johnson
    kinds map values outside the data; the copula has no value there.
    """
    if kind == "copula":
        raise BenchmarkError(
            "the copula warp has no value outside the observed targets, so it cannot map a "
            "hypervolume reference point; use a Yeo-Johnson kind."
        )
    values = _checked_values(Y, kind)
    if reference.shape != (Y.shape[1],) or not torch.isfinite(reference).all():
        raise BenchmarkError(
            f"the reference point must hold {Y.shape[1]} finite values, got {reference.tolist()}."
        )
    ref = reference.detach().cpu().numpy().astype(np.float64)
    pairs = [_warp_column(values[:, j], kind, ref[j : j + 1]) for j in range(Y.shape[1])]
    W = torch.as_tensor(np.stack([w for w, _ in pairs], axis=1), dtype=Y.dtype, device=Y.device)
    mapped = torch.as_tensor(np.concatenate([r for _, r in pairs]))
    return W, mapped.to(reference)


def _checked_values(Y: Tensor, kind: str) -> np.ndarray:
    """``Y`` as a float64 array, after checking ``kind``, the shape and finiteness."""
    if kind not in WARPS:
        raise BenchmarkError(f"warp must be one of {', '.join(WARPS)}, got {kind!r}.")
    if Y.ndim != 2 or Y.shape[0] < 2:
        raise BenchmarkError(f"warp_targets needs an n x m tensor with n >= 2, got shape {tuple(Y.shape)}.")
    if not torch.isfinite(Y).all():
        raise BenchmarkError("warp_targets got non-finite targets.")
    return Y.detach().cpu().numpy().astype(np.float64)


def _warp_column(
    y: np.ndarray, kind: str, extra: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray | None]:
    """One column warped by ``kind``, and ``extra`` values through the same fitted warp."""
    if kind == "copula":
        ranks = stats.rankdata(y)  # ties averaged
        return stats.norm.ppf((ranks - 0.5) / len(y)), None
    if y.std() <= 0:  # constant targets: nothing to warp
        return y - y.mean(), None if extra is None else extra - y.mean()
    warp = YeoJohnson(1, min_power=_MIN_POWER[kind])
    warped = warp(torch.as_tensor(y[:, None]))[0][:, 0].numpy()  # fits, in training mode
    if extra is None:
        return warped, None
    warp.eval()
    return warped, warp(torch.as_tensor(extra[:, None]))[0][:, 0].numpy()
