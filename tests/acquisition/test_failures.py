"""Failure-aware acquisition: the rule by counts, the success classifier, the weighted acquisition."""

import pytest
import torch
from botorch.acquisition import qLogNoisyExpectedImprovement
from botorch.models import SingleTaskGP

from labo.acquisition import SuccessWeighted, failure_rule, fit_success_model, probability_of_success
from labo.exceptions import InputShapeError, LabelError


@pytest.fixture(scope="module")
def data():
    """20 points of the unit square; evaluations fail right of x0 = 0.7."""
    X = torch.rand(20, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    success = X[:, 0] <= 0.7
    return X, success


@pytest.fixture(scope="module")
def success_model(data):
    return fit_success_model(*data, steps=300)


@pytest.mark.parametrize(
    ("n_ok", "n_failed", "rule"),
    [(5, 0, "none"), (5, 1, "pending"), (0, 4, "pending"), (5, 2, "classifier"), (1, 9, "classifier")],
)
def test_failure_rule_by_counts(n_ok, n_failed, rule):
    assert failure_rule(n_ok, n_failed) == rule


def test_classifier_separates_the_failing_region(data, success_model):
    X, _ = data
    grid = torch.tensor([[0.2, 0.5], [0.4, 0.1], [0.95, 0.5], [0.9, 0.9]], dtype=torch.float64)
    p = probability_of_success(success_model, grid.unsqueeze(-2)).squeeze(-1)  # 4 x 1 x 2 -> 4
    assert p.shape == (4,)
    assert (p[:2] > 0.7).all() and (p[2:] < 0.3).all()


def test_weighted_value_is_log_acq_plus_log_success_and_differentiable(data, success_model):
    X, success = data
    Y = -(X[success] - 0.5).pow(2).sum(-1, keepdim=True)
    gp = SingleTaskGP(X[success], Y)
    torch.manual_seed(0)
    log_acqf = qLogNoisyExpectedImprovement(gp, X_baseline=X[success], prune_baseline=False)
    acqf = SuccessWeighted(log_acqf, success_model)
    Xq = torch.rand(5, 2, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    Xq.requires_grad_(True)
    value = acqf(Xq)
    assert value.shape == (5,)
    with torch.no_grad():
        # by hand: the 2 x 2 joint of the logits at each point, probit of their difference
        mean, cov = success_model.predictive(Xq)
        expected = log_acqf(Xq).clone()
        for b in range(5):
            for i in range(2):
                c = cov[b, i, :, i, :]
                var = c[0, 0] + c[1, 1] - 2 * c[0, 1]
                mu = mean[b, i, 1] - mean[b, i, 0]
                expected[b] += torch.sigmoid(mu / torch.sqrt(1 + torch.pi * var / 8)).log()
    torch.testing.assert_close(value.detach(), expected)
    (grad,) = torch.autograd.grad(value.sum(), Xq)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_bad_input_raises_typed_errors(data):
    X, success = data
    with pytest.raises(LabelError, match="both outcomes"):
        fit_success_model(X, torch.ones(20, dtype=torch.bool))
    with pytest.raises(LabelError, match="bool"):
        fit_success_model(X, success.long())
    with pytest.raises(InputShapeError, match="one flag per row"):
        fit_success_model(X, success[:5])
    with pytest.raises(LabelError, match="non-negative"):
        failure_rule(-1, 2)
