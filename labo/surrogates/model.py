"""``LaplaceModel``: a BoTorch ``Model`` backed by a Laplace-approximated network.

A drop-in for ``SingleTaskGP``: same constructor data arguments and transforms,
``posterior`` returns a ``GPyTorchPosterior`` over a ``MultivariateNormal``
(one output) or ``MultitaskMultivariateNormal`` (several), joint over the ``q``
points and outputs of each t-batch and never across t-batches.

Spaces. BoTorch transforms come first (``input_transform`` on X,
``outcome_transform`` on Y). Inside, the targets are further standardised with
fixed statistics of the training targets (``z = (y − μ) / s``), so the network,
its prior precision and the noise level work on O(1) numbers whatever the scale
of Y, with or without an outcome transform. The Laplace core works in z-space;
``posterior`` maps back exactly (an affine map of a Gaussian).
"""

from __future__ import annotations

from typing import Any

import torch
from botorch.models.gpytorch import GPyTorchModel
from botorch.models.model import FantasizeMixin
from gpytorch.constraints import GreaterThan
from gpytorch.likelihoods import FixedNoiseGaussianLikelihood, GaussianLikelihood
from gpytorch.models import GP
from torch import Tensor, nn

from labo.exceptions import WeightSubsetError
from labo.laplace import AllWeights, Full, Kron, LaplaceApproximation, LastLayer, WeightMask
from labo.laplace.functional import Functional, prefer_functional
from labo.laplace.structures import Structure
from labo.laplace.subnetworks import WeightStrategy, by_module, placeholder_mask
from labo.laplace.subsets import WeightSubset
from labo.surrogates.model_posterior import PosteriorMixin
from labo.surrogates.model_support import ChecksMixin, ConditioningMixin, check_training_data
from labo.surrogates.networks import (
    RBF_BAYESIAN_LAYERS,
    default_network,
    is_rff_network,
    rbf_network,
    rff_network,
)

# Where the weight prior can be centred (the ``prior_mean`` argument).
PRIOR_MEANS = ("zero", "init")
# The built-in networks (the ``network`` argument as a string; see labo.surrogates.networks).
NETWORKS = ("mlp", "rbf", "rff")
# The network of LaplaceModel(train_X, train_Y) (docs/benchmarks.md, "BO suite").
DEFAULT_NETWORK = "rff"
# The default structure is Functional() up to this many training rows n·m, then Kron().
FUNCTIONAL_MAX_ROWS = 250


