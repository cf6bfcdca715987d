"""Every BoTorch acquisition function of the issue runs optimize_acqf on a fitted LaplaceModel."""

import pytest
import torch
from botorch import acquisition as A
from botorch.acquisition.active_learning import qNegIntegratedPosteriorVariance
from botorch.acquisition.joint_entropy_search import qJointEntropySearch
from botorch.acquisition.multi_objective import (
    qLogNoisyExpectedHypervolumeImprovement,
    qNoisyExpectedHypervolumeImprovement,
)
from botorch.acquisition.multi_objective.parego import qLogNParEGO
from botorch.models.transforms import Normalize, Standardize
from botorch.optim import optimize_acqf
from botorch.sampling import SobolQMCNormalSampler

from labo.acquisition import get_optimal_samples
from labo.surrogates import LaplaceModel, fit_laplace_model
from tests.surrogates.conftest import FAST, fitted_model, small_net, toy_data

BOUNDS = torch.tensor([[-1.0] * 3, [3.0] * 3], dtype=torch.float64)


def _sampler():
    return SobolQMCNormalSampler(sample_shape=torch.Size([16]), seed=0)


def _best(model):
    return float(model.train_targets.max() * model.outcome_transform.stdvs + model.outcome_transform.means)


SINGLE = {
    "ExpectedImprovement": (lambda m: A.ExpectedImprovement(m, best_f=_best(m)), 1),
    "LogExpectedImprovement": (lambda m: A.LogExpectedImprovement(m, best_f=_best(m)), 1),
    "UpperConfidenceBound": (lambda m: A.UpperConfidenceBound(m, beta=2.0), 1),
    "ProbabilityOfImprovement": (lambda m: A.ProbabilityOfImprovement(m, best_f=_best(m)), 1),
    "PosteriorMean": (lambda m: A.PosteriorMean(m), 1),
    "qExpectedImprovement": (lambda m: A.qExpectedImprovement(m, best_f=_best(m), sampler=_sampler()), 2),
    "qLogExpectedImprovement": (
        lambda m: A.qLogExpectedImprovement(m, best_f=_best(m), sampler=_sampler()),
        2,
    ),
    "qNoisyExpectedImprovement": (
        lambda m: A.qNoisyExpectedImprovement(m, X_baseline=m.train_inputs[0], sampler=_sampler()),
        3,
    ),
    "qLogNoisyExpectedImprovement": (
        lambda m: A.qLogNoisyExpectedImprovement(
            m, X_baseline=m.train_inputs[0], sampler=_sampler(), prune_baseline=True
        ),
        3,
    ),
    "qUpperConfidenceBound": (lambda m: A.qUpperConfidenceBound(m, beta=2.0, sampler=_sampler()), 2),
    "qSimpleRegret": (lambda m: A.qSimpleRegret(m, sampler=_sampler()), 2),
    "qProbabilityOfImprovement": (
        lambda m: A.qProbabilityOfImprovement(m, best_f=_best(m), sampler=_sampler()),
        2,
    ),
    "qKnowledgeGradient": (lambda m: A.qKnowledgeGradient(m, num_fantasies=4), 1),
    "qMaxValueEntropy": (
        lambda m: A.qMaxValueEntropy(m, candidate_set=BOUNDS[0] + 4 * torch.rand(64, 3, dtype=torch.float64)),
        1,
    ),
    "qLowerBoundMaxValueEntropy": (
        lambda m: A.qLowerBoundMaxValueEntropy(
            m, candidate_set=BOUNDS[0] + 4 * torch.rand(64, 3, dtype=torch.float64)
        ),
        1,  # this BoTorch's GIBBON expects q = 1 (batches via sequential greedy)
    ),
    "qJointEntropySearch": (
        lambda m: qJointEntropySearch(m, *get_optimal_samples(m, BOUNDS, num_optima=4, seed=0)),
        1,
    ),
    "qNegIntegratedPosteriorVariance": (
        lambda m: qNegIntegratedPosteriorVariance(
            m, mc_points=BOUNDS[0] + 4 * torch.rand(32, 3, dtype=torch.float64)
        ),
        2,
    ),
}


