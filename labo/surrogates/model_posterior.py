"""The posterior of ``LaplaceModel``: the GLM predictive mapped back to the outcome space.

``LaplaceModel`` inherits :class:`PosteriorMixin`; it relies on the model's attributes
(``laplace``, ``_conditioning``, ``_outputs``, ``y_mean``/``y_scale``, the transforms,
``_check_X`` and the output-index helpers of ``ChecksMixin``) and is not meant to be
used alone.
"""

from __future__ import annotations

from typing import Any

import torch
from botorch.posteriors.gpytorch import GPyTorchPosterior
from gpytorch.distributions import MultitaskMultivariateNormal, MultivariateNormal
from linear_operator.operators import DenseLinearOperator
from torch import Tensor

from labo.exceptions import InputShapeError, NotFittedError
from labo.surrogates.lazy_covariance import HeadCache, one_output_posterior, shared_prefix_rows

# Posteriors over at least this many points keep their covariance factored (lazy).
LAZY_MIN_ROWS = 16


class PosteriorMixin:
    """``posterior`` and BoTorch's cached-root hooks of ``LaplaceModel``."""

    def _z_predictive(self, X_tf: Tensor) -> tuple[Tensor, Tensor]:
        if self._conditioning is None:
            return self.laplace.predictive(X_tf)
        return self._conditioned_laplace().predictive(X_tf)

    def posterior(
        self,
        X: Tensor,
        output_indices: list[int] | None = None,
        observation_noise: bool | Tensor = False,
        posterior_transform=None,
        **kwargs: Any,
    ):
        """The GLM posterior at ``X``.

        Args:
            X: ``batch_shape x q x d`` inputs (any number of batch dimensions).
            output_indices: Outputs to model jointly (default: all).
            observation_noise: ``True`` adds the model's noise; a tensor
                ``batch_shape x q x m`` (outcome-transformed space) is added as given.
            posterior_transform: Optional BoTorch ``PosteriorTransform``.

        Returns:
            ``GPyTorchPosterior`` over an MVN (one output) or MTMVN (several), joint
            over the ``q`` points and outputs of each t-batch.
        """
        if not self.is_fitted:
            raise NotFittedError(
                "LaplaceModel.posterior called before fitting: call fit_laplace_model(model)."
            )
        self._check_X(X)
        self.eval()
        X_tf = self.transform_inputs(X)
        if observation_noise is False and output_indices is None:
            lazy = self._lazy_posterior(X_tf, X)
            if lazy is not None:
                return lazy if posterior_transform is None else posterior_transform(lazy)
        mean_z, cov_z = self._z_predictive(X_tf)
        s = self.y_scale
        mean = self.y_mean + s * mean_z
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
                noise = (self.z_noise_var * s.pow(2)).expand(mean.shape)
            eye = torch.diag_embed(noise.reshape(*noise.shape[:-2], q * m)).reshape(cov.shape)
            cov = cov + eye
        outcome_transform = getattr(self, "outcome_transform", None)
        if self._outputs is not None:
            base = self._outputs
            output_indices = [base[i] for i in self._subset_index(output_indices)]
        if output_indices is not None:
            idx = self._output_index(output_indices)
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
        if posterior_transform is not None:
            return posterior_transform(posterior)
        return posterior

    @property
    def _supports_cache_root(self) -> bool:
        """BoTorch's cached-root acquisition path: one output only (several outputs share
        one interleaved joint covariance, not the block-diagonal one it expects)."""
        return self.num_outputs == 1

    def _lazy_posterior(self, X_tf: Tensor, X: Tensor) -> GPyTorchPosterior | None:
        """One-output posterior over many points with a factored (lazy) covariance, or None.

        Used for ``q >= LAZY_MIN_ROWS`` points when the structure allows it (see
        :mod:`labo.surrogates.lazy_covariance`): BoTorch's cached-root acquisition
        functions then read only the rows of the new candidates, and the baseline rows
        they repeat in every t-batch are computed once (``shared_prefix_rows`` of the
        untransformed ``X``).
        """
        if self._conditioning is not None or self._outputs is not None or self.num_outputs != 1:
            return None
        if X_tf.shape[-2] < LAZY_MIN_ROWS:
            return None
        outcome_transform = getattr(self, "outcome_transform", None)
        shared = shared_prefix_rows(X)
        transform = getattr(self, "input_transform", None)
        # The shared rows carry no gradient (shared_prefix_rows) unless a learnable
        # input transform reaches them.
        detach = transform is None or not any(p.requires_grad for p in transform.parameters())
        cache = self.__dict__.setdefault("_head_cache", HeadCache())
        return one_output_posterior(
            self.laplace, X_tf, self.y_mean, self.y_scale, outcome_transform, shared, detach, cache
        )
