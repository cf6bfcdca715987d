"""Failure-aware acquisition: keep BO away from where the objective fails.

An objective that raises, or returns NaN/inf, gives no value to model, and a
surrogate fitted on the successful points alone knows nothing of the failures:
the acquisition proposes the same failing point again and again. Two rules,
chosen by :func:`failure_rule` from the counts of successes and failures:

* ``"classifier"`` (the default, at least :data:`MIN_FAILURES_FOR_CLASSIFIER` = 2
  failures and at least one success): learn where the objective fails with a
  classification Laplace. A small 2-class network (``d``-16-16-2, tanh) is
  trained to its MAP on all evaluated points labelled failed (0) / ok (1),
  :func:`labo.laplace.fit_laplace` (``likelihood="classification"``, last-layer
  weights, ``Full``) turns it into a Bayesian classifier, and its probit
  predictive gives ``P(success | x)`` (:func:`probability_of_success`),
  a smooth, differentiable function of ``x``. :class:`SuccessWeighted` adds
  ``sum over q of log P(success | x)`` to a log-acquisition value such as
  qLogNEI's, i.e. multiplies the acquisition by the probability of success, as
  constrained BO does with a feasibility model (Gardner et al., 2014). This is
  the approach of ``examples/constrained.py``. The failed points are also passed
  as ``X_pending`` (as in the next rule), so the acquisition does not creep back
  to the very points that failed where the classifier's boundary is soft.
  ``labo.bench``'s runner also imputes the worst value seen at the failed points
  in the surrogate's data (as SMAC does): on an objective that raises for
  ``x₀ > 0.7``, the weighting and pending points alone still let about half of
  the proposals fail (the surrogate, blind to the failures, sees its best
  improvement just past the boundary); with the imputation, 0 to 2 of 19.
* ``"pending"`` (fewer than 2 failures, or no success at all): too few labels
  for a classifier, so the failed points are handed to the acquisition as
  ``X_pending``: qLogNEI treats them as already being evaluated and gains
  nothing by proposing them (or their close neighbours) again.
* ``"none"``: no failure, nothing to do.

Inputs should be scaled to the unit cube (as BoTorch's ``Normalize`` does):
the classifier's network and its prior are set up for that scale.

Example::

    la = fit_success_model(X_all, success)          # n x d, n booleans
    acqf = SuccessWeighted(qLogNoisyExpectedImprovement(model, X_baseline=X_ok), la)
    candidate, _ = optimize_acqf(acqf, bounds, q=1, num_restarts=10, raw_samples=512)
"""

from __future__ import annotations

import math

import torch
from botorch.acquisition import AcquisitionFunction
from torch import Tensor, nn

from labo.exceptions import EmptyDataError, InputShapeError, LabelError, NonFiniteInputError
from labo.laplace import Full, LaplaceApproximation, LastLayer, fit_laplace, optimize_hyperparameters

MIN_FAILURES_FOR_CLASSIFIER = 2
"""The classifier rule needs at least this many failures (and one success)."""


def failure_rule(n_ok: int, n_failed: int) -> str:
    """Which rule keeps proposals away from failures, given the counts.

    Args:
        n_ok: Number of successful evaluations.
        n_failed: Number of failed evaluations.

    Returns:
        ``"classifier"``, ``"pending"`` or ``"none"`` (see the module docstring).
    """
    if n_ok < 0 or n_failed < 0:
        raise LabelError(f"n_ok and n_failed must be non-negative, got n_ok={n_ok}, n_failed={n_failed}.")
    if n_failed == 0:
        return "none"
    if n_failed >= MIN_FAILURES_FOR_CLASSIFIER and n_ok >= 1:
        return "classifier"
    return "pending"


def _check_data(X: Tensor, success: Tensor) -> None:
    if not isinstance(X, Tensor) or X.ndim != 2:
        raise InputShapeError(f"Expected X with shape n x d, got {getattr(X, 'shape', type(X))}.")
    if X.shape[0] == 0:
        raise EmptyDataError("X has no rows: the success model needs evaluated points.")
    if not torch.isfinite(X).all():
        raise NonFiniteInputError("X contains NaN or inf; expected finite inputs (unit cube).")
    if not isinstance(success, Tensor) or success.shape != X.shape[:1]:
        raise InputShapeError(
            f"Expected success with shape ({X.shape[0]},) (one flag per row of X), "
            f"got {getattr(success, 'shape', type(success))}."
        )
    if success.dtype != torch.bool:
        raise LabelError(
            f"success must be a bool tensor (True = the evaluation succeeded), got {success.dtype}."
        )
    if success.all() or not success.any():
        raise LabelError(
            f"success needs both outcomes to learn from, got {int(success.sum())} successes "
            f"of {len(success)}; see failure_rule for what to do instead."
        )


