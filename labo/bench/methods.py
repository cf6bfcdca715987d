"""The runner's methods: one table, the product's surrogates apart from research variants.

Product methods (:data:`METHODS`, what ``labo run`` / ``labo bench`` offer) are the
surrogates labo ships:

- ``laplace``: :class:`~labo.surrogates.LaplaceModel` with its default configuration
  (``network="rff"`` on the kernel's evidence, with the exact posterior of that kernel
  averaged over 16 lengthscale vectors for ``2d ≤ n < 30d``, ``n ≤ 200`` rows), warm-started from
  the previous iteration's model (``fit_laplace_model``), on targets warped by a fitted
  Yeo-Johnson transform (:func:`labo.bench.warping.warp_targets`, each objective alone,
  the hypervolume reference point through the same warps): the model and the
  acquisition work on the warped scale, regret is measured on the raw values. Measured
  as ``laplace-yj``; the same model on the raw targets is ``laplace-lsavg-2d20``.
- ``laplace-mlp``: the MLP d-64-64-m with every weight Bayesian (``network="mlp"``), the
  default before ``"rff"``.
- ``laplace-rbf``: ``LaplaceModel(network="rbf")``, Gaussian RBF features around
  learnable centres, then a tanh layer; its two linear layers are Bayesian.
- ``gp``: BoTorch's ``SingleTaskGP`` with its defaults, fitted by ``fit_gpytorch_mll``.
- ``sobol``: the next points of the run's scrambled Sobol sequence.

Research variants (:data:`RESEARCH_METHODS`) are the options of the studies in
``docs/research-log.md``; benchmark scripts (``benchmarks/bo_suite.py --methods ...``)
pass them to the runner, the CLI does not offer them:

- ``laplace-ll`` / ``laplace-kron`` / ``laplace-functional``: the MLP's main variants
  (last-layer weights; Kron over all weights; the function-space posterior).
- ``laplace-lbfgs``: the MLP with its network trained by L-BFGS instead of Adam
  (``FitOptions(optimizer="lbfgs")``).
- ``laplace-ard``: the MLP with one prior precision per input for the first layer's
  weights (``FitOptions(prior="ard")``).
- ``laplace-init``: the MLP with its weight prior centred at the network's initial
  weights instead of zero (``LaplaceModel(prior_mean="init")``).
- ``laplace-rbf-all``: the RBF network with every weight Bayesian (``AllWeights()``),
  the centres and the lengthscale too (under Kron, past 250 rows, as one full GGN block,
  ``Kron(rest="auto")``, through the closed form of ``labo.laplace.linearization.rbf``; see
  ``docs/research-log.md``, "The centres as one full Kron block").
- ``laplace-rff``: the default's network tuned on its features' own evidence
  (``FitOptions(evidence="features")``): the default until 2026-12-06, under whose name
  its studies are stored (``docs/benchmarks.md``).
- ``laplace-rff-sc`` / ``laplace-rff-sc-orth`` / ``laplace-rff2048-sc``: that network
  with sin/cos feature pairs (a prior variance of exactly 1 everywhere), with
  orthogonal random frequencies, or with 2048 features
  (:func:`labo.surrogates.networks.rff_network`'s ``kind`` / ``orthogonal`` /
  ``n_features``), on the features' evidence as they were measured.
- ``laplace-rff256``: the same with 256 instead of 1024 random features (a quarter of
  the acquisition's per-evaluation work, a coarser approximation of the kernel).
- ``laplace-rff-sc-orth-kernel``: sin/cos pairs with orthogonal frequencies on the
  default's (the kernel's) evidence: a closer approximation of the same kernel. This
  variant, ``laplace-rff4096-kernel``, the Matérn ones and ``laplace-rff-kernel(-pin1)``
  keep the posterior they were measured with, the features' own
  (``FitOptions(posterior="features")``), so that their stored studies stay reproducible.
- ``laplace-rff4096-kernel``: 4096 instead of 1024 features on the kernel's evidence (the
  same hyperparameters, a closer approximation of the kernel; up to 250 rows the
  function-space posterior costs ``O(n D)`` per candidate row).
- ``laplace-rff-matern52`` / ``laplace-rff-matern32``: the default with Matérn-5/2 /
  Matérn-3/2 random features (Student-t frequencies) on the evidence of that Matérn
  kernel (:class:`labo.surrogates.networks.RandomFourierFeatures`'s ``kernel``), the
  kernel family SingleTaskGP uses.
- ``laplace-exact-kernel``: the default's hyperparameters (its kernel-evidence fit), then
  the exact GP of the kernel its features approximate instead of the features' posterior
  (:func:`labo.bench.exact_kernel.exact_kernel_gp`): the infinite-width limit of the default,
  to measure what the finite feature set costs in BO before the core gets such a posterior.
- ``laplace-kernel``: the same posterior from the core at the MAP-II lengthscales alone,
  ``FitOptions(posterior="kernel", lengthscale_samples=0)``
  (:mod:`labo.surrogates.kernel_posterior`): a ``LaplaceModel`` whose posterior is the
  exact GP of its features' kernel (any number of outputs, fantasies, known noise); the
  default from 2026-12-07 until the lengthscale average, measured under this name. The
  variants measured before the average (this one, ``laplace-exact-kernel``,
  ``laplace-matern52-kernel``, ``laplace-kernel-choice``, ``laplace-saas``) keep the MAP-II
  lengthscales alone, so that their stored studies stay reproducible.
- ``laplace-matern52-kernel``: ``laplace-kernel`` with the Matérn-5/2 kernel (features,
  evidence and the exact kernel posterior) instead of the RBF.
- ``laplace-kernel-choice``: evidence-based model choice between the two: every iteration
  fits the default (RBF) and ``laplace-matern52-kernel``, each warm-started from its own
  previous fit, and proposes with the one whose maximised log evidence plus log
  hyperprior density (``fit_info["hyper_log_posterior"]``) is larger.
- ``laplace-lsavg``: ``laplace-kernel`` with its kernel posterior averaged over 16
  lengthscale vectors drawn from their Laplace marginal at every number of rows
  (``FitOptions(lengthscale_samples=16)`` without the four row limits,
  :class:`labo.surrogates.averaged_posterior.AveragedKernelPosterior`).
- ``laplace-lsavg-2d``: ``laplace-lsavg`` for ``2d ≤ n < 30d`` rows up to 200 rows,
  ``laplace-kernel`` outside (``FitOptions(lengthscale_samples=16,
  lengthscale_samples_rows_per_input=2.0, lengthscale_samples_max_rows_per_input=30.0)``
  and ``lengthscale_samples_max_rows=200``): below 2d the lengthscale marginal is too wide
  to average usefully, from 30d the members nearly agree, beyond 200 rows 16 members cost
  up to 16 times one (``lengthscale_samples_min_rows=0``). The default from 2026-12-07
  until the 20-row floor, measured under this name (no measured run of it fitted more than
  200 rows).
- ``laplace-lsavg-2d20``: ``laplace-lsavg-2d`` with the average also waiting for 20 rows
  (``FitOptions(lengthscale_samples_min_rows=20)``): the MAP-II posterior for the first
  iterations in low dimension, ``laplace-lsavg-2d`` wherever ``2d ≥ 20``. The default's
  configuration, measured under this name.
- ``laplace-lsavg-anti``: the default with its lengthscale draws in antithetic pairs
  (``FitOptions(lengthscale_antithetic=True)``): the members centred on the MAP-II
  lengthscales exactly (experiment: less Monte Carlo noise in the average).
- ``laplace-yj`` / ``laplace-yjup`` / ``laplace-copula``: the default model on warped
  targets (``laplace-yj`` is the configuration of ``laplace``, measured under this name)
  (:mod:`labo.bench.warping`: a fitted Yeo-Johnson transform, the same with its exponent
  at least 1 so that only the bad values are compressed, or the normal scores of the
  ranks); ``laplace-yj0``: the exponent at least 0, so the best values are never squeezed
  against the ceiling a negative exponent puts on the warped scale;
  ``gp-yj`` / ``gp-yjup``: SingleTaskGP on the same warped targets. These
  run the acquisition on the warped scale; with several objectives each is warped alone
  and the hypervolume reference point goes through the same warps (the Yeo-Johnson
  kinds only); ``laplace-yjraw`` fits the same Yeo-Johnson warp
  as the model's outcome transform (:class:`labo.surrogates.warping.YeoJohnson`), so its
  posterior, and qLogNEI's improvement, are in raw units; ``laplace-yjlin`` the same with
  the posterior linearised at its mean (a Gaussian in raw units, the delta method).
- ``laplace-saas``: ``laplace-kernel`` with the SAAS prior on its lengthscales
  (``FitOptions(lengthscale_prior="saas")``).
- ``laplace-rff-pin1``: the features' evidence with the prior precision pinned at 1
  (``FitOptions(evidence="features", evidence_prior_precision=1.0)``).
- ``laplace-rff-kernel``: tuned on the evidence of the RBF kernel the features
  approximate, with the features' posterior (``FitOptions(evidence="kernel",
  posterior="features")``): the default from 2026-12-06 to 2026-12-07, under whose name
  its studies are stored; ``laplace-rff-kernel-pin1`` the same with the prior precision
  pinned at 1.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from labo.laplace import AllWeights, Functional, Kron, LastLayer
from labo.surrogates import FitOptions
from labo.surrogates.networks import rff_network


@dataclass(frozen=True)
class Method:
    """How the runner builds and fits one method's surrogate.

    Attributes:
        model: ``"laplace"`` (a ``LaplaceModel``), ``"gp"`` (``SingleTaskGP``),
            ``"exact-kernel"`` (a fitted ``LaplaceModel``'s hyperparameters in the exact GP
            of its features' kernel, research), ``"choice"`` (the best-supported of a
            ``family`` of ``LaplaceModel`` fits, research) or ``"sobol"`` (no model).
        options: Keyword arguments of ``LaplaceModel`` (``network``, ``weights``, ...).
        fit: ``FitOptions`` of ``fit_laplace_model``; ``None``: its defaults.
        research: A research variant (benchmark scripts only), not a product method.
        network: ``(d, m, dtype) -> nn.Module``, the network of a variant that needs the
            input size to build it (passed as ``LaplaceModel(network=...)``); ``None``:
            ``options`` names it, or the default.
        family: With ``model="choice"``: network factories like ``network``; every
            iteration fits one ``LaplaceModel`` per member (each warm-started from its own
            previous fit) and keeps the one with the largest
            ``fit_info["hyper_log_posterior"]`` (evidence-based model choice, issue 23 §2f).
        warp: A monotone warp of the targets before the fit (research): the surrogate
            models the warped values and the acquisition runs on their scale
            (:func:`labo.bench.warping.warp_targets`); ``None``: the raw targets.
        outcome: The surrogate's outcome transform: ``"standardize"`` (``Standardize(m)``)
            or ``"yeo-johnson"`` (:class:`labo.surrogates.warping.YeoJohnson`: the model
            fits warped targets, its posterior and so the acquisition are in raw units),
            or ``"yeo-johnson-lin"`` (the same, linearised: a Gaussian posterior).
    """

    model: str = "laplace"
    options: dict[str, Any] = field(default_factory=dict)
    fit: FitOptions | None = None
    research: bool = False
    network: Callable[..., Any] | None = None
    family: tuple[Callable[..., Any], ...] = ()
    warp: str | None = None
    outcome: str = "standardize"


def _rff(**kwargs) -> Callable[..., Any]:
    """A factory of ``rff_network(d, m, **kwargs)`` for a research variant."""
    return lambda d, m, dtype: rff_network(d, m, dtype=dtype, **kwargs)


_MLP = {"network": "mlp"}
# The rff research variants measured before the default moved to the kernel's evidence.
_FEATURES = FitOptions(evidence="features")
# ... and those measured on the kernel's evidence with the features' posterior.
_FEATURE_POST = FitOptions(posterior="features")
# The exact kernel posterior at the MAP-II lengthscales alone: the default until the
# lengthscale average (research variants measured before it keep it).
_MAP_LS = FitOptions(posterior="kernel", lengthscale_samples=0)
TABLE: MappingProxyType[str, Method] = MappingProxyType(
    {
        "laplace": Method(warp="yeo-johnson"),
        "laplace-mlp": Method(options=_MLP),
        "laplace-rbf": Method(options={"network": "rbf"}),
        "gp": Method(model="gp"),
        "sobol": Method(model="sobol"),
        # research variants (docs/research-log.md)
        "laplace-ll": Method(options={**_MLP, "weights": LastLayer()}, research=True),
        "laplace-kron": Method(options={**_MLP, "structure": Kron()}, research=True),
        "laplace-functional": Method(options={**_MLP, "structure": Functional()}, research=True),
        "laplace-lbfgs": Method(options=_MLP, fit=FitOptions(optimizer="lbfgs"), research=True),
        "laplace-ard": Method(options=_MLP, fit=FitOptions(prior="ard"), research=True),
        "laplace-init": Method(options={**_MLP, "prior_mean": "init"}, research=True),
        "laplace-rbf-all": Method(options={"network": "rbf", "weights": AllWeights()}, research=True),
        "laplace-rff": Method(options={"network": "rff"}, fit=_FEATURES, research=True),
        "laplace-rff-sc": Method(network=_rff(kind="sincos"), fit=_FEATURES, research=True),
        "laplace-rff-sc-orth": Method(
            network=_rff(kind="sincos", orthogonal=True), fit=_FEATURES, research=True
        ),
        "laplace-rff2048-sc": Method(
            network=_rff(n_features=2048, kind="sincos"), fit=_FEATURES, research=True
        ),
        "laplace-rff256": Method(network=_rff(n_features=256), fit=_FEATURES, research=True),
        "laplace-rff-sc-orth-kernel": Method(
            network=_rff(kind="sincos", orthogonal=True), fit=_FEATURE_POST, research=True
        ),
        "laplace-rff4096-kernel": Method(network=_rff(n_features=4096), fit=_FEATURE_POST, research=True),
        "laplace-exact-kernel": Method(model="exact-kernel", fit=_MAP_LS, research=True),
        "laplace-kernel": Method(fit=_MAP_LS, research=True),
        "laplace-matern52-kernel": Method(network=_rff(kernel="matern52"), fit=_MAP_LS, research=True),
        "laplace-lsavg": Method(
            fit=FitOptions(
                lengthscale_samples=16,
                lengthscale_samples_rows_per_input=0.0,
                lengthscale_samples_min_rows=0,
                lengthscale_samples_max_rows_per_input=None,
                lengthscale_samples_max_rows=None,
            ),
            research=True,
        ),
        "laplace-lsavg-2d": Method(
            fit=FitOptions(
                lengthscale_samples=16,
                lengthscale_samples_rows_per_input=2.0,
                lengthscale_samples_min_rows=0,
                lengthscale_samples_max_rows_per_input=30.0,
            ),
            research=True,
        ),
        "laplace-lsavg-2d20": Method(fit=FitOptions(lengthscale_samples_min_rows=20), research=True),
        "laplace-lsavg-anti": Method(fit=FitOptions(lengthscale_antithetic=True), research=True),
        "laplace-yj": Method(warp="yeo-johnson", research=True),
        "laplace-yjup": Method(warp="yeo-johnson-up", research=True),
        "laplace-yj0": Method(warp="yeo-johnson-pos", research=True),
        "laplace-copula": Method(warp="copula", research=True),
        "laplace-yjraw": Method(outcome="yeo-johnson", research=True),
        "laplace-yjlin": Method(outcome="yeo-johnson-lin", research=True),
        "gp-yj": Method(model="gp", warp="yeo-johnson", research=True),
        "gp-yjup": Method(model="gp", warp="yeo-johnson-up", research=True),
        "laplace-saas": Method(
            fit=FitOptions(lengthscale_prior="saas", lengthscale_samples=0), research=True
        ),
        "laplace-kernel-choice": Method(
            model="choice", family=(_rff(), _rff(kernel="matern52")), fit=_MAP_LS, research=True
        ),
        "laplace-rff-matern52": Method(network=_rff(kernel="matern52"), fit=_FEATURE_POST, research=True),
        "laplace-rff-matern32": Method(network=_rff(kernel="matern32"), fit=_FEATURE_POST, research=True),
        "laplace-rff-pin1": Method(
            fit=FitOptions(evidence="features", evidence_prior_precision=1.0), research=True
        ),
        "laplace-rff-kernel": Method(fit=_FEATURE_POST, research=True),
        "laplace-rff-kernel-pin1": Method(
            fit=FitOptions(evidence_prior_precision=1.0, posterior="features"), research=True
        ),
    }
)
# The product's methods (the CLI's choices) and the research variants (benchmark scripts).
METHODS = tuple(name for name, method in TABLE.items() if not method.research)
RESEARCH_METHODS = tuple(name for name, method in TABLE.items() if method.research)
