"""The Laplace posterior object and ``fit_laplace``.

``LaplaceApproximation`` *has* a network, a resolved weight subset and a
curvature module (one per structure); it holds the hyperparameters as tensors
and the few data statistics the marginal likelihood needs, so it never keeps
the training data. It is an ``nn.Module``: ``state_dict()`` /
``load_state_dict()`` round-trip the network, curvature, hyperparameters and
data statistics.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from labo.exceptions import HyperparameterError, InputShapeError, LikelihoodError
from labo.laplace import marglik
from labo.laplace.likelihoods import check_likelihood, check_targets, log_likelihood
from labo.laplace.linearization.linear_factors import factor_plan
from labo.laplace.linearization.rbf import rbf_rest_plan
from labo.laplace.predictive import glm
from labo.laplace.structures.curvature import kfac_layer_plan
from labo.laplace.structures.options import Kron, Structure
from labo.laplace.structures.protocol import LayerBindingPrecision, Precision
from labo.laplace.subsets import AllWeights, WeightSubset
from labo.laplace.validation import as_positive_tensor, as_weight_vector, check_inputs, checked_network_output


class LaplaceApproximation(nn.Module):
    """A Gaussian posterior ``N(θ̂, H⁻¹)`` over the selected weights of a network.

    Build it with :func:`fit_laplace`. Construction alone allocates an unfitted posterior
    (used to ``load_state_dict`` a saved one).

    Args:
        network: The network, at its MAP weights. Maps ``(n, d)`` to ``(n, K)``.
        likelihood: ``"regression"`` (Gaussian, ``noise_std``) or ``"classification"``
            (softmax over K classes).
        weights: Which weights are Bayesian (``AllWeights()``, ``LastLayer()``, ``WeightMask``).
        structure: ``Full()``, ``Diagonal()``, ``Kron()`` or ``Functional()``.
        prior_precision: Scalar, one value per selected parameter tensor, or one per weight.
        noise_std: Observation noise standard deviation (regression).
        prior_mean: Mean ``θ₀`` of the prior ``N(θ₀, Λ₀⁻¹)``: a number or one value per
            selected weight ``(S,)`` (default 0). Only the log marginal likelihood uses it.
    """

    def __init__(
        self,
        network: nn.Module,
        likelihood: str = "regression",
        weights: WeightSubset | None = None,
        structure: Structure | None = None,
        prior_precision: float | Tensor = 1.0,
        noise_std: float | Tensor = 1.0,
        prior_mean: float | Tensor = 0.0,
    ):
        super().__init__()
        self.network = network
        self.likelihood = check_likelihood(likelihood)
        self.weights = AllWeights() if weights is None else weights
        self.structure = Kron() if structure is None else structure
        if not isinstance(self.weights, WeightSubset):
            raise TypeError(f"weights must be AllWeights(), LastLayer() or WeightMask(...), got {weights!r}.")
        if not isinstance(self.structure, Structure):
            raise TypeError(f"structure must be Full(), Diagonal() or Kron(), got {structure!r}.")
        self.subset = self.weights.resolve(network)
        self.factor_plan = factor_plan(network, self.subset)
        # (out, in + bias) positions of each planned layer's [W, b] (Diagonal's Jacobian-free path)
        self._layer_index = (
            [i for _, i in kfac_layer_plan(network, self.subset)[0]] if self.factor_plan else None
        )
        p = next(network.parameters())
        self._dtype, self._device = p.dtype, p.device
        self.curvature = self.structure.build(network, self.subset).to(self._dtype).to(self._device)
        self.rbf_plan = None if self.factor_plan else rbf_rest_plan(network, self.subset, self.curvature)
        kw = {"dtype": self._dtype, "device": self._device}
        self.register_buffer("_prior_precision", self.check_prior(prior_precision).detach().clone())
        self.register_buffer("_noise_std", self.check_noise(noise_std).detach().clone())
        self.register_buffer("theta_map", torch.zeros(self.subset.n_weights, **kw))
        self.register_buffer("_prior_mean", torch.zeros(self.subset.n_weights, **kw))
        self.prior_mean = prior_mean
        self.register_buffer("n_data", torch.tensor(0))
        self.register_buffer("n_outputs", torch.tensor(0))
        self.register_buffer("input_shape", torch.zeros(0, dtype=torch.long))
        self.register_buffer("data_sse", torch.tensor(0.0, **kw))
        self.register_buffer("data_loglik", torch.tensor(0.0, **kw))
        self.register_buffer("fixed_noise", torch.tensor(False))
        self._cache: tuple | None = None

    # ------------------------------------------------------------------ hyperparameters
    @property
    def n_weights(self) -> int:
        """S, the number of selected (Bayesian) weights."""
        return self.subset.n_weights

    def check_prior(self, value) -> Tensor:
        """``value`` as a prior precision tensor (scalar, per tensor or per weight), or a typed error."""
        allowed = {"per tensor": self.subset.n_tensors, "per weight": self.subset.n_weights}
        return as_positive_tensor(value, "prior_precision", allowed, self._dtype, self._device)

    def check_noise(self, value) -> Tensor:
        """``value`` as a valid (positive, scalar) noise standard deviation, or a typed error."""
        return as_positive_tensor(value, "noise_std", {}, self._dtype, self._device)

    @property
    def prior_precision(self) -> Tensor:
        """Prior precision: shape ``()``, ``(n_tensors,)`` or ``(S,)``."""
        return self._prior_precision

    @prior_precision.setter
    def prior_precision(self, value) -> None:
        self._prior_precision = self.check_prior(value)
        self._cache = None

    @property
    def noise_std(self) -> Tensor:
        """Observation noise standard deviation (scalar tensor; regression only)."""
        return self._noise_std

    @noise_std.setter
    def noise_std(self, value) -> None:
        self._noise_std = self.check_noise(value)
        self._cache = None

    @property
    def prior_mean(self) -> Tensor:
        """Mean ``θ₀`` of the Gaussian prior over the selected weights, ``(S,)`` (zeros by default).

        The prior is ``N(θ₀, Λ₀⁻¹)``; only the log marginal likelihood depends on it
        (through ``θ̂ − θ₀``): the posterior is ``N(θ̂, H⁻¹)`` around the trained weights,
        which must have been trained with the same prior.
        """
        return self._prior_mean

    @prior_mean.setter
    def prior_mean(self, value) -> None:
        self._prior_mean = as_weight_vector(value, "prior_mean", self.n_weights, self._dtype, self._device)

    def expand_prior(self, prior: Tensor) -> Tensor:
        """A prior precision (scalar, per tensor or per weight) as one value per selected weight, ``(S,)``."""
        if prior.dim() == 0:
            return prior.expand(self.n_weights)
        if prior.numel() == self.n_weights:
            return prior
        return self.subset.expand_per_tensor(prior)

    _expand_prior = expand_prior  # the older name, read by tests/surrogates/test_prior_mean.py

    def curvature_scale(self, noise: Tensor) -> Tensor:
        """The curvature's factor in the precision: ``σ⁻²`` (regression, tuned noise), else 1."""
        if self.likelihood == "regression" and not bool(self.fixed_noise):
            return noise.pow(-2)
        return torch.ones((), dtype=self._dtype, device=self._device)

    def precision_at(self, prior: Tensor, noise: Tensor) -> Precision:
        """The posterior precision operator at given hyperparameters, differentiable in them."""
        precision = self.curvature.precision(
            self.expand_prior(prior),
            self.curvature_scale(noise),
            prior_is_scalar=prior.dim() == 0,
            prior_is_tied=prior.dim() == 0 or prior.numel() != self.n_weights,
        )
        if self._layer_index is not None and isinstance(precision, LayerBindingPrecision):
            precision.bind_layers([i.to(self._device) for i in self._layer_index])
        return precision

    def posterior_precision(self) -> Precision:
        """The posterior precision operator at the current hyperparameters.

        Cached while the hyperparameters do not require grad (the cache never
        holds an autograd graph, so repeated backward passes stay valid).
        """
        prior, noise = self._prior_precision, self._noise_std
        if prior.requires_grad or noise.requires_grad:
            return self.precision_at(prior, noise)
        # Tensor._version (the in-place write counter) is private, but torch has no public signal of an
        # in-place update (`la.prior_precision.mul_(2)`), which must not return a stale precision.
        key = (id(prior), prior._version, id(noise), noise._version, id(self.curvature))
        if self._cache is None or self._cache[0] != key:
            with torch.no_grad():
                self._cache = (key, self.precision_at(prior, noise))
        return self._cache[1]

    # ------------------------------------------------------------------ fitting
    def fit(self, X: Tensor, Y: Tensor, noise_var: Tensor | None = None) -> LaplaceApproximation:
        """Compute the curvature at the network's current weights and the data statistics.

        Args:
            X: Training inputs ``(n, ...)``.
            Y: Targets ``(n, K)`` (regression) or integer labels ``(n,)`` (classification).
            noise_var: Regression only: fixed, known noise variances ``(n, K)`` per
                observation (heteroscedastic). ``noise_std`` is then unused and the
                likelihood is ``Π N(y | f, noise_var)``.
        """
        check_inputs(X, self._dtype, "X")
        with torch.no_grad():
            F = checked_network_output(self.network, X)
        K = F.shape[-1]
        check_targets(self.likelihood, Y, X.shape[0], K, self._dtype)
        if noise_var is not None:
            if self.likelihood != "regression":
                raise LikelihoodError(f"noise_var is for regression only, got {self.likelihood!r}.")
            if not isinstance(noise_var, Tensor) or noise_var.shape != Y.shape:
                raise InputShapeError(
                    f"Expected noise_var with the shape of Y {tuple(Y.shape)}, "
                    f"got {tuple(getattr(noise_var, 'shape', ()))}."
                )
            if not torch.isfinite(noise_var).all() or not (noise_var > 0).all():
                raise HyperparameterError("noise_var must be positive and finite everywhere.")
            noise_var = noise_var.to(self._dtype)
        self.curvature.compute(self.network, self.subset, self.likelihood, X, K, noise_var)
        with torch.no_grad():
            self.theta_map = self.subset.get_theta(self.network).clone()
            self.n_data = torch.tensor(X.shape[0])
            self.n_outputs = torch.tensor(K)
            self.input_shape = torch.tensor(list(X.shape[1:]), dtype=torch.long)
            self.fixed_noise.fill_(noise_var is not None)
            if noise_var is not None:
                self.data_loglik = (
                    -0.5 * (torch.log(2 * math.pi * noise_var) + (Y - F).pow(2) / noise_var).sum()
                )
            elif self.likelihood == "regression":
                self.data_sse = (Y - F).pow(2).sum()
            else:
                self.data_loglik = log_likelihood("classification", F, Y, self._noise_std)
        self._cache = None
        return self

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # Hyperparameters and shapes may differ from the freshly built defaults.
        for name in ("_prior_precision", "_noise_std", "input_shape"):
            key = prefix + name
            if key in state_dict:
                setattr(self, name, torch.empty_like(state_dict[key]))
        self._cache = None
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    # ------------------------------------------------------------------ outputs
    def split_inputs(self, X: Tensor) -> tuple[torch.Size, Tensor]:
        """Check ``X`` of shape ``(..., n, *input_shape)``; return batch shape and flat rows."""
        self.curvature.check_fitted()
        check_inputs(X, self._dtype, "X")
        in_shape = tuple(self.input_shape.tolist())
        k = len(in_shape)
        if X.dim() < k + 1 or tuple(X.shape[X.dim() - k :]) != in_shape:
            raise InputShapeError(
                f"Expected X with shape (..., n, {', '.join(map(str, in_shape))}), got {tuple(X.shape)}."
            )
        lead = X.shape[: X.dim() - k]
        return lead, X.reshape(-1, *in_shape)

    def log_marginal_likelihood(self, prior_precision=None, noise_std=None) -> Tensor:
        """Laplace log marginal likelihood (see :mod:`labo.laplace.marglik`)."""
        return marglik.log_marginal_likelihood(self, prior_precision, noise_std)

    def predictive(self, X: Tensor, mode: str = "auto") -> tuple[Tensor, Tensor]:
        """GLM predictive of the latent function: mean ``(..., n, K)``, cov ``(..., n, K, n, K)``.

        The covariance is joint over the ``n`` inputs and ``K`` outputs of each
        batch element and never across batch elements. Differentiable w.r.t. ``X``
        and the hyperparameters.

        Args:
            X: Inputs ``(..., n, *input_shape)``.
            mode: How ``J S Jᵀ`` is computed (same result up to round-off):
                ``"auto"``, ``"factors"`` (closed forms, whole Linear layers only),
                ``"jacobian"`` (``vmap`` over outputs) or ``"loop"`` (one output at a
                time, memory independent of K). See :mod:`labo.laplace.predictive.jsjt`.
        """
        return glm.glm_predictive(self, X, mode)

    def predictive_variance(self, X: Tensor, mode: str = "auto") -> Tensor:
        """Marginal GLM variances ``(..., n, K)``, without forming the joint covariance.

        ``mode`` as in :meth:`predictive`; ``"loop"`` keeps peak memory at one
        output's ``(rows, S)`` Jacobian, for many outputs (classes).
        """
        return glm.glm_variance(self, X, mode)

    def predictive_probs(
        self, X: Tensor, link: str = "probit", n_samples: int = 100, generator: torch.Generator | None = None
    ) -> Tensor:
        """Class probabilities ``(..., n, K)`` (classification): ``link="probit"`` from the
        marginal variances only, or ``"mc"`` from ``n_samples`` linearised function samples."""
        return glm.class_probabilities(self, X, link, n_samples, generator)

    def sample_weights(self, n_samples: int, generator: torch.Generator | None = None) -> Tensor:
        """Draws ``(n_samples, S)`` of the selected weights from the posterior."""
        return glm.sample_weights(self, n_samples, generator)

    def sample_parameters(self, n_samples: int, generator: torch.Generator | None = None) -> Tensor:
        """Full parameter vectors ``(n_samples, P)``; only the selected weights vary."""
        return self.subset.full_vector(self.network, self.sample_weights(n_samples, generator))

    def predictive_samples(
        self, X: Tensor, n_samples: int, generator: torch.Generator | None = None, linearized: bool = True
    ) -> Tensor:
        """Function samples ``(n_samples, ..., n, K)`` at ``X``.

        ``linearized=True`` samples the GLM ``f(x) + J(x)(θ_s − θ̂)``; ``False`` runs
        the network with sampled weights.
        """
        return glm.predictive_samples(self, X, n_samples, generator, linearized)

    def condition(self, X_new: Tensor, Y_new: Tensor, noise=None):
        """The posterior conditioned on new observations, exactly, at the same linearisation.

        A Gaussian update (block Cholesky in function space, Woodbury in weight space)
        in ``O(n² q)``, no refit; see :func:`labo.laplace.predictive.conditioning.condition`.

        Args:
            X_new: ``(..., q, d)`` new inputs.
            Y_new: ``(..., q, K)`` new targets; a batch of targets for the same inputs
                (fantasies) shares one factorisation.
            noise: Noise variances broadcastable to the targets (default ``noise_std²``).

        Returns:
            A :class:`~labo.laplace.ConditionedLaplace` (predictive, predictive_variance, sample_functions).
        """
        from labo.laplace.predictive.conditioning import condition

        return condition(self, X_new, Y_new, noise)

    def sample_functions(self, num_samples: int, generator: torch.Generator | None = None):
        """``num_samples`` deterministic posterior functions ``f_s(x) = f(x) + J(x)(θ_s − θ̂)``.

        Returns a :class:`labo.laplace.predictive.function_samples.FunctionSamples`: call it on
        inputs ``(..., n, d)`` to get ``(num_samples, ..., n, K)``, differentiable w.r.t. them.
        """
        from labo.laplace.predictive.function_samples import sample_functions

        return sample_functions(self, num_samples, generator)

    def extra_repr(self) -> str:
        w, s = self.weights, self.structure
        return f"likelihood={self.likelihood!r}, weights={w!r}, structure={s!r}, n_weights={self.n_weights}"


