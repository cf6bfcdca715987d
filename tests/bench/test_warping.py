"""Target warps of the research methods ``laplace-yj`` / ``-yjup`` / ``-copula`` and ``gp-yj``."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from scipy import stats

from labo.bench import runner
from labo.bench.problems import get_problem
from labo.bench.runner import RunSpec
from labo.bench.warping import WARPS, warp_targets, warp_targets_and_reference
from labo.exceptions import BenchmarkError

D64 = torch.float64


def _heavy_tailed(n: int = 40, seed: int = 0) -> torch.Tensor:
    """Maximisation-convention targets with a long tail of bad values (Rosenbrock-like)."""
    g = torch.Generator().manual_seed(seed)
    return -torch.exp(torch.randn(n, 1, generator=g, dtype=D64))


@pytest.mark.parametrize("kind", WARPS)
def test_every_warp_keeps_the_order_of_the_targets(kind):
    Y = torch.cat([_heavy_tailed(), _heavy_tailed(seed=1) * 3], dim=1)
    W = warp_targets(Y, kind)
    assert W.shape == Y.shape and W.dtype == Y.dtype
    for j in range(2):
        order = torch.argsort(Y[:, j])
        assert (W[order, j].diff() >= 0).all()  # monotone non-decreasing
        assert (W[order, j].diff() > 0).sum() == (Y[order, j].diff() > 0).sum()  # strictly, but for ties


def test_yeo_johnson_is_the_standardised_power_transform_at_its_likelihood_maximum():
    Y = _heavy_tailed()
    y = Y[:, 0].numpy()
    z = (y - y.mean()) / y.std()
    lam = stats.yeojohnson_normmax(z)
    assert 1.0 < lam < 6.0  # a long tail of bad values: the low side is compressed
    expected = stats.yeojohnson(z, lmbda=lam)
    assert np.allclose(warp_targets(Y, "yeo-johnson")[:, 0].numpy(), expected, atol=1e-12)
    # the warped targets are less skewed than the raw ones
    assert abs(stats.skew(expected)) < 0.2 * abs(stats.skew(y))


def test_yeo_johnson_up_never_compresses_the_good_values():
    # right-skewed targets (a few high peaks, Hartmann-like): the free exponent is below 1,
    # the constrained warp is the identity after standardisation
    g = torch.Generator().manual_seed(2)
    Y = torch.exp(2.0 * torch.randn(40, 1, generator=g, dtype=D64))
    y = Y[:, 0].numpy()
    z = (y - y.mean()) / y.std()
    assert stats.yeojohnson_normmax(z) < 1.0
    assert np.allclose(warp_targets(Y, "yeo-johnson-up")[:, 0].numpy(), z, atol=1e-12)
    assert not np.allclose(warp_targets(Y, "yeo-johnson")[:, 0].numpy(), z, atol=1e-3)


def test_copula_gives_the_normal_scores_of_the_ranks():
    Y = torch.tensor([[3.0], [1.0], [2.0], [2.0]], dtype=D64)
    expected = stats.norm.ppf((np.array([4.0, 1.0, 2.5, 2.5]) - 0.5) / 4)
    assert np.allclose(warp_targets(Y, "copula")[:, 0].numpy(), expected)


def test_constant_targets_are_centred_not_divided_by_zero():
    W = warp_targets(torch.full((5, 1), 3.0, dtype=D64), "yeo-johnson")
    assert torch.equal(W, torch.zeros(5, 1, dtype=D64))


@pytest.mark.parametrize(
    ("Y", "kind", "match"),
    [
        (torch.zeros(4, 1), "box-cox", "warp must be one of"),
        (torch.zeros(1, 1), "copula", "n >= 2"),
        (torch.zeros(4), "copula", "n x m"),
        (torch.tensor([[1.0], [float("nan")]]), "copula", "non-finite"),
    ],
)
def test_bad_input_gets_a_typed_error(Y, kind, match):
    with pytest.raises(BenchmarkError, match=match):
        warp_targets(Y, kind)


@pytest.mark.parametrize("method", ["laplace", "laplace-yj", "gp-yj"])
def test_propose_fits_the_surrogate_on_the_warped_targets(method):
    problem = get_problem("branin")
    bounds = tuple(map(tuple, problem.bounds.T.tolist()))
    spec = RunSpec("t", "branin", method, 0, bounds, budget=10, n_init=6, num_restarts=2, raw_samples=16)
    g = torch.Generator().manual_seed(3)
    X = torch.rand(8, 2, generator=g, dtype=D64)
    Y = -torch.exp(3 * X.sum(-1, keepdim=True))
    cand, _, _, model = runner.propose(spec, X, Y, q=1)
    assert cand.shape == (1, 2) and ((cand >= 0) & (cand <= 1)).all()
    W = warp_targets(Y, "yeo-johnson")  # what the model saw, after its Standardize
    assert torch.allclose(model.train_targets.reshape(-1), ((W - W.mean()) / W.std()).reshape(-1))
    assert not torch.allclose(W, (Y - Y.mean()) / Y.std(), atol=1e-2)  # the warp did something


@pytest.mark.parametrize("kind", ["yeo-johnson", "yeo-johnson-up", "yeo-johnson-pos"])
def test_the_reference_point_goes_through_the_targets_warps(kind):
    Y = torch.cat([_heavy_tailed(), -_heavy_tailed(seed=1) * 3], dim=1)
    W, mapped = warp_targets_and_reference(Y, Y[5], kind)
    assert torch.equal(W, warp_targets(Y, kind))
    assert torch.allclose(mapped, W[5], atol=1e-12)  # a data point lands where its warped value is
    # a reference below every target stays below every warped target, objective by objective
    low = Y.min(0).values - 1.0
    _, mapped_low = warp_targets_and_reference(Y, low, kind)
    assert (mapped_low < W.min(0).values).all() and torch.isfinite(mapped_low).all()


@pytest.mark.parametrize(
    ("reference", "kind", "match"),
    [
        (torch.zeros(2), "copula", "no value outside"),
        (torch.zeros(3), "yeo-johnson", "2 finite values"),
        (torch.tensor([0.0, float("inf")]), "yeo-johnson", "2 finite values"),
    ],
)
def test_bad_reference_point_gets_a_typed_error(reference, kind, match):
    with pytest.raises(BenchmarkError, match=match):
        warp_targets_and_reference(torch.randn(6, 2, dtype=D64), reference.to(D64), kind)


def test_propose_warps_every_objective_and_the_reference_point(monkeypatch):
    problem = get_problem("branincurrin")
    bounds = tuple(map(tuple, problem.bounds.T.tolist()))
    ref = problem.ref_point
    spec = RunSpec(
        "t",
        "branincurrin",
        "laplace-yj",
        0,
        bounds,
        budget=10,
        n_init=6,
        num_restarts=2,
        raw_samples=16,
        ref_point=ref,
    )
    g = torch.Generator().manual_seed(4)
    X = torch.rand(8, 2, generator=g, dtype=D64)
    Y = torch.cat([-torch.exp(3 * X.sum(-1, keepdim=True)), X[:, :1] ** 2], dim=1)
    seen = {}
    original = runner.qLogNoisyExpectedHypervolumeImprovement

    def spy(model, ref_point, **kwargs):
        seen["ref_point"] = ref_point
        return original(model, ref_point=ref_point, **kwargs)

    monkeypatch.setattr(runner, "qLogNoisyExpectedHypervolumeImprovement", spy)
    cand, _, _, model = runner.propose(spec, X, Y, q=1)
    assert cand.shape == (1, 2) and ((cand >= 0) & (cand <= 1)).all()
    W, mapped = warp_targets_and_reference(Y, torch.tensor(ref, dtype=D64), "yeo-johnson")
    assert torch.allclose(seen["ref_point"], mapped)
    fitted = model.outcome_transform.untransform(model.train_targets)[0]  # what the model saw (n x m)
    assert torch.allclose(fitted, W, atol=1e-10)


def test_the_default_method_is_the_measured_warped_configuration():
    assert replace(runner.TABLE["laplace-yj"], research=False) == runner.TABLE["laplace"]
    assert runner.TABLE["laplace"].warp == "yeo-johnson" and runner.TABLE["laplace"].fit is None


def test_yeo_johnson_pos_holds_the_exponent_at_zero_for_right_skewed_targets():
    # a few very good values (a run that found the basin): the free exponent is negative,
    # which bounds the warped scale from above; the constrained one stops at 0 (a log warp)
    g = torch.Generator().manual_seed(5)
    Y = torch.exp(3.0 * torch.randn(60, 1, generator=g, dtype=D64))
    y = Y[:, 0].numpy()
    z = (y - y.mean()) / y.std()
    assert stats.yeojohnson_normmax(z) < 0.0
    assert np.allclose(warp_targets(Y, "yeo-johnson-pos")[:, 0].numpy(), stats.yeojohnson(z, lmbda=0.0))
