"""Thompson sampling with Laplace function samples: optima of the samples, bounds, transforms."""

import pytest
import torch

from labo.acquisition import model_function_samples, optimize_function_samples, thompson_candidates
from labo.exceptions import HyperparameterError, InputShapeError
from labo.laplace import Functional
from tests.surrogates.conftest import fitted_model

BOUNDS2 = torch.tensor([[-1.0, -1.0], [3.0, 3.0]], dtype=torch.float64)


@pytest.fixture(scope="module")
def model_2d():
    return fitted_model(n=20, d=2, m=1)


def _grid(bounds, k):
    axes = [torch.linspace(float(lo), float(hi), k, dtype=torch.float64) for lo, hi in bounds.T]
    return torch.cartesian_prod(*axes)


@pytest.mark.parametrize("maximize", [True, False])
def test_optimum_of_each_sample_beats_a_dense_grid(model_2d, maximize):
    samples = model_function_samples(model_2d, 3, torch.Generator().manual_seed(0))
    X_opt, vals = optimize_function_samples(samples, BOUNDS2, maximize=maximize, seed=0)
    assert X_opt.shape == (3, 2) and vals.shape == (3,)
    assert ((X_opt >= BOUNDS2[0]) & (X_opt <= BOUNDS2[1])).all()
    grid = _grid(BOUNDS2, 121)
    with torch.no_grad():
        on_grid = samples(grid.unsqueeze(-2))[..., 0, 0]  # 3 x 121²
        at_opt = samples.paired(X_opt.unsqueeze(-2))[..., 0, 0]
    torch.testing.assert_close(at_opt, vals)
    best = on_grid.max(-1).values if maximize else on_grid.min(-1).values
    # the grid spacing is 1/30: a gradient optimiser must match or beat the grid's best
    if maximize:
        assert (vals >= best - 1e-6).all()
    else:
        assert (vals <= best + 1e-6).all()
    # the samples differ, so do their optima
    assert torch.cdist(X_opt, X_opt).fill_diagonal_(1.0).min() > 1e-4


def test_thompson_candidates_in_bounds_reproducible_and_optimal(model_2d):
    bounds = torch.tensor([[0.0, -0.5], [1.0, 2.0]], dtype=torch.float64)
    X = thompson_candidates(model_2d, bounds, q=4, generator=torch.Generator().manual_seed(1))
    assert X.shape == (4, 2)
    assert ((X >= bounds[0]) & (X <= bounds[1])).all()
    X2 = thompson_candidates(model_2d, bounds, q=4, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(X, X2)
    # the candidates maximise the samples the helper drew (same generator stream)
    samples = model_function_samples(model_2d, 4, torch.Generator().manual_seed(1))
    with torch.no_grad():
        grid_best = samples(_grid(bounds, 81).unsqueeze(-2))[..., 0, 0].max(-1).values
        at_X = samples.paired(X.unsqueeze(-2))[..., 0, 0]
    assert (at_X >= grid_best - 1e-6).all()


def test_model_samples_match_posterior_in_original_space(model_2d):
    """Input/outcome transforms and the internal standardisation are undone exactly."""
    X = torch.tensor([[0.1, 0.2], [2.0, -0.5], [1.0, 1.0]], dtype=torch.float64)
    n = 4000
    samples = model_function_samples(model_2d, n, torch.Generator().manual_seed(2))
    with torch.no_grad():
        y = samples(X)[..., 0]  # n x 3
        post = model_2d.posterior(X)
    mean, var = post.mean[..., 0], post.variance[..., 0]
    assert ((y.mean(0) - mean).abs() <= 5 * (var / n).sqrt()).all()
    assert ((y.var(0) - var).abs() <= 5 * var * (2 / n) ** 0.5).all()
    # x-gradients flow through the transforms
    few = model_function_samples(model_2d, 2, torch.Generator().manual_seed(3))
    x = X.expand(2, 3, 2).clone().requires_grad_(True)
    few.paired(x).sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_multi_output_needs_objective():
    model = fitted_model(n=15, d=2, m=2, structure=Functional())
    bounds = BOUNDS2
    with pytest.raises(InputShapeError, match="objective"):
        thompson_candidates(model, bounds, q=2, generator=torch.Generator().manual_seed(0))
    X = thompson_candidates(
        model,
        bounds,
        q=2,
        objective=lambda Y: Y[..., 0] - Y[..., 1],
        generator=torch.Generator().manual_seed(0),
    )
    assert X.shape == (2, 2) and ((X >= bounds[0]) & (X <= bounds[1])).all()


def test_bad_input(model_2d):
    with pytest.raises(InputShapeError, match="bounds"):
        thompson_candidates(model_2d, torch.zeros(2, 3, dtype=torch.float64))
    with pytest.raises(InputShapeError, match="lower < upper"):
        thompson_candidates(model_2d, BOUNDS2.flip(0))
    with pytest.raises(HyperparameterError, match="q must"):
        thompson_candidates(model_2d, BOUNDS2, q=0)
    samples = model_function_samples(model_2d, 2)
    with pytest.raises(HyperparameterError, match="num_restarts"):
        optimize_function_samples(samples, BOUNDS2, num_restarts=0)
    cond = model_2d.condition_on_observations(
        torch.rand(3, 2, 2, dtype=torch.float64), torch.rand(3, 2, 1, dtype=torch.float64)
    )
    with pytest.raises(NotImplementedError, match="batched conditioned"):
        model_function_samples(cond, 2)


def test_conditioned_model_samples_match_its_posterior(model_2d):
    """Samples of a model conditioned on (pending) points follow the conditioned posterior."""
    Xp = torch.tensor([[0.5, 0.5], [2.0, 1.0]], dtype=torch.float64)
    cond = model_2d.condition_on_observations(Xp, model_2d.posterior(Xp).mean.detach() + 1.0)
    X = torch.tensor([[0.5, 0.6], [1.5, 2.5]], dtype=torch.float64)
    n = 4000
    with torch.no_grad():
        y = model_function_samples(cond, n, torch.Generator().manual_seed(5))(X)[..., 0]
        post = cond.posterior(X)
    mean, var = post.mean[..., 0], post.variance[..., 0]
    assert ((y.mean(0) - mean).abs() <= 5 * (var / n).sqrt()).all()
    assert ((y.var(0) - var).abs() <= 5 * var * (2 / n) ** 0.5).all()
    # and differ from the unconditioned model's near the conditioning points
    assert (post.variance < model_2d.posterior(X).variance).all()