def fit_laplace(
    network: nn.Module,
    X: Tensor,
    Y: Tensor,
    likelihood: str = "regression",
    weights: WeightSubset | None = None,
    structure: Structure | None = None,
    prior_precision: float | Tensor = 1.0,
    noise_std: float | Tensor = 1.0,
    prior_mean: float | Tensor = 0.0,
) -> LaplaceApproximation:
    """Fit a Laplace posterior around the network's current (MAP) weights; does not train.

    Train the network first (minimise the negative log likelihood plus
    ``½ λ ‖θ‖²``). ``fit_laplace`` computes the curvature (GGN) at the current
    weights and returns ``N(θ̂, H⁻¹)`` over the selected weights, with
    ``H = GGN / σ² + λ`` (regression) or ``GGN + λ`` (classification). Tune ``λ``
    and ``σ`` afterwards with :func:`labo.laplace.optimize_hyperparameters`. The
    posterior lives on the network's device and dtype.

    Example::

        la = fit_laplace(net, X, Y, weights=LastLayer(), structure=Full(), noise_std=0.1)
        optimize_hyperparameters(la)           # maximise the log marginal likelihood
        mean, cov = la.predictive(X_new)       # (m, K) and (m, K, m, K), latent f
        var = la.predictive_variance(X_new)    # (m, K)

    Args:
        network: Network at its MAP weights, mapping ``(n, d)`` to ``(n, K)``.
        X: Training inputs ``(n, d)`` (or ``(n, *input_shape)``), in the network's dtype.
        Y: Targets ``(n, K)`` for regression; integer labels ``(n,)`` in ``[0, K)`` for
            classification (softmax over the K outputs).
        likelihood: ``"regression"`` or ``"classification"``.
        weights: ``AllWeights()`` (default), ``LastLayer()`` / ``LastLayer("name")`` or
            ``WeightMask({param_name: bool tensor})``; strategies such as
            ``labo.laplace.largest_variance`` build masks from a trained network.
        structure: ``Kron()`` (default; K-FAC per ``nn.Linear``, ``nn.Conv1d`` or ``nn.Conv2d``
            layer), ``Full()`` (dense ``S x S``), ``Diagonal()`` or ``Functional()`` (the exact GGN computed
            with ``nK x nK`` matrices: the cheap exact choice while ``n·K < S``).
            Costs and advice: ``docs/guide.md``.
        prior_precision: Float or tensor: scalar, one per selected parameter tensor
            (in ``network.named_parameters()`` order) or one per selected weight ``(S,)``.
        noise_std: Gaussian noise standard deviation (regression).
        prior_mean: Mean of the Gaussian prior over the selected weights: a number or
            one value per selected weight ``(S,)`` (default 0; the network must have been
            trained with weight decay towards it). It enters the log marginal likelihood
            as ``θ̂ − θ₀``; the posterior ``N(θ̂, H⁻¹)`` does not depend on it.

    Returns:
        The fitted :class:`LaplaceApproximation`.

    Raises:
        LaboError: For bad data or hyperparameters, a subclass from :mod:`labo.exceptions`
            (``InputShapeError``, ``LabelError``, ``HyperparameterError``, ...) whose
            message names the argument.
        TypeError: When ``weights`` or ``structure`` is not one of the options above.
        LikelihoodError: For an unknown ``likelihood`` (a ``ValueError``).
    """
    la = LaplaceApproximation(network, likelihood, weights, structure, prior_precision, noise_std, prior_mean)
    return la.fit(X, Y)