class LaplaceModel(PosteriorMixin, ConditioningMixin, ChecksMixin, GPyTorchModel, FantasizeMixin, GP):
    """A BoTorch model whose posterior is the linearised Laplace predictive of a network.

    ``__init__`` stores data and builds the network; it never trains. Call
    :func:`labo.surrogates.fit_laplace_model` (or BoTorch's
    ``fit_gpytorch_mll(LaplaceMarginalLogLikelihood(model))``) to fit.

    Example::

        model = LaplaceModel(train_X, train_Y, input_transform=Normalize(d),
                             outcome_transform=Standardize(m))
        fit_laplace_model(model)          # MAP training + marginal-likelihood tuning
        posterior = model.posterior(X)    # X: batch_shape x q x d
        # next BO iteration, with more data: start from this model's weights
        model = LaplaceModel(X_more, Y_more, ..., warm_start=model)

    After fitting, ``model.network`` is the trained network, ``model.laplace`` the
    :class:`~labo.laplace.LaplaceApproximation` (tuned ``prior_precision`` and
    ``noise_std``, in standardised target units) and ``model.fit_info`` records
    the fit (seconds, training steps, marginal-likelihood history). Data, network
    and posterior share one device and dtype (float32 or float64): pass CUDA
    tensors to work on a GPU. Posterior function samples and Thompson sampling:
    :mod:`labo.acquisition`. How to choose ``weights`` and ``structure``:
    ``docs/guide.md``.

    The arguments after ``train_Yvar`` are meant to be passed by keyword; they are
    not keyword-only because Ax inspects the positional argument names to decide
    which transforms a model class accepts.

    Args:
        train_X: ``n x d`` training inputs.
        train_Y: ``n x m`` training targets.
        train_Yvar: Optional ``n x m`` observed noise variances (fixed noise; the
            noise level is then not tuned).
        network: An ``nn.Module`` mapping ``b x d`` to ``b x m``, or a built-in one by
            name: ``"rff"`` (the default, :func:`labo.surrogates.networks.rff_network`: 1024
            random Fourier features with one learnable lengthscale per input, then a
            linear layer; its default ``weights`` are that last layer, and its lengthscales,
            prior precision and noise are tuned on the exact evidence, see
            ``labo.surrogates.feature_evidence``: a bounded, GP-like variance away from
            the data), ``"mlp"`` (:func:`labo.surrogates.networks.default_network`, MLP
            d-64-64-m, tanh, every weight Bayesian; the default before the surrogate
            screen of docs/benchmarks.md) or ``"rbf"``
            (:func:`labo.surrogates.networks.rbf_network`: 64 Gaussian RBF features around
            centres drawn from the inputs, then 64-64-m tanh; its default ``weights`` are
            the two linear layers).
        weights: Which weights are Bayesian (default ``AllWeights()``; ``LastLayer()``
            for ``"rff"``), or a strategy
            ``(network, X, Z) -> WeightMask`` (``labo.laplace.subnetworks``, e.g.
            ``partial(largest_variance, n_weights=1000)``) applied by ``fit_laplace_model``
            after each MAP training round to the trained network, the transformed inputs
            and the standardised targets; its default structure is ``Full()``. To load a
            saved strategy model, build it with ``weights=saved.laplace.weights`` (the mask).
        structure: Posterior structure. Default: ``Functional()`` (exact GGN, function
            space) while ``n·m`` is below the number of Bayesian weights and at most
            ``FUNCTIONAL_MAX_ROWS`` (250), else ``Kron(rest="auto")`` (see
            ``labo.laplace.functional.prefer_functional``). Past a few hundred points the
            function-space cross covariances (``O(n²)`` per candidate batch) make
            acquisition optimisation slower than Kron's ``O(S)`` per candidate row.
            ``rest="auto"`` keeps the Bayesian weights outside Linear layers (e.g. the
            RBF centres with ``weights=AllWeights()``) as one full GGN block up to 8192
            of them; the default networks' default weights have none.
        input_transform: A BoTorch ``InputTransform`` (e.g. ``Normalize(d)``).
        outcome_transform: A BoTorch ``OutcomeTransform`` (e.g. ``Standardize(m)``).
        prior_precision: Initial prior precision (tuned by the marginal likelihood).
        noise_std: Initial noise standard deviation in standardised units (tuned).
        warm_start: A previously fitted ``LaplaceModel`` (same network architecture):
            its weights and hyperparameters start this model's fit.
        prior_mean: Where the Gaussian prior over the weights is centred: ``"zero"``
            (``N(0, λ⁻¹)``, weight decay towards zero) or ``"init"`` (``N(θ₀, λ⁻¹)`` with
            ``θ₀`` the network's weights when the model is built: its random
            initialisation for the default network; a warm-started model keeps the
            centre of the model it starts from). MAP training decays towards the centre
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
        d, m = train_X.shape[-1], train_Y.shape[-1]
        self._d, self._m = d, m
        self.train_inputs = (train_X,)
        self.train_targets = Y_tf
        self.train_Yvar = Yvar_tf
        # Fixed standardisation of the (transformed) targets: the network works in z-space.
        mean = Y_tf.mean(0)
        scale = Y_tf.std(0) if Y_tf.shape[0] > 1 else torch.ones_like(mean)
        scale = torch.where(scale > 1e-8 * (1 + mean.abs()), scale, torch.ones_like(scale))
        self.register_buffer("y_mean", mean, persistent=False)
        self.register_buffer("y_scale", scale, persistent=False)
        if isinstance(network, str) and network not in NETWORKS:
            raise ValueError(f"network must be an nn.Module or one of {NETWORKS}, got {network!r}.")
        # network="rff": a Bayesian last layer on random Fourier features, every
        # hyperparameter tuned on its exact evidence (labo.surrogates.feature_evidence).
        if network is None:
            network = DEFAULT_NETWORK
        if network == "rff":
            network = rff_network(d, m, dtype=train_X.dtype, device=train_X.device)
        self.evidence_fit = is_rff_network(network) and weights is None
        if is_rff_network(network) and weights is None:
            weights = LastLayer()  # its default structure, Functional or Kron, is exact here
        if network == "rbf":
            network = rbf_network(X_tf, m)
            if weights is None:
                weights = by_module(network, names=list(RBF_BAYESIAN_LAYERS))
        elif network == "mlp":
            network = default_network(X_tf.shape[-1], m, dtype=train_X.dtype, device=train_X.device)
        if prior_mean not in PRIOR_MEANS:
            raise ValueError(f"prior_mean must be one of {PRIOR_MEANS}, got {prior_mean!r}.")
        self.prior_mean = prior_mean
        with torch.no_grad():
            flat = torch.cat([p.reshape(-1) for p in network.parameters()])
            anchor = flat.clone() if prior_mean == "init" else torch.zeros_like(flat)
        self.register_buffer("network_anchor", anchor)
        weights = AllWeights() if weights is None else weights
        # A strategy picks the weights after MAP training; until then one weight stands in.
        self.weight_strategy = None if isinstance(weights, WeightSubset) else weights
        self._strategy_structure = structure or Full()
        if self.weight_strategy is not None:
            if not callable(weights):
                raise WeightSubsetError(
                    f"weights must be a WeightSubset or a strategy callable, got {weights!r}."
                )
            weights, structure = placeholder_mask(network), Full()
        if structure is None:
            n_weights = weights.resolve(network).n_weights
            functional = prefer_functional(train_X.shape[0], m, n_weights, max_rows=FUNCTIONAL_MAX_ROWS)
            structure = Functional() if functional else Kron(rest="auto")
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
        # The prior of MAP training when it differs from the posterior's (FitOptions(prior="function")).
        self.map_prior_precision: Tensor | None = None
        self._outputs: list[int] | None = None  # set by subset_output
        self.fit_info: dict[str, Any] = {}
        self.to(train_X)
        if warm_start is not None:
            self.warm_start_from(warm_start)

    # ------------------------------------------------------------------ properties
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
        if self._conditioning is None:
            return torch.Size([])
        Xc, Zc, Nc = self._conditioning
        return torch.broadcast_shapes(Xc.shape[:-2], Zc.shape[:-2], Nc.shape[:-2])

    @property
    def is_fitted(self) -> bool:
        return bool(self.laplace.curvature.fitted)

    @property
    def z_noise_var(self) -> Tensor:
        """Observation noise variance in z-space, ``(m,)``."""
        if self.train_Yvar is not None:
            return self.train_Yvar.mean(0) / self.y_scale.pow(2)
        return self.laplace.noise_std.detach().pow(2).expand(self._m)

    def anchor_parameters(self) -> dict[str, Tensor]:
        """The prior's centre ``θ₀`` for every network parameter, ``{name: tensor}``
        (zeros unless ``prior_mean="init"``)."""
        out, start = {}, 0
        for name, p in self.network.named_parameters():
            out[name] = self.network_anchor[start : start + p.numel()].view_as(p)
            start += p.numel()
        return out

    def _set_laplace_prior_mean(self) -> None:
        self.laplace.prior_mean = self.laplace.subset.theta_from(self.anchor_parameters())

    def warm_start_from(self, other: LaplaceModel) -> None:
        """Start from another fitted model's network weights, hyperparameters and prior centre."""
        self.network.load_state_dict(other.network.state_dict())
        self.prior_mean = other.prior_mean
        self.network_anchor.copy_(other.network_anchor)
        self._set_laplace_prior_mean()
        self.laplace.prior_precision = other.laplace.prior_precision.detach().clone()
        if other.map_prior_precision is not None:
            self.map_prior_precision = other.map_prior_precision.detach().clone()
        self.laplace.noise_std = other.laplace.noise_std.detach().clone()
        self.fit_info = {"warm_start": True}

    def select_weights(self, X: Tensor, Z: Tensor) -> LaplaceApproximation:
        """Apply ``weight_strategy`` to the current network; rebuild the (unfitted) posterior.

        No-op without a strategy. The noise and a scalar prior precision carry over; a
        per-tensor or per-weight prior precision is replaced by its mean (the mask changes).

        Args:
            X: ``n x d`` transformed training inputs.
            Z: ``n x m`` standardised training targets.

        Returns:
            ``self.laplace``.
        """
        if self.weight_strategy is None:
            return self.laplace
        mask = self.weight_strategy(self.network, X, Z)
        if not isinstance(mask, WeightMask):
            raise WeightSubsetError(
                f"The weight strategy {self.weight_strategy!r} must return a WeightMask, "
                f"got {type(mask).__name__}."
            )
        la = self.laplace
        prior = la.prior_precision.detach()
        self.laplace = LaplaceApproximation(
            self.network, "regression", mask, self._strategy_structure, prior.mean(), la.noise_std.detach()
        )
        self._set_laplace_prior_mean()
        return self.laplace

    def load_state_dict(self, state_dict, strict: bool = True, keep_transforms: bool = True):
        """Load a state dict; a fitted state makes the next fit a warm start.

        With ``keep_transforms=True`` (default) the input/outcome transforms keep the
        statistics of this model's own training data, as they must for its targets.
        """
        if keep_transforms:
            state_dict = {
                k: v
                for k, v in state_dict.items()
                if not k.startswith(("outcome_transform.", "input_transform."))
            }
            own = {
                k: v
                for k, v in self.state_dict().items()
                if k.startswith(("outcome_transform.", "input_transform."))
            }
            state_dict.update(own)
        # nn.Module.load_state_dict: GPyTorchModel's version re-derives GP training targets.
        out = nn.Module.load_state_dict(self, state_dict, strict=strict)
        self.fit_info = {"warm_start": True}
        return out

    def _set_transformed_inputs(self) -> None:
        """No-op: ``train_inputs`` always holds the raw inputs; transforms apply on use."""

    def _revert_to_original_inputs(self) -> None:
        """No-op (see :meth:`_set_transformed_inputs`)."""

    def custom_fit(self, mll, closure=None, closure_kwargs=None, optimizer_kwargs=None, **kwargs):
        """Hook of BoTorch's ``fit_gpytorch_mll``: fit by MAP + marginal likelihood."""
        from labo.surrogates.fit import fit_laplace_model

        fit_laplace_model(self)
        mll.eval()
        return mll

    # ------------------------------------------------------------------ BoTorch protocol
    def subset_output(self, idcs: list[int]) -> LaplaceModel:
        """A model over the outputs ``idcs`` only (sharing the fitted network)."""
        idx = self._output_index(idcs).tolist()
        base = self._outputs or list(range(self._m))
        new = self._shallow_copy()
        new._outputs = [base[i] for i in idx]
        return new