@pytest.fixture(scope="module")
def model():
    return fitted_model(n=20, m=1)


@pytest.fixture(scope="module")
def model_mo():
    return fitted_model(n=20, m=2)


def _check(model, acqf, q, **kw):
    torch.manual_seed(0)
    cand, value = optimize_acqf(
        acqf, bounds=BOUNDS, q=q, num_restarts=2, raw_samples=16, options={"maxiter": 10}, **kw
    )
    assert cand.shape == (q, 3)
    assert torch.isfinite(cand).all() and torch.isfinite(value).all()
    assert ((cand >= BOUNDS[0] - 1e-9) & (cand <= BOUNDS[1] + 1e-9)).all()
    return cand


@pytest.mark.parametrize("name", list(SINGLE))
def test_single_objective(model, name):
    factory, q = SINGLE[name]
    acqf = factory(model)
    _check(model, acqf, q)
    # gradients w.r.t. X flow and are finite
    X = (BOUNDS[0] + 4 * torch.rand(2, q, 3, dtype=torch.float64)).requires_grad_(True)
    if name == "qKnowledgeGradient":
        X = (BOUNDS[0] + 4 * torch.rand(2, q + 4, 3, dtype=torch.float64)).requires_grad_(True)
    acqf(X).sum().backward()
    assert X.grad is not None and torch.isfinite(X.grad).all()


def test_sequential_and_fixed_features(model):
    acqf = A.qLogNoisyExpectedImprovement(model, X_baseline=model.train_inputs[0], sampler=_sampler())
    _check(model, acqf, 3, sequential=True)
    cand = _check(model, acqf, 2, fixed_features={1: 0.5})
    assert torch.all(cand[:, 1] == 0.5)


MULTI = {
    "qLogNoisyExpectedHypervolumeImprovement": lambda m: qLogNoisyExpectedHypervolumeImprovement(
        m, ref_point=[0.0, 0.0], X_baseline=m.train_inputs[0][:8], sampler=_sampler()
    ),
    "qNoisyExpectedHypervolumeImprovement": lambda m: qNoisyExpectedHypervolumeImprovement(
        m, ref_point=[0.0, 0.0], X_baseline=m.train_inputs[0][:8], sampler=_sampler()
    ),
    "qLogNParEGO": lambda m: qLogNParEGO(m, X_baseline=m.train_inputs[0], sampler=_sampler()),
}


@pytest.mark.parametrize("name", list(MULTI))
def test_multi_objective(model_mo, name):
    _check(model_mo, MULTI[name](model_mo), 2)


def test_bo_loop_five_iterations():
    """fit -> qLogNEI -> optimize_acqf -> evaluate -> append -> warm refit, five times."""
    X, Y = toy_data(10)

    def objective(x):
        return (
            toy_data.__wrapped__(x)
            if hasattr(toy_data, "__wrapped__")
            else -(x - 1).pow(2).sum(-1, keepdim=True)
        )

    Y = objective(X)
    prev = None
    for _ in range(5):
        model = LaplaceModel(
            X,
            Y,
            network=small_net(3, 1),
            input_transform=Normalize(3, bounds=BOUNDS),
            outcome_transform=Standardize(1),
            warm_start=prev,
        )
        fit_laplace_model(model, FAST)
        acqf = A.qLogNoisyExpectedImprovement(model, X_baseline=X, sampler=_sampler())
        cand = _check(model, acqf, 2)
        X, Y = torch.cat([X, cand]), torch.cat([Y, objective(cand)])
        assert model.fit_info["warm_start"] == (prev is not None)
        prev = model
    assert X.shape == (20, 3)
