"""``LaplaceModel``: a BoTorch ``Model`` backed by a Laplace-approximated network.

A drop-in for ``SingleTaskGP``: its posterior is an MVN (one output) or MTMVN (several),
joint over the ``q`` points and outputs of each t-batch and never across t-batches. The
network works on standardised targets (z-space, :mod:`labo.surrogates.model_posterior`).

The whole contract is this one class. The pure functions it calls, which take what they
need as arguments: :mod:`~labo.surrogates.model_support` (checks, defaults, the prior's
centre), :mod:`~labo.surrogates.model_posterior` (the posterior in the outcome space) and
:mod:`~labo.surrogates.model_conditioning` (exact conditioning).
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from botorch.models.gpytorch import GPyTorchModel
from botorch.models.model import FantasizeMixin
from botorch.posteriors.gpytorch import GPyTorchPosterior
from gpytorch.constraints import GreaterThan
from gpytorch.likelihoods import FixedNoiseGaussianLikelihood, GaussianLikelihood
from gpytorch.models import GP
from torch import Tensor, nn

from labo.exceptions import NotFittedError
from labo.laplace import LaplaceApproximation
from labo.laplace.predictive.conditioning import ConditionedLaplace
from labo.laplace.structures.options import Structure
from labo.laplace.subnetworks import WeightStrategy
from labo.laplace.subsets import WeightSubset
from labo.surrogates.fit import fit_laplace_model
from labo.surrogates.kernel_posterior import KernelPosterior
from labo.surrogates.lazy_covariance import HeadCache
from labo.surrogates.model_conditioning import (
    append_observations,
    append_training_data,
    cached_condition,
    z_space_observations,
)
from labo.surrogates.model_posterior import dense_posterior, kernel_rows_posterior, lazy_posterior
from labo.surrogates.model_support import (
    build_network,
    check_training_data,
    check_X,
    copy_fit_state,
    flat_anchor,
    output_index,
    posterior_options,
    split_anchor,
    standardisation,
    strategy_posterior,
    subset_index,
    with_own_transforms,
)

# The network of LaplaceModel(train_X, train_Y) (docs/benchmarks.md, "BO suite").
DEFAULT_NETWORK = "rff"
# The default structure is Functional() up to this many training rows n·m, then Kron().
FUNCTIONAL_MAX_ROWS = 250
_TRANSFORMS = ("outcome_transform", "input_transform")


# GPyTorchModel is a base although the posterior is no GPyTorch GP's: BoTorch's cached-root
# acquisition path (botorch.acquisition.cached_cholesky.supports_cache_root, used by qNEI and
# qLogNEI) requires `isinstance(model, GPyTorchModel)`. FantasizeMixin gives `fantasize` (on
# condition_on_observations); GP is GPyTorch's module base.
class LaplaceModel(GPyTorchModel, FantasizeMixin, GP):
    """A BoTorch model whose posterior is the linearised Laplace predictive of a network.

    ``__init__`` stores data and builds the network; it never trains. Call
    :func:`labo.surrogates.fit_laplace_model` (or BoTorch's
    ``fit_gpytorch_mll(LaplaceMarginalLogLikelihood(model))``) to fit.

    Example::

        model = LaplaceModel(train_X, train_Y, input_transform=Normalize(d), outcome_transform=Standardize(m))
        fit_laplace_model(model)          # MAP training + marginal-likelihood tuning
        posterior = model.posterior(X)    # X: batch_shape x q x d
        # next BO iteration, with more data: start from this model's weights
        model = LaplaceModel(X_more, Y_more, ..., warm_start=model)

    After fitting, ``model.network`` is the trained network, ``model.laplace`` the
    :class:`~labo.laplace.LaplaceApproximation` (tuned ``prior_precision`` and ``noise_std``,
    in standardised target units) and ``model.fit_info`` records the fit. Data, network and
    posterior share one device and dtype (float32 or float64). Function samples and Thompson
    sampling: :mod:`labo.acquisition`. Choosing ``weights`` and ``structure``: ``docs/guide.md``.

    Pass the arguments after ``train_Yvar`` by keyword; they are not keyword-only because
    Ax inspects the positional argument names to decide which transforms a model accepts.

    Args:
        train_X: ``n x d`` training inputs.
        train_Y: ``n x m`` training targets.
        train_Yvar: Optional ``n x m`` observed noise variances (fixed noise; the
            noise level is then not tuned).
        network: An ``nn.Module`` mapping ``b x d`` to ``b x m``, or a built-in one by
            name: ``"rff"`` (the default: random Fourier features and a Bayesian last
            layer, every hyperparameter tuned on the exact evidence of their kernel, whose
            exact GP is the posterior: ``FitOptions.posterior``), ``"mlp"`` (d-64-64-m,
            tanh, every weight Bayesian) or ``"rbf"`` (RBF features, then 64-64-m tanh);
            :func:`labo.surrogates.model_support.build_network` describes them.
        weights: Which weights are Bayesian (default ``AllWeights()``; ``LastLayer()`` for
            ``"rff"``), or a strategy ``(network, X, Z) -> WeightMask`` (``labo.laplace.subnetworks``,
            e.g. ``partial(largest_variance, n_weights=1000)``) applied by ``fit_laplace_model``
            after each MAP training round (default structure ``Full()``). To load a saved
            strategy model, build it with ``weights=saved.laplace.weights`` (the mask).
        structure: Posterior structure. Default: ``Functional()`` (exact GGN, function
            space) while ``n·m`` is below the number of Bayesian weights and at most
            ``FUNCTIONAL_MAX_ROWS`` (250), else ``Kron(rest="auto")``; why:
            :func:`labo.surrogates.model_support.posterior_options`.
        input_transform: A BoTorch ``InputTransform`` (e.g. ``Normalize(d)``).
        outcome_transform: A BoTorch ``OutcomeTransform`` (e.g. ``Standardize(m)``).
        prior_precision: Initial prior precision (tuned by the marginal likelihood).
        noise_std: Initial noise standard deviation in standardised units (tuned).
        warm_start: A previously fitted ``LaplaceModel`` (same network architecture):
            its weights and hyperparameters start this model's fit.
        prior_mean: Where the Gaussian weight prior is centred: ``"zero"`` (``N(0, λ⁻¹)``)
            or ``"init"`` (``N(θ₀, λ⁻¹)``, ``θ₀`` the weights when the model is built; a
            warm start keeps its source's centre). MAP training decays towards the centre
            and the marginal likelihood measures ``θ̂ − θ₀``, so weights the data never
            moved do not count as prior evidence for a large weight variance.
    """

    def __init__(
        self,
        train_X: Tensor,
        train_Y: Tensor,
        train_Yvar: Tensor | None = None,
        network: nn.Module | str | None = None,
        weights: WeightSubset | WeightStrategy | None = None,
        structure: Structure | None = None,
        input_transform: nn.Module | None = None,
        outcome_transform: nn.Module | None = None,
        prior_precision: float | Tensor = 1.0,
        noise_std: float = 0.1,
        warm_start: LaplaceModel | None = None,
        prior_mean: str = "zero",
    ) -> None:
        check_training_data(train_X, train_Y, train_Yvar, input_transform)
        super().__init__()
        with torch.no_grad():
            X_tf = self.transform_inputs(train_X, input_transform=input_transform)
        Y_tf, Yvar_tf = train_Y, train_Yvar
        if outcome_transform is not None:
            outcome_transform.train()
            Y_tf, Yvar_tf = outcome_transform(train_Y, train_Yvar, X=X_tf)
        self._d, self._m = train_X.shape[-1], train_Y.shape[-1]
        self.train_inputs, self.train_targets, self.train_Yvar = (train_X,), Y_tf, Yvar_tf
        # Fixed standardisation of the (transformed) targets: the network works in z-space.
        mean, scale = standardisation(Y_tf)
        self.register_buffer("y_mean", mean, persistent=False)
        self.register_buffer("y_scale", scale, persistent=False)
        # network="rff": a Bayesian last layer on random Fourier features, every
        # hyperparameter tuned on its exact evidence (labo.surrogates.feature_evidence).
        network = DEFAULT_NETWORK if network is None else network
        network, weights, self.evidence_fit = build_network(network, weights, train_X, X_tf, self._m)
        self.register_buffer("network_anchor", flat_anchor(network, prior_mean))
        self.prior_mean = prior_mean
        # A strategy picks the weights after MAP training; until then one weight stands in.
        weights, structure, self.weight_strategy, self._strategy_structure = posterior_options(
            network, weights, structure, train_X.shape[0] * self._m, FUNCTIONAL_MAX_ROWS
        )
        self.laplace = LaplaceApproximation(
            network, "regression", weights, structure, prior_precision, noise_std
        )
        self._set_laplace_prior_mean()
        if train_Yvar is None:
            # Mirrors the tuned noise (for GPyTorch/Ax code that reads model.likelihood.noise).
            self.likelihood = GaussianLikelihood(noise_constraint=GreaterThan(1e-10))
        else:
            self.likelihood = FixedNoiseGaussianLikelihood(noise=Yvar_tf.mean(-1))
        if outcome_transform is not None:
            self.outcome_transform = outcome_transform
        if input_transform is not None:
            self.input_transform = input_transform
        self._conditioning: tuple[Tensor, Tensor, Tensor] | None = None
        # FitOptions(posterior="kernel"): the exact posterior of the features' kernel, set by the fit.
        self.kernel_posterior: KernelPosterior | None = None
        # The prior of MAP training when it differs from the posterior's (FitOptions(prior="function")).
        self.map_prior_precision: Tensor | None = None
        self._outputs: list[int] | None = None  # set by subset_output
        self.fit_info: dict[str, Any] = {}
        self.to(train_X)
        if warm_start is not None:
            self.warm_start_from(warm_start)

    @property
    def network(self) -> nn.Module:
        """The network (its weights are the MAP after fitting)."""
        return self.laplace.network

    @property
    def num_outputs(self) -> int:
        return self._m if self._outputs is None else len(self._outputs)

    @property
    def batch_shape(self) -> torch.Size:
        """Empty for a fitted model; the fantasy/conditioning batch shape after conditioning."""
        data = () if self._conditioning is None else self._conditioning
        return torch.broadcast_shapes(*(t.shape[:-2] for t in data))

    @property
    def is_fitted(self) -> bool:
        return bool(self.laplace.curvature.fitted)

    @property
    def z_noise_var(self) -> Tensor:
        """Observation noise variance in z-space, ``(m,)``."""
        if self.train_Yvar is not None:
            return self.train_Yvar.mean(0) / self.y_scale.pow(2)
        return self.laplace.noise_std.detach().pow(2).expand(self._m)

    @property
    def conditioning(self) -> tuple[Tensor, Tensor, Tensor] | None:
        """``(X_tf, Z, N)`` of :meth:`condition_on_observations` (z-space), or None."""
        return self._conditioning

    def clear_conditioning(self) -> None:
        """Forget the conditioning data (a refit on ``train_inputs`` includes them)."""
        self._conditioning = None

    @property
    def output_subset(self) -> list[int] | None:
        """The outputs of the original model that this one covers (:meth:`subset_output`), or None."""
        return self._outputs

    def check_X(self, X: Tensor, name: str = "X") -> None:
        """Raise a typed error unless ``X`` is finite, ``batch_shape x q x d``, of the model's dtype."""
        check_X(X, self._d, self.train_inputs[0].dtype, name)

    def anchor_parameters(self) -> dict[str, Tensor]:
        """The prior's centre ``θ₀`` for every network parameter, ``{name: tensor}``
        (zeros unless ``prior_mean="init"``)."""
        return split_anchor(self.network, self.network_anchor)

    def _set_laplace_prior_mean(self) -> None:  # the posterior's copy of the centre
        self.laplace.prior_mean = self.laplace.subset.theta_from(self.anchor_parameters())

    def warm_start_from(self, other: LaplaceModel) -> None:
        """Start from another fitted model's network weights, hyperparameters and prior centre."""
        copy_fit_state(self, other)
        self._set_laplace_prior_mean()
        self.fit_info = {"warm_start": True}

    def select_weights(self, X: Tensor, Z: Tensor) -> LaplaceApproximation:
        """Apply ``weight_strategy`` (if any) to the trained network at ``n x d`` transformed
        inputs ``X`` and ``n x m`` targets ``Z``; returns ``self.laplace``, rebuilt and unfitted
        (:func:`labo.surrogates.model_support.strategy_posterior`)."""
        if self.weight_strategy is not None:
            self.laplace = strategy_posterior(
                self.weight_strategy, self.laplace, X, Z, self._strategy_structure
            )
            self._set_laplace_prior_mean()
        return self.laplace

    def load_state_dict(self, state_dict, strict: bool = True, keep_transforms: bool = True):
        """Load a state dict; a fitted state makes the next fit a warm start.

        With ``keep_transforms=True`` (default) the input/outcome transforms keep the
        statistics of this model's own training data, as they must for its targets.
        """
        if keep_transforms:
            state_dict = with_own_transforms(state_dict, self.state_dict())
        # nn.Module.load_state_dict: GPyTorchModel's version re-derives GP training targets.
        out = nn.Module.load_state_dict(self, state_dict, strict=strict)
        self.fit_info = {"warm_start": True}
        return out

    def _set_transformed_inputs(self) -> None:
        """No-op: ``train_inputs`` always holds the raw inputs; transforms apply on use."""

    _revert_to_original_inputs = _set_transformed_inputs  # no-op too

    def custom_fit(self, mll, closure=None, closure_kwargs=None, optimizer_kwargs=None, **kwargs):
        """Hook of BoTorch's ``fit_gpytorch_mll``: fit by MAP + marginal likelihood."""
        fit_laplace_model(self)
        mll.eval()
        return mll

    # ------------------------------------------------------------------ BoTorch protocol
    def posterior(
        self,
        X: Tensor,
        output_indices: list[int] | None = None,
        observation_noise: bool | Tensor = False,
        posterior_transform=None,
        **kwargs: Any,
    ) -> GPyTorchPosterior:
        """The GLM posterior at ``X``.

        Args:
            X: ``batch_shape x q x d`` inputs (any number of batch dimensions).
            output_indices: Outputs to model jointly (default: all).
            observation_noise: ``True`` adds the model's noise; a tensor
                ``batch_shape x q x m`` (outcome-transformed space) is added as given.
            posterior_transform: Optional BoTorch ``PosteriorTransform``.

        Returns:
            ``GPyTorchPosterior``: MVN (one output) or MTMVN, joint within each t-batch.
        """
        if not self.is_fitted:
            raise NotFittedError(
                "LaplaceModel.posterior called before fitting: call fit_laplace_model(model)."
            )
        self.check_X(X)
        self.eval()
        X_tf = self.transform_inputs(X)
        posterior = None
        if observation_noise is False and output_indices is None:
            posterior = self._lazy_posterior(X_tf, X)
        if posterior is None:
            if self._outputs is not None:
                output_indices = [self._outputs[i] for i in subset_index(output_indices, len(self._outputs))]
            mean_z, cov_z = self._z_predictive(X_tf)
            outcome_transform = getattr(self, "outcome_transform", None)
            posterior = dense_posterior(
                mean_z, cov_z, self.y_mean, self.y_scale, observation_noise, self.z_noise_var,
                output_indices, outcome_transform, X_tf,
            )  # fmt: skip
        return posterior if posterior_transform is None else posterior_transform(posterior)

    def _z_predictive(self, X_tf: Tensor) -> tuple[Tensor, Tensor]:
        """The predictive mean and joint covariance in z-space at transformed inputs."""
        la = self.conditioned_laplace() if self._conditioning is not None else self.kernel_posterior
        return (la or self.laplace).predictive(X_tf)

    def _lazy_posterior(self, X_tf: Tensor, X: Tensor) -> GPyTorchPosterior | None:
        """One output's lazy posterior (``labo.surrogates.model_posterior``), or None."""
        if self._conditioning is not None or self._outputs is not None or self.num_outputs != 1:
            return None
        args = X_tf, X, self.y_mean, self.y_scale, *(getattr(self, a, None) for a in _TRANSFORMS)
        if self.kernel_posterior is None:
            return lazy_posterior(self.laplace, *args, self.__dict__.setdefault("_head_cache", HeadCache()))
        return kernel_rows_posterior(self.kernel_posterior, *args)

    @property
    def _supports_cache_root(self) -> bool:
        """BoTorch's cached-root path: one output only (several share one interleaved covariance)."""
        return self.num_outputs == 1

    def subset_output(self, idcs: list[int]) -> LaplaceModel:
        """A model over the outputs ``idcs`` only (sharing the fitted network)."""
        idx = output_index(idcs, self._m, self.y_mean.device).tolist()
        base = self._outputs or list(range(self._m))
        new = self._shallow_copy()
        new._outputs = [base[i] for i in idx]
        return new

    def conditioned_laplace(self) -> ConditionedLaplace | KernelPosterior:
        """The exact posterior conditioned on :attr:`conditioning` (``labo.laplace.predictive.conditioning``,
        or :meth:`KernelPosterior.condition` with a :attr:`kernel_posterior`).

        Cached while the data carry no autograd graph
        (:func:`labo.surrogates.model_conditioning.cached_condition`).
        """
        if self._conditioning is None:
            raise ValueError("conditioned_laplace needs a model from condition_on_observations.")
        return cached_condition(self.laplace, self._conditioning, self.__dict__, self.kernel_posterior)

    def condition_on_observations(self, X: Tensor, Y: Tensor, noise: Tensor | None = None, **kwargs):
        """A new model conditioned on ``(X, Y)`` under the linearised model: exact, no retraining.

        Args:
            X: ``batch_shape x n' x d`` inputs (untransformed).
            Y: ``batch_shape' x n' x m`` observations (original scale); ``batch_shape'``
                broadcasts against ``batch_shape`` (fantasies add leading dimensions).
            noise: Optional noise variances ``batch_shape x n' x m`` in the
                outcome-transformed space; default: the model's noise.
        """
        if not self.is_fitted:
            raise NotFittedError("condition_on_observations needs a fitted model.")
        if self._outputs is not None:
            raise NotImplementedError(
                "condition_on_observations on an output subset: condition the full model, then subset it."
            )
        self.check_X(X)
        X_tf = self.transform_inputs(X)
        outcome_transform = getattr(self, "outcome_transform", None)
        Y_tf, Z, N = z_space_observations(
            Y, noise, X_tf, outcome_transform, self.y_mean, self.y_scale, self.z_noise_var
        )
        new = self._shallow_copy()
        new._conditioning = append_observations(self._conditioning, (X_tf, Z, N))
        if X.dim() == 2 and Y.dim() == 2:  # unbatched: a refit on the training data includes them
            train = (self.train_inputs[0], self.train_targets, self.train_Yvar)
            X_all, new.train_targets, new.train_Yvar = append_training_data(train, X, Y_tf, noise)
            new.train_inputs = (X_all,)
        return new

    def _shallow_copy(self) -> LaplaceModel:
        """A copy sharing the (read-only) network and curvature, with its own containers."""
        new = copy.copy(self)
        # nn.Module keeps its children in these dicts; a shallow copy must not share them.
        new._modules, new._buffers = dict(self._modules), dict(self._buffers)
        new._parameters = dict(self._parameters)
        new.fit_info = dict(self.fit_info)
        return new
