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

Adam or L-BFGS: L-BFGS gets much closer to the minimum of the loss, which the
Laplace posterior assumes (on 40 Branin points: held-out RMSE 0.05 vs 0.11 in
standardised units, tuned noise 0.02 vs 0.09; ``benchmarks/diagnostics/map_training.py``),
and BO on Branin improves (log10 regret −1.80 ± 0.25 vs −1.17 ± 0.14, 10 seeds),
but on Hartmann6 it is worse (−0.07 ± 0.10 vs −0.26 ± 0.07), and on a 2-D
quadratic whose optimum lies near an edge the sharper fit extrapolates toward
the edge and BO stays there. So Adam stays the default (docs/benchmarks.md).

Noise floor: on noiseless objectives a network that interpolates its data
drives the marginal-likelihood noise to zero; with a repeated point the
posterior then collapses everywhere and BO proposes the same point forever
(seen with L-BFGS on Branin). ``min_noise_std`` (0.01 in standardised units,
BoTorch's ``1e-4`` noise-variance floor for GPs) prevents it.

Early stopping: Adam stops when the loss has not improved by more than
``rel_tol`` (relative) for ``patience`` consecutive steps, or at the step limit;
L-BFGS when the gradient or the change of the loss is negligible, or at the limit.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
from gpytorch.mlls import MarginalLogLikelihood
from torch import Tensor

from labo.laplace import input_relevance_groups, optimize_hyperparameters
from labo.surrogates.feature_evidence import fit_feature_evidence
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
        noise_prior: Add BoTorch's GP noise prior, ``LogNormal(-4, 1)`` on the noise
            variance in standardised units, to the tuning objective (MAP-II).
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

    def steps(self, warm: bool) -> int:
        """The training step limit of a warm or cold round."""
        value = self.max_epochs_warm if warm else self.max_epochs_cold
        return _DEFAULT_STEPS[self.optimizer][int(warm)] if value is None else value


_DEFAULT_STEPS = {"lbfgs": (1000, 200), "adam": (2000, 400)}
PRIORS = ("scalar", "ard", "fanin", "function")


def fanin_prior_base(la) -> Tensor:
    """Per-tensor prior precisions proportional to the fan-in (the NTK scaling).

    A Linear layer's weight gets its ``in_features``; every other selected tensor
    (biases, non-Linear parameters) gets 1. With prior precision ``c · fan_in`` a unit's
    pre-activation has prior variance ``‖a‖² / (c · fan_in)``: O(1) whatever the width
    of the layer below or the input dimension, where one shared precision lets the
    first layer's term grow with ``d`` (and with ``‖x‖²`` towards the corners).

    Returns:
        ``(T,)`` tensor, one value per selected tensor of ``la.subset``.
    """
    fan_in = {}
    for name, module in la.network.named_modules():
        if isinstance(module, torch.nn.Linear):
            fan_in[f"{name}.weight" if name else "weight"] = float(module.in_features)
    values = [fan_in.get(s.name, 1.0) for s in la.subset.selected]
    return torch.tensor(values, dtype=la.theta_map.dtype, device=la.theta_map.device)


def function_space_scale(la, X: Tensor, base: Tensor, n_points: int = 256) -> Tensor:
    """``c`` such that the prior ``c · base`` gives a mean linearised prior variance of 1.

    The prior predictive variance of the linearised network at ``x`` is
    ``Σ_t ‖J_t(x)‖² / (c · base_t)`` (``J_t``: Jacobian w.r.t. the selected entries of
    tensor ``t`` at the current weights, averaged over outputs). It is averaged over
    ``n_points`` uniform points of the box: the unit cube when the inputs ``X`` lie in
    it (as after ``Normalize``), else their bounding box. Drawn from a fixed generator,
    so the same network gives the same ``c``.

    Args:
        la: The ``LaplaceApproximation`` (its network at the MAP weights).
        X: ``n x d`` model-space training inputs (they set the box).
        base: ``(T,)`` per-tensor base precisions (:func:`fanin_prior_base`).
        n_points: Number of box points.

    Returns:
        Scalar tensor ``c``.
    """
    from torch.func import functional_call, jacrev, vmap

    net = la.network
    lo, hi = X.min(0).values, X.max(0).values
    if bool((lo >= 0).all() and (hi <= 1).all()):
        lo, hi = torch.zeros_like(lo), torch.ones_like(hi)
    g = torch.Generator().manual_seed(0)
    U = torch.rand(n_points, X.shape[-1], generator=g, dtype=torch.float64).to(X)
    box = lo + U * (hi - lo)
    params = {k: v.detach() for k, v in net.named_parameters()}
    names = [s.name for s in la.subset.selected]

    def f(sel: dict, x: Tensor) -> Tensor:
        return functional_call(net, {**params, **sel}, (x.unsqueeze(0),)).squeeze(0)

    with torch.no_grad():
        jac = vmap(jacrev(f), in_dims=(None, 0))({k: params[k] for k in names}, box)
    total = torch.zeros((), dtype=X.dtype, device=X.device)
    for s, b in zip(la.subset.selected, base, strict=True):
        J = jac[s.name].reshape(n_points, -1, params[s.name].numel())
        if s.index is not None:
            J = J[..., s.index]
        total = total + J.pow(2).sum(-1).mean() / b
    return total.clamp_min(1e-12)


def _hyperprior(opts: FitOptions, base: Tensor | None):
    """The log hyperprior density of :class:`FitOptions`, or ``None`` (type-II ML)."""
    if opts.hyperprior_std is None and not opts.noise_prior:
        return None

    def log_density(prior: Tensor, noise: Tensor) -> Tensor:
        out = torch.zeros((), dtype=prior.dtype, device=prior.device)
        if opts.hyperprior_std is not None and base is not None:
            log_c = (prior / base).log().mean()
            out = out - 0.5 * (log_c / opts.hyperprior_std).pow(2)
        if opts.noise_prior:  # LogNormal(-4, 1) on the noise variance, as BoTorch's GP default
            log_var = 2 * noise.log()
            out = out + (-0.5 * (log_var + 4.0).pow(2) - log_var).sum()
        return out

    return log_density


def train_map(
    model: LaplaceModel, X: Tensor, Z: Tensor, opts: FitOptions, max_epochs: int, lr: float | None = None
) -> dict:
    """Full-batch training on the negative log joint; returns steps taken and the final loss.

    By L-BFGS or Adam (``opts.optimizer``), at most ``max_epochs`` steps. The network
    ends at the lowest-loss weights seen, so a warm refit never returns weights worse
    than it started from.
    """
    la = model.laplace
    net = model.network
    params = [p for p in net.parameters() if p.requires_grad]
    subset = la.subset
    train_prior = model.map_prior_precision
    prior_vec = la._expand_prior((la.prior_precision if train_prior is None else train_prior).detach())
    other_prior = float(prior_vec.mean())
    noise_var = model.z_noise_var.detach()
    weights = None
    if model.train_Yvar is not None:
        weights = 1.0 / (model.train_Yvar / model.y_scale.pow(2)).clamp_min(1e-12)
    n = X.shape[0]

    anchor = model.anchor_parameters()  # the prior's centre (zeros or the initial weights)
    theta0 = la.prior_mean

    def objective() -> Tensor:
        resid2 = (net(X) - Z).pow(2)
        data = 0.5 * (resid2 * weights).sum() if weights is not None else 0.5 * (resid2 / noise_var).sum()
        sel = torch.cat([_selected(p, s) for p, s in _selected_pairs(net, subset)])
        prior = 0.5 * (prior_vec * (sel - theta0).pow(2)).sum()
        rest = sum(
            (
                (p - anchor[name]).pow(2).sum()
                for name, p in net.named_parameters()
                if p.requires_grad and not subset.is_whole(name)
            ),
            start=torch.zeros((), dtype=X.dtype, device=X.device),
        )
        rest = rest - _partial_selected_sq(net, subset, anchor)
        return (data + prior + 0.5 * other_prior * rest) / n

    if opts.optimizer == "lbfgs":
        return _train_lbfgs(objective, params, max_epochs)
    lr = opts.lr if lr is None else lr
    opt = torch.optim.Adam(params, lr=lr)
    sched = (
        torch.optim.lr_scheduler.CosineAnnealingLR(opt, max_epochs, eta_min=lr * 1e-2)
        if opts.cosine
        else None
    )
    best, since_best, steps = float("inf"), 0, 0
    lowest, lowest_params = float("inf"), None
    for steps in range(1, max_epochs + 1):  # noqa: B007 - steps is reported
        opt.zero_grad()
        loss = objective()
        loss.backward()
        loss_value = float(loss.detach())
        if loss_value < lowest:  # the weights before this step
            lowest, lowest_params = loss_value, [p.detach().clone() for p in params]
        opt.step()
        if sched is not None:
            sched.step()
        if best == float("inf") or loss_value < best - opts.rel_tol * abs(best):
            best, since_best = loss_value, 0
        else:
            since_best += 1
            if since_best >= opts.patience:
                break
    with torch.no_grad():
        final = float(objective())
        if lowest_params is not None and lowest < final:
            for p, q in zip(params, lowest_params, strict=True):
                p.copy_(q)
            final = lowest
    return {"steps": steps, "loss": final}


def _train_lbfgs(objective, params: list[Tensor], max_steps: int) -> dict:
    """Full-batch L-BFGS (strong-Wolfe line search) from the current weights.

    The line search only accepts steps that decrease the loss, so the weights never
    end worse than they started; a non-finite loss restores the starting weights.
    """
    with torch.no_grad():
        start_loss = float(objective())
    if max_steps == 0 or not params:
        return {"steps": 0, "loss": start_loss}
    start = [p.detach().clone() for p in params]
    opt = torch.optim.LBFGS(
        params,
        lr=1.0,
        max_iter=max_steps,
        tolerance_grad=1e-9,
        tolerance_change=1e-12,
        history_size=50,
        line_search_fn="strong_wolfe",
    )

    def closure() -> Tensor:
        opt.zero_grad()
        loss = objective()
        loss.backward()
        return loss

    opt.step(closure)
    steps = int(opt.state[params[0]].get("n_iter", 0))
    with torch.no_grad():
        final = float(objective())
        if not (math.isfinite(final) and final <= start_loss):
            for p, q in zip(params, start, strict=True):
                p.copy_(q)
            final = start_loss
    return {"steps": steps, "loss": final}


def _selected_pairs(net, subset):
    params = dict(net.named_parameters())
    return [(params[s.name], s) for s in subset.selected]


def _selected(p: Tensor, s) -> Tensor:
    flat = p.reshape(-1)
    return flat if s.index is None else flat[s.index]


def _partial_selected_sq(net, subset, anchor: dict[str, Tensor]) -> Tensor:
    """Sum of squared offsets from the prior's centre of the selected entries inside partly
    selected tensors (counted in ``rest``)."""
    params = dict(net.named_parameters())
    p0 = next(net.parameters())
    total = torch.zeros((), dtype=p0.dtype, device=p0.device)
    for s in subset.selected:
        if s.index is not None:
            offset = params[s.name].reshape(-1)[s.index] - anchor[s.name].reshape(-1)[s.index]
            total = total + offset.pow(2).sum()
    return total


def fit_laplace_model(model: LaplaceModel, options: FitOptions | None = None) -> LaplaceModel:
    """MAP-train the network, fit the Laplace posterior and tune its hyperparameters.

    Warm-started when the model's network comes from a previous fit (see the
    module docstring). Records timings and iteration counts in ``model.fit_info``:
    ``seconds``, ``train_steps`` (per round; a round that reached the step limit
    did not stop early), ``lml_history``, ``prior_precision``, ``noise_std`` and
    ``warm_start``. The tuned prior precision and noise are in standardised target
    units (``model.y_scale``); ``model.likelihood.noise`` holds the noise variance in
    the outcome-transformed units.

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
    if model._conditioning is not None:
        if model.batch_shape != torch.Size([]):
            raise ValueError("Cannot refit a batched (fantasy) model; refit the model it came from.")
    warm = model.is_fitted or bool(model.fit_info.get("warm_start"))
    t0 = time.perf_counter()
    model.train()
    if opts.seed is not None and not warm:
        torch.manual_seed(opts.seed)
    with torch.no_grad():
        X = model.transform_inputs(model.train_inputs[0])
    Z = (model.train_targets - model.y_mean) / model.y_scale
    la = model.laplace
    rounds = opts.rounds_warm if warm else opts.rounds_cold
    max_epochs = opts.steps(warm)
    hyper_steps = opts.hyper_steps_warm if warm else opts.hyper_steps_cold
    train_steps, history = [], []
    fixed_noise = model.train_Yvar is not None
    if model.evidence_fit:  # network="rff": exact evidence of the last layer on its features
        known = (model.train_Yvar / model.y_scale.pow(2)).clamp_min(1e-12) if fixed_noise else None
        info = fit_feature_evidence(
            model, X, Z, max_iter=opts.evidence_iters, min_noise_std=opts.min_noise_std, noise_var=known
        )
        train_steps, history = [info["steps"]], info["lml_history"]
        rounds = 0
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
    hyperprior = _hyperprior(opts, base)
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
    model.eval()
    with torch.no_grad():
        noise = (model.z_noise_var * model.y_scale.pow(2)).mean()
        if not fixed_noise:
            model.likelihood.noise = noise.clamp_min(1e-9).reshape(1)
    model._conditioning = None
    model.fit_info = {
        "warm_start": warm,
        "seconds": time.perf_counter() - t0,
        "train_steps": train_steps,
        "lml_history": history,
        "prior_precision": la.prior_precision.detach().clone(),
        "noise_std": la.noise_std.detach().clone(),
    }
    return model


class LaplaceMarginalLogLikelihood(MarginalLogLikelihood):
    """The Laplace marginal likelihood of a ``LaplaceModel``, for ``fit_gpytorch_mll``.

    ``fit_gpytorch_mll(LaplaceMarginalLogLikelihood(model))`` dispatches (through
    BoTorch's ``custom_fit`` hook) to :func:`fit_laplace_model`. Calling the mll
    returns the log marginal likelihood per data point (as GPyTorch's mlls do).

    Args:
        likelihood_or_model: The model, or ``model.likelihood`` (GPyTorch/Ax style,
            then ``model`` is required).
        model: The ``LaplaceModel`` when the first argument is its likelihood.
    """

    def __init__(self, likelihood_or_model, model: LaplaceModel | None = None):
        if model is None:
            model = likelihood_or_model
        if not isinstance(model, LaplaceModel):
            raise TypeError(f"LaplaceMarginalLogLikelihood needs a LaplaceModel, got {type(model).__name__}.")
        super().__init__(model.likelihood, model)

    def forward(self, *args, **kwargs) -> Tensor:
        la = self.model.laplace
        return la.log_marginal_likelihood() / int(la.n_data)