def _train_map(net: nn.Module, X: Tensor, labels: Tensor, prior: Tensor, steps: int) -> None:
    """Full-batch Adam on cross-entropy (sum) + ½ λ ‖θ‖², λ the prior precision."""
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(steps):
        opt.zero_grad()
        nll = nn.functional.cross_entropy(net(X), labels, reduction="sum")
        loss = nll + 0.5 * prior * sum(p.pow(2).sum() for p in net.parameters())
        loss.backward()
        opt.step()


def fit_success_model(X: Tensor, success: Tensor, steps: int = 500, seed: int = 0) -> LaplaceApproximation:
    """A classification Laplace of ``P(success | x)``, trained on all evaluated points.

    A ``d``-16-16-2 tanh network is trained to its MAP (full-batch Adam, ``steps``
    steps) with prior precision 0.1, its last-layer Laplace posterior (``Full``)
    is fitted and the prior precision tuned by the marginal likelihood; then
    once more from there with the tuned prior (the MAP depends on the prior and
    the tuned prior on the MAP), as ``examples/constrained.py`` does.

    Args:
        X: ``n x d`` evaluated inputs (unit cube), failed and successful.
        success: ``n`` booleans, ``True`` where the evaluation succeeded.
        steps: Adam steps per round.
        seed: Seed of the network's initial weights.

    Returns:
        The fitted :class:`~labo.laplace.LaplaceApproximation` (class 1 = success).
    """
    _check_data(X, success)
    d = X.shape[-1]
    with torch.random.fork_rng(devices=[]):  # seeded initial weights; the caller's RNG stays untouched
        torch.manual_seed(seed)
        net = nn.Sequential(nn.Linear(d, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 2))
    net = net.to(dtype=X.dtype, device=X.device)
    labels = success.long()
    prior = torch.tensor(0.1, dtype=X.dtype, device=X.device)
    for _ in range(2):
        _train_map(net, X, labels, prior, steps)
        la = fit_laplace(
            net,
            X,
            labels,
            likelihood="classification",
            weights=LastLayer(),
            structure=Full(),
            prior_precision=prior,
        )
        optimize_hyperparameters(la)
        prior = la.prior_precision.detach()
    return la


def probability_of_success(la: LaplaceApproximation, X: Tensor) -> Tensor:
    """``P(success | x)`` of a 2-class Laplace, differentiable in ``X``.

    Args:
        la: A classification Laplace with 2 outputs (class 1 = success).
        X: ``batch_shape x q x d`` inputs.

    Returns:
        ``batch_shape x q`` probabilities (see :func:`log_probability_of_success`).
    """
    return log_probability_of_success(la, X).exp()


def log_probability_of_success(la: LaplaceApproximation, X: Tensor) -> Tensor:
    """``log P(success | x)`` of a 2-class Laplace, differentiable in ``X``.

    With two classes only the logit difference ``g = f₁ − f₀`` matters; its
    linearised predictive is Gaussian, and the probit approximation gives
    ``σ(μ_g / sqrt(1 + π v_g / 8))``. The variance of ``g`` needs the covariance
    between the two logits, which ``la.predictive_probs`` (marginal variances
    only) leaves out. ``log σ`` is computed as ``logsigmoid``: finite and with a
    useful gradient even where the classifier is all but certain of failure.

    Args:
        la: A classification Laplace with 2 outputs (class 1 = success).
        X: ``batch_shape x q x d`` inputs.

    Returns:
        ``batch_shape x q`` log-probabilities.
    """
    if X.ndim < 2:
        raise InputShapeError(f"Expected X with shape batch_shape x q x d, got {tuple(X.shape)}.")
    mean, cov = la.predictive(X)  # batch x q x 2, batch x q x 2 x q x 2
    if mean.shape[-1] != 2:
        raise InputShapeError(f"Expected a 2-class model (failed, ok), got {mean.shape[-1]} outputs.")
    idx = torch.arange(X.shape[-2], device=X.device)
    c = cov[..., idx, :, idx, :].movedim(0, -3)  # advanced indexing puts q first: batch x q x 2 x 2
    mu = mean[..., 1] - mean[..., 0]
    var = c[..., 1, 1] + c[..., 0, 0] - 2 * c[..., 0, 1]
    return nn.functional.logsigmoid(mu / (1 + math.pi * var.clamp_min(0) / 8).sqrt())


class SuccessWeighted(AcquisitionFunction):
    """``log α(X) + Σ_q log P(success | x)``: a log-acquisition weighted by the chance of success.

    Args:
        log_acqf: An acquisition function whose values are logarithms (qLogNEI,
            qLogEI, qLogNEHVI, ...), ``batch_shape x q x d -> batch_shape``.
        success_model: The 2-class Laplace of :func:`fit_success_model`.
    """

    def __init__(
        self,
        log_acqf: AcquisitionFunction,
        success_model: LaplaceApproximation,
    ) -> None:
        super().__init__(model=log_acqf.model)
        self.log_acqf = log_acqf
        self.success_model = success_model

    def forward(self, X: Tensor) -> Tensor:
        """``batch_shape x q x d`` -> ``batch_shape``."""
        return self.log_acqf(X) + log_probability_of_success(self.success_model, X).sum(-1)
