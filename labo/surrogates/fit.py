"""Fitting a ``LaplaceModel``: MAP training, Laplace fit, marginal-likelihood tuning.

``fit_laplace_model(model)`` runs, in z-space (standardised targets):

1. MAP training of the network on the negative log joint
   ``Σ‖z − f‖² / (2σ²) + ½ Σ λ θ²`` (divided by n), with the current noise σ
   and prior precision λ (its mean for weights outside the Bayesian subset).
   Full batch, by Adam (default) or by L-BFGS with a strong-Wolfe line search.
2. Laplace fit (curvature at the MAP weights).
3. Prior precision and noise tuned by maximising the Laplace log marginal
   likelihood (Adam on their logarithms), the noise kept above a floor.

Cold start (fresh network): two rounds of 1-3 (the MAP depends on the tuned
hyperparameters). Warm start (the model's network comes from a previous fit:
``warm_start=``, ``load_state_dict``, or a refit of the same model with more
data): one round, starting from the previous weights and hyperparameters, with a
smaller step budget, so a refit costs a fraction of a fresh fit. Hyperparameters
are re-tuned on every fit.

Adam or L-BFGS: L-BFGS gets closer to the minimum of the loss, which the Laplace
posterior assumes, but its sharper fit also extrapolates more (BO stayed on an edge
of a 2-D quadratic), so Adam stays the MAP default (docs/research-log.md).

The default network, ``network="rff"``, skips all of this: its last layer on fixed
features has an exact evidence, tuned with the features' lengthscales by
:func:`labo.surrogates.feature_evidence.fit_feature_evidence` (``min_noise_std`` and the
options from ``evidence_iters`` on apply to it).

Noise floor: on noiseless objectives a model that interpolates its data drives
the marginal-likelihood noise to zero, the posterior collapses and BO proposes
one point forever. ``min_noise_std`` (0.01 in standardised units, BoTorch's
``1e-4`` noise-variance floor for GPs) prevents it.

Early stopping: Adam stops when the loss has not improved by more than
``rel_tol`` (relative) for ``patience`` consecutive steps, or at the step limit;
L-BFGS when the gradient or the change of the loss is negligible, or at the limit.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from labo.exceptions import HyperparameterError
from labo.laplace import input_relevance_groups, optimize_hyperparameters
from labo.surrogates.averaged_posterior import averaged_kernel_posterior, averages_at, check_average_options
from labo.surrogates.feature_evidence import EVIDENCES, LENGTHSCALE_PRIORS, fit_feature_evidence
from labo.surrogates.kernel_posterior import KERNEL_POSTERIOR_ROWS, kernel_posterior
from labo.surrogates.map_training import train_map
from labo.surrogates.priors import fanin_prior_base, function_space_scale, log_hyperprior

if TYPE_CHECKING:  # the model calls fit_laplace_model (BoTorch's custom_fit hook)
    from labo.surrogates.model import LaplaceModel


@dataclass
class FitOptions:
    """Knobs of :func:`fit_laplace_model` (the procedure is in the module docstring).

    A cheaper fit for quick experiments, e.g.
    ``FitOptions(max_epochs_cold=300, hyper_steps_cold=30, rounds_cold=1)``.

    Attributes:
        optimizer: ``"adam"`` (full-batch Adam with early stopping, the default) or
            ``"lbfgs"`` (full-batch L-BFGS, strong-Wolfe line search; see the module
            docstring for when it helps and when it does not).
        lr: Adam learning rate of the MAP training of the network (``"adam"``).
        max_epochs_cold: Most training steps per round of a cold fit (fresh network):
            L-BFGS iterations or Adam steps. ``None``: 1000 for L-BFGS, 2000 for Adam.
        max_epochs_warm: Most training steps of a warm refit. ``None``: 200 for
            L-BFGS, 400 for Adam.
        patience: Adam stops after this many steps without a relative improvement
            of the loss larger than ``rel_tol``.
        rel_tol: Relative improvement that counts for ``patience``.
        rounds_cold: Rounds of train → Laplace fit → hyperparameter tuning (cold fit).
        rounds_warm: The same for a warm refit.
        hyper_steps_cold: Most Adam steps on log prior precision and log noise per
            round (cold fit); they stop earlier once the marginal likelihood settles.
        hyper_steps_warm: The same for a warm refit.
        hyper_lr: Adam learning rate of the hyperparameter tuning.
        min_noise_std: Floor of the tuned noise standard deviation, in standardised
            target units (not applied to known noise, ``train_Yvar``).
        prior: ``"scalar"`` (one prior precision, or the shape the model was given),
            ``"ard"``: one prior precision per input for the first layer's weights
            (automatic relevance determination, like a GP's lengthscale per input) and
            one per other weight tensor (``labo.laplace.input_relevance_groups``), or
            ``"fanin"``: one per tensor, ``c · fan_in`` for the weights of a Linear layer
            and ``c`` for every other tensor, with the one factor ``c`` tuned (the NTK
            scaling: a layer's pre-activation variance does not grow with its width or
            with the input dimension; :func:`fanin_prior_base`), or ``"function"``: the
            same shape with ``c`` pinned in function space for the posterior, so that the
            linearised prior variance ``J(x) Λ⁻¹ J(x)ᵀ`` averaged over the box is 1 in
            standardised units (``Var(y)``, where a GP's outputscale settles;
            :func:`function_space_scale`). MAP training keeps the scalar prior tuned
            by the marginal likelihood (``model.map_prior_precision``): the MAP under
            the calibrated prior collapses to the all-zero network on small data.
        hyperprior_std: With ``prior="fanin"``, the standard deviation of a normal
            hyperprior on ``log c`` centred at 0 (``c = 1``: weights ``N(0, 1/fan_in)``,
            LeCun's initialisation scale); ``None``: no hyperprior (type-II ML). With
            ``prior="function"``, centred at the pinned ``c``; ``None``: ``c`` stays pinned.
        evidence_iters: L-BFGS iterations of the evidence fit of ``network="rff"``
            (``labo.surrogates.feature_evidence``), which replaces the rounds above.
        evidence: Which evidence that fit maximises: ``"kernel"`` (the default: the
            RBF kernel the features approximate) or ``"features"`` (the features' own
            exact Bayesian linear regression, whose lengthscales can fit the one draw
            of random frequencies; ``labo.surrogates.feature_evidence``).
        evidence_prior_precision: Pin that fit's prior precision ``λ`` at this value
            (``1``: prior variance 1 per weight, as SingleTaskGP's outputscale of 1);
            ``None``: tuned under an ``N(log 2, 1)`` hyperprior on ``log λ``.
        noise_prior: Add BoTorch's GP noise prior, ``LogNormal(-4, 1)`` on the noise
            variance in standardised units, to the tuning objective (MAP-II).
        posterior: The posterior of ``network="rff"`` after its evidence fit:
            ``"kernel"`` (the default with ``evidence="kernel"``: the exact GP of the kernel
            the features approximate, at the same hyperparameters, which is their
            ``D → ∞`` limit, :mod:`labo.surrogates.kernel_posterior`) for up to
            ``KERNEL_POSTERIOR_ROWS`` training rows, the features' beyond; or
            ``"features"`` (the default with ``evidence="features"``: the Laplace posterior
            of the last layer on its ``D`` features, exact Bayesian linear regression).
            ``"kernel"`` needs ``evidence="kernel"``. ``model.posterior``, conditioning (fantasies) and
            function samples (Thompson sampling, by Matheron's rule) use it.
        lengthscale_samples: ``S > 0``: average the kernel posterior over ``S``
            lengthscale vectors drawn from their Laplace marginal at the evidence's optimum,
            moment-matched into one Gaussian
            (:class:`~labo.surrogates.averaged_posterior.AveragedKernelPosterior`), so the
            variance also reflects how little the data pin the lengthscales down; ``0``:
            the MAP-II lengthscales alone; ``None`` (the default): ``S = 16`` with
            ``posterior="kernel"``, else ``0``. Needs ``posterior="kernel"``; costs ``S``
            kernel posteriors per call. Function samples (Thompson sampling) pick a member
            each (:class:`~labo.surrogates.averaged_posterior.MixtureFunctionSamples`).
        lengthscale_samples_rows_per_input: Average only from ``n ≥`` this many rows per
            input (default 2: ``n ≥ 2d``): with fewer, the lengthscale marginal is so wide
            that the members' average mean no longer follows the inputs the MAP has found.
        lengthscale_samples_min_rows: Average only from ``n ≥`` this many rows as well
            (default 20): in low dimension ``2d`` rows come before the data say much, and the
            wide members slow the first iterations; ``0``: the per-input rule alone.
        lengthscale_samples_max_rows_per_input: Average only below ``n <`` this many rows
            per input (default 30; ``None``: no upper limit). With many rows per input the
            data pin the lengthscales down, the members nearly agree, and ``S`` kernel
            posteriors of ``n`` rows cost ``S`` times the MAP-II one for almost no change.
        lengthscale_samples_max_rows: Average only while ``n ≤`` this many rows (default
            200; ``None``: no limit): each acquisition call costs up to ``S`` times the
            MAP-II posterior's once the ``n x n`` solves dominate (from a few hundred rows).
        lengthscale_antithetic: Draw the lengthscale vectors in antithetic pairs
            (``ℓ̂ ± δ``, an even ``S``): the members' mean is centred on the MAP-II
            lengthscales exactly (research option).
        lengthscale_prior: The hyperprior on the lengthscales in the evidence fit of
            ``network="rff"``: ``"dim_scaled"`` (the default, BoTorch's GP prior of
            Hvarfner et al. 2024) or ``"saas"``, the sparse axis-aligned subspace prior of
            Eriksson and Jankowiak 2021 at a fixed global shrinkage, which keeps inputs
            the evidence does not clearly need at long lengthscales
            (:mod:`labo.surrogates.feature_evidence`).
        seed: Seed of torch's global random generator, set before a cold fit (the
            network's initial weights were drawn before, at construction); ``None``
            leaves the generator alone.
        cosine: Anneal Adam's learning rate from ``lr`` to ``lr / 100`` over the
            step limit (cosine schedule) instead of keeping it constant.
        lr_warm: Adam learning rate of a warm refit's training.
    """

    optimizer: str = "adam"
    lr: float = 1e-2
    max_epochs_cold: int | None = None
    max_epochs_warm: int | None = None
    patience: int = 50
    rel_tol: float = 1e-4
    rounds_cold: int = 2
    rounds_warm: int = 1
    hyper_steps_cold: int = 100
    hyper_steps_warm: int = 50
    hyper_lr: float = 0.1
    min_noise_std: float = 1e-2
    prior: str = "scalar"
    seed: int | None = 0
    cosine: bool = False
    lr_warm: float = 1e-2
    hyperprior_std: float | None = None
    noise_prior: bool = False
    evidence_iters: int = 100
    evidence: str = "kernel"
    evidence_prior_precision: float | None = None
    posterior: str | None = None
    lengthscale_samples: int | None = None
    lengthscale_samples_rows_per_input: float = 2.0
    lengthscale_samples_min_rows: int = 20
    lengthscale_samples_max_rows_per_input: float | None = 30.0
    lengthscale_samples_max_rows: int | None = 200
    lengthscale_antithetic: bool = False
    lengthscale_prior: str = "dim_scaled"

    def __post_init__(self) -> None:
        if self.optimizer not in _DEFAULT_STEPS:
            raise ValueError(f"optimizer must be 'lbfgs' or 'adam', got {self.optimizer!r}.")
        for name in ("max_epochs_cold", "max_epochs_warm"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
                raise ValueError(f"{name} must be a non-negative integer or None, got {value!r}.")
        if self.prior not in PRIORS:
            raise ValueError(f"prior must be one of {PRIORS}, got {self.prior!r}.")
        if self.hyperprior_std is not None and not (
            math.isfinite(self.hyperprior_std) and self.hyperprior_std > 0
        ):
            raise ValueError(
                f"hyperprior_std must be a positive number or None, got {self.hyperprior_std!r}."
            )
        if not (self.min_noise_std >= 0.0 and math.isfinite(self.min_noise_std)):
            raise ValueError(f"min_noise_std must be a finite number >= 0, got {self.min_noise_std!r}.")
        if self.evidence not in EVIDENCES:
            raise HyperparameterError(f"evidence must be one of {EVIDENCES}, got {self.evidence!r}.")
        if self.posterior is None:
            self.posterior = "kernel" if self.evidence == "kernel" else "features"
        if self.posterior not in POSTERIORS:
            raise HyperparameterError(f"posterior must be one of {POSTERIORS}, got {self.posterior!r}.")
        if self.lengthscale_samples is None:
            self.lengthscale_samples = DEFAULT_LENGTHSCALE_SAMPLES if self.posterior == "kernel" else 0
        samples = self.lengthscale_samples
        check_average_options(self)
        if samples and self.posterior != "kernel":
            raise HyperparameterError(
                f"lengthscale_samples needs posterior='kernel', got posterior={self.posterior!r}."
            )
        if self.lengthscale_prior not in LENGTHSCALE_PRIORS:
            raise HyperparameterError(
                f"lengthscale_prior must be one of {LENGTHSCALE_PRIORS}, got {self.lengthscale_prior!r}."
            )
        if self.posterior == "kernel" and self.evidence != "kernel":
            raise HyperparameterError(
                "posterior='kernel' needs evidence='kernel' (the kernel's hyperparameters), "
                f"got evidence={self.evidence!r}."
            )

    def steps(self, warm: bool) -> int:
        """The training step limit of a warm or cold round."""
        value = self.max_epochs_warm if warm else self.max_epochs_cold
        return _DEFAULT_STEPS[self.optimizer][int(warm)] if value is None else value


# Members of the default lengthscale average (FitOptions.lengthscale_samples=None).
DEFAULT_LENGTHSCALE_SAMPLES = 16
_DEFAULT_STEPS = {"lbfgs": (1000, 200), "adam": (2000, 400)}
PRIORS = ("scalar", "ard", "fanin", "function")
POSTERIORS = ("features", "kernel")


def fit_laplace_model(model: LaplaceModel, options: FitOptions | None = None) -> LaplaceModel:
    """MAP-train the network, fit the Laplace posterior and tune its hyperparameters.

    Warm-started when the model's network comes from a previous fit (see the
    module docstring). Records timings and iteration counts in ``model.fit_info``:
    ``posterior`` (``"features"`` or ``"kernel"``, :class:`FitOptions`), ``seconds``,
    ``train_steps`` (per round; a round that reached the step limit did not stop early),
    ``lml_history``, ``prior_precision``, ``noise_std``, ``warm_start`` and, for
    ``network="rff"``, ``hyper_log_posterior`` (the maximised log evidence plus the
    hyperpriors' log densities; the larger of two such fits on the same data is the
    better-supported model; ``None`` otherwise). The tuned prior precision and noise are
    in standardised target units (``model.y_scale``); ``model.likelihood.noise`` holds
    the noise variance in the outcome-transformed units.

    Args:
        model: The ``LaplaceModel`` to fit (in place). A conditioned model is
            refitted on all its (non-batched) data and its conditioning cleared.
        options: :class:`FitOptions`; defaults if omitted.

    Returns:
        The fitted model.

    Raises:
        ValueError: For a batched (fantasy) model: refit the model it came from.
    """
    opts = options or FitOptions()
    if model.conditioning is not None:
        if model.batch_shape != torch.Size([]):
            raise ValueError("Cannot refit a batched (fantasy) model; refit the model it came from.")
    warm = model.is_fitted or bool(model.fit_info.get("warm_start"))
    t0 = time.perf_counter()
    model.train()
    model.kernel_posterior = None
    if opts.seed is not None and not warm:
        torch.manual_seed(opts.seed)
    with torch.no_grad():
        X = model.transform_inputs(model.train_inputs[0])
    Z = (model.train_targets - model.y_mean) / model.y_scale
    fixed_noise = model.train_Yvar is not None
    if model.evidence_fit:  # network="rff": exact evidence of the last layer on its features
        known = (model.train_Yvar / model.y_scale.pow(2)).clamp_min(1e-12) if fixed_noise else None
        kernel_post = opts.posterior == "kernel" and X.shape[0] <= KERNEL_POSTERIOR_ROWS
        samples = opts.lengthscale_samples if kernel_post and averages_at(opts, *X.shape[-2:]) else 0
        info = fit_feature_evidence(
            model,
            X,
            Z,
            max_iter=opts.evidence_iters,
            min_noise_std=opts.min_noise_std,
            noise_var=known,
            evidence=opts.evidence,
            prior_precision=opts.evidence_prior_precision,
            lengthscale_samples=samples,
            lengthscale_prior=opts.lengthscale_prior,
            antithetic=opts.lengthscale_antithetic,
        )
        train_steps, history = [info["steps"]], info["lml_history"]
        hyper_log_posterior = info["hyper_log_posterior"]
        if kernel_post:
            with torch.no_grad():
                draws = info["lengthscale_draws"]
                model.kernel_posterior = (
                    kernel_posterior(model, X, Z)
                    if draws is None
                    else averaged_kernel_posterior(model, X, Z, draws)
                )
    else:
        train_steps, history = _map_rounds(model, X, Z, opts, warm)
        hyper_log_posterior = None
    la = model.laplace
    model.eval()
    with torch.no_grad():
        noise = (model.z_noise_var * model.y_scale.pow(2)).mean()
        if not fixed_noise:
            model.likelihood.noise = noise.clamp_min(1e-9).reshape(1)
    model.clear_conditioning()
    model.fit_info = {
        "posterior": "features" if model.kernel_posterior is None else "kernel",
        "lengthscale_samples": getattr(model.kernel_posterior, "num_members", 0),
        "warm_start": warm,
        "seconds": time.perf_counter() - t0,
        "train_steps": train_steps,
        "lml_history": history,
        "hyper_log_posterior": hyper_log_posterior,
        "prior_precision": la.prior_precision.detach().clone(),
        "noise_std": la.noise_std.detach().clone(),
    }
    return model


def _map_rounds(model: LaplaceModel, X: Tensor, Z: Tensor, opts: FitOptions, warm: bool):
    """Rounds of MAP training → Laplace fit → hyperparameter tuning (module docstring).

    Returns:
        ``(train_steps per round, marginal-likelihood history)``.
    """
    la = model.laplace
    rounds = opts.rounds_warm if warm else opts.rounds_cold
    max_epochs = opts.steps(warm)
    hyper_steps = opts.hyper_steps_warm if warm else opts.hyper_steps_cold
    train_steps, history = [], []
    fixed_noise = model.train_Yvar is not None
    base = None
    if opts.prior in ("fanin", "function"):
        if model.weight_strategy is not None:
            raise ValueError(f"FitOptions(prior={opts.prior!r}) needs a fixed weight subset, not a strategy.")
    if opts.prior == "fanin":
        base = fanin_prior_base(la)
        if la.prior_precision.dim() == 0:  # a fresh model: c · fan_in from its scalar c
            la.prior_precision = la.prior_precision.detach() * base
    if opts.prior == "function" and model.map_prior_precision is not None:
        la.prior_precision = model.map_prior_precision  # tuned below; pinned after
    hyperprior = log_hyperprior(opts.hyperprior_std, opts.noise_prior, base)
    for round_ in range(rounds):
        info = train_map(model, X, Z, opts, max_epochs, lr=opts.lr_warm if warm else opts.lr)
        la = model.select_weights(X, Z)  # a weight strategy picks the subnetwork of the trained net
        train_steps.append(info["steps"])
        if fixed_noise:
            la.fit(X, Z, noise_var=(model.train_Yvar / model.y_scale.pow(2)).clamp_min(1e-12))
        else:
            la.fit(X, Z)
        history += optimize_hyperparameters(
            la,
            n_steps=hyper_steps,
            lr=opts.hyper_lr,
            tune_noise=not fixed_noise,
            min_noise_std=opts.min_noise_std,
            prior_groups=input_relevance_groups(la) if opts.prior == "ard" else None,
            tie_prior=opts.prior == "fanin",
            hyperprior=hyperprior,
        )
        if opts.prior == "function":
            model.map_prior_precision = la.prior_precision.detach().clone()
            if round_ < rounds - 1:
                continue
            fan_in = fanin_prior_base(la)
            la.prior_precision = function_space_scale(la, X, fan_in) * fan_in
            if not fixed_noise:  # the noise that goes with the calibrated prior
                history += optimize_hyperparameters(
                    la,
                    n_steps=hyper_steps,
                    lr=opts.hyper_lr,
                    tune_prior=False,
                    min_noise_std=opts.min_noise_std,
                    hyperprior=hyperprior,
                )
    return train_steps, history
