"""The posterior of ``LaplaceModel``: the GLM predictive mapped back to the outcome space.

Spaces. BoTorch transforms come first (``input_transform`` on X,
``outcome_transform`` on Y). Inside, the targets are further standardised with
fixed statistics of the training targets (``z = (y − μ) / s``), so the network,
its prior precision and the noise level work on O(1) numbers whatever the scale
of Y, with or without an outcome transform. The Laplace core works in z-space;
the posterior maps back exactly (an affine map of a Gaussian).

Pure functions of the z-space predictive and the model's public pieces (its target
standardisation, transforms and Laplace posterior); ``LaplaceModel.posterior`` calls them.
"""

from __future__ import annotations

import torch
from botorch.posteriors.gpytorch import GPyTorchPosterior
from gpytorch.distributions import MultitaskMultivariateNormal, MultivariateNormal
from linear_operator.operators import DenseLinearOperator
from torch import Tensor, nn

from labo.exceptions import InputShapeError
from labo.laplace import LaplaceApproximation
from labo.surrogates.kernel_rows import kernel_rows_prediction, supports_rows
from labo.surrogates.lazy_covariance import (
    HeadCache,
    one_output_posterior,
    outcome_affine,
    shared_prefix_rows,
)
from labo.surrogates.model_support import output_index

# Posteriors over at least this many points keep their covariance factored (lazy).
LAZY_MIN_ROWS = 16


def dense_posterior(
    mean_z: Tensor,
    cov_z: Tensor,
    y_mean: Tensor,
    y_scale: Tensor,
    observation_noise: bool | Tensor,
    z_noise_var: Tensor,
    output_indices: list[int] | None,
    outcome_transform: nn.Module | None,
    X_tf: Tensor,
) -> GPyTorchPosterior:
    """The posterior over ``q`` points from the z-space predictive, with a dense covariance.

    Args:
        mean_z: ``batch_shape x q x m`` predictive mean in z-space (standardised targets).
        cov_z: ``batch_shape x q x m x q x m`` predictive covariance in z-space.
        y_mean: ``(m,)`` mean of the standardisation ``z = (y − y_mean) / y_scale``.
        y_scale: ``(m,)`` its scale.
        observation_noise: ``False``; ``True`` adds ``z_noise_var`` (scaled back); a tensor
            ``batch_shape x q x m`` (outcome-transformed space) is added as given.
        z_noise_var: ``(m,)`` observation-noise variance in z-space.
        output_indices: Outputs (of the ``m``) to keep, or ``None`` for all.
        outcome_transform: The model's outcome transform, undone on the posterior, or ``None``.
        X_tf: ``batch_shape x q x d`` transformed inputs (for the outcome transform).

    Returns:
        ``GPyTorchPosterior`` over an MVN (one output) or MTMVN (several), joint over the
        ``q`` points and outputs of each t-batch.
    """
    s = y_scale
    mean = y_mean + s * mean_z
    cov = cov_z * s.view(-1, 1, 1) * s
    q, m = mean.shape[-2:]
    if observation_noise is not False:
        if isinstance(observation_noise, Tensor):
            noise = observation_noise.to(mean)
            if noise.shape[-1] != m and noise.shape[-1] != 1:
                raise InputShapeError(
                    f"observation_noise must have shape batch_shape x q x {m}, got {tuple(noise.shape)}."
                )
            noise = noise.expand(mean.shape)
        else:
            noise = (z_noise_var * s.pow(2)).expand(mean.shape)
        eye = torch.diag_embed(noise.reshape(*noise.shape[:-2], q * m)).reshape(cov.shape)
        cov = cov + eye
    if output_indices is not None:
        idx = output_index(output_indices, m, mean.device)
        mean = mean.index_select(-1, idx)
        cov = cov.index_select(-3, idx).index_select(-1, idx)
        m = len(output_indices)
        if outcome_transform is not None:
            outcome_transform = outcome_transform.subset_output(list(output_indices))
    if m == 1:
        c = cov[..., :, 0, :, 0]
        mvn = MultivariateNormal(mean[..., 0], DenseLinearOperator(0.5 * (c + c.transpose(-1, -2))))
    else:
        c = cov.reshape(*cov.shape[:-4], q * m, q * m)
        c = DenseLinearOperator(0.5 * (c + c.transpose(-1, -2)))
        mvn = MultitaskMultivariateNormal(mean, c, interleaved=True)
    posterior = GPyTorchPosterior(distribution=mvn)
    if outcome_transform is not None:
        posterior = outcome_transform.untransform_posterior(posterior, X=X_tf)
    return posterior


def lazy_posterior(
    la: LaplaceApproximation,
    X_tf: Tensor,
    X: Tensor,
    y_mean: Tensor,
    y_scale: Tensor,
    outcome_transform: nn.Module | None,
    input_transform: nn.Module | None,
    cache: HeadCache,
) -> GPyTorchPosterior | None:
    """One-output posterior over many points with a factored (lazy) covariance, or None.

    Used for ``q >= LAZY_MIN_ROWS`` points when the structure allows it (see
    :mod:`labo.surrogates.lazy_covariance`): BoTorch's cached-root acquisition
    functions then read only the rows of the new candidates, and the baseline rows
    they repeat in every t-batch are computed once (``shared_prefix_rows`` of the
    untransformed ``X``).

    Args:
        la: The (unconditioned) Laplace posterior, one output.
        X_tf: ``batch_shape x q x d`` transformed inputs.
        X: The same inputs untransformed.
        y_mean, y_scale: The model's target standardisation, ``(1,)`` each.
        outcome_transform, input_transform: The model's transforms, or ``None``.
        cache: The model's cache of the shared rows.
    """
    if X_tf.shape[-2] < LAZY_MIN_ROWS:
        return None
    shared = shared_prefix_rows(X)
    # The shared rows carry no gradient (shared_prefix_rows) unless a learnable
    # input transform reaches them.
    detach = input_transform is None or not any(p.requires_grad for p in input_transform.parameters())
    return one_output_posterior(la, X_tf, y_mean, y_scale, outcome_transform, shared, detach, cache)


def kernel_rows_posterior(
    posterior,
    X_tf: Tensor,
    X: Tensor,
    y_mean: Tensor,
    y_scale: Tensor,
    outcome_transform: nn.Module | None,
    input_transform: nn.Module | None,
) -> GPyTorchPosterior | None:
    """The one-output posterior of a kernel posterior (or its lengthscale average) over
    rows whose first ones are shared by every t-batch (BoTorch's baseline), with the
    baseline's terms computed once and the candidates' covariance rows per call
    (:mod:`labo.surrogates.kernel_rows`); or None (nothing shared, several outputs,
    batched training data, a learnable input transform or an outcome transform other
    than ``Standardize``: the caller takes the dense path)."""
    affine = outcome_affine(y_mean, y_scale, outcome_transform)
    if affine is None or not supports_rows(posterior) or y_scale.numel() != 1:
        return None
    if input_transform is not None and any(p.requires_grad for p in input_transform.parameters()):
        return None
    shared = shared_prefix_rows(X)
    if shared == 0:
        return None
    shift, scale = affine
    mean_z, covar = kernel_rows_prediction(posterior, X_tf, shared, scale.pow(2).reshape(()))
    return GPyTorchPosterior(distribution=MultivariateNormal(shift + scale * mean_z, covar))
