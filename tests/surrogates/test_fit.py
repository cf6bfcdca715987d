"""MAP training by L-BFGS and the noise floor of the marginal-likelihood tuning."""

import math

import pytest
import torch

from labo.laplace import Full, optimize_hyperparameters
from labo.laplace.marglik import log_marginal_likelihood
from labo.surrogates import FitOptions, LaplaceModel, fit_laplace_model
from labo.surrogates.fit import train_map

from .conftest import fitted_model, small_net


def _z_data(model):
    with torch.no_grad():
        X = model.transform_inputs(model.train_inputs[0])
    return X, (model.train_targets - model.y_mean) / model.y_scale


def _objective_grad_norm(model, X, Z) -> float:
    """Gradient norm of train_map's objective, recomputed by hand (all weights Bayesian)."""
    la = model.laplace
    lam = float(la.prior_precision.mean())
    params = list(model.network.parameters())
    resid = model.network(X) - Z
    loss = (
        0.5 * resid.pow(2).sum() / model.z_noise_var.mean() + 0.5 * lam * sum(p.pow(2).sum() for p in params)
    ) / X.shape[0]
    grads = torch.autograd.grad(loss, params)
    return float(torch.cat([g.reshape(-1) for g in grads]).norm())


def test_lbfgs_goes_further_than_adam_in_the_same_steps():
    """From the same fitted network and step budget, L-BFGS ends at a lower loss and a
    smaller gradient of the negative log joint than Adam."""
    model = fitted_model(n=30)
    X, Z = _z_data(model)
    state = {k: v.clone() for k, v in model.network.state_dict().items()}
    adam = train_map(model, X, Z, FitOptions(optimizer="adam"), max_epochs=300)
    adam_grad = _objective_grad_norm(model, X, Z)
    model.network.load_state_dict(state)
    lbfgs = train_map(model, X, Z, FitOptions(optimizer="lbfgs"), max_epochs=300)
    lbfgs_grad = _objective_grad_norm(model, X, Z)
    assert lbfgs["loss"] < adam["loss"]
    assert lbfgs_grad < adam_grad
    assert 0 < lbfgs["steps"] <= 300 and 0 < adam["steps"] <= 300


def test_lbfgs_never_ends_worse_than_it_started():
    model = fitted_model(n=30)
    X, Z = _z_data(model)
    lbfgs = FitOptions(optimizer="lbfgs")
    start = train_map(model, X, Z, lbfgs, max_epochs=0)
    assert start["steps"] == 0
    info = train_map(model, X, Z, lbfgs, max_epochs=5)
    assert info["loss"] <= start["loss"]
    assert train_map(model, X, Z, lbfgs, max_epochs=0)["loss"] == pytest.approx(info["loss"], rel=1e-12)


def test_step_limits_default_per_optimizer_and_are_validated():
    assert FitOptions().steps(warm=False) == 2000 and FitOptions().steps(warm=True) == 400
    assert FitOptions(optimizer="lbfgs").steps(warm=False) == 1000
    assert FitOptions(optimizer="lbfgs").steps(warm=True) == 200
    assert FitOptions(max_epochs_cold=7).steps(warm=False) == 7
    with pytest.raises(ValueError, match="optimizer"):
        FitOptions(optimizer="sgd")
    with pytest.raises(ValueError, match="max_epochs_warm"):
        FitOptions(max_epochs_warm=-1)
    with pytest.raises(ValueError, match="min_noise_std"):
        FitOptions(min_noise_std=float("nan"))


def _full_laplace():
    """A trained network's Full Laplace posterior (deterministic: fit again on each call)."""
    return fitted_model(n=25, structure=Full()).laplace


def test_noise_floor_binds_only_below_the_unconstrained_optimum():
    free = _full_laplace()
    optimize_hyperparameters(free, n_steps=500, tol=0.0)
    sigma = float(free.noise_std)
    # A floor below the optimum changes nothing.
    low = _full_laplace()
    optimize_hyperparameters(low, n_steps=500, tol=0.0, min_noise_std=0.2 * sigma)
    assert float(low.noise_std) == pytest.approx(sigma, rel=2e-2)
    # A floor above it: the noise ends at the floor (the marginal likelihood decreases above it).
    high = _full_laplace()
    optimize_hyperparameters(high, n_steps=500, tol=0.0, min_noise_std=3 * sigma)
    assert 3 * sigma <= float(high.noise_std) <= 3.05 * sigma
    # And the prior precision is the best one for that noise: a 1-D grid around it.
    lam = float(high.prior_precision)
    grid = torch.tensor([0.8, 0.9, 1.0, 1.1, 1.25], dtype=torch.float64) * lam
    values = [float(log_marginal_likelihood(high, g, high.noise_std)) for g in grid]
    assert max(values) == pytest.approx(values[2], abs=1e-3)


def test_noise_floor_is_validated():
    la = _full_laplace()
    for bad in (-1.0, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="min_noise_std"):
            optimize_hyperparameters(la, n_steps=1, min_noise_std=bad)


def test_repeated_noiseless_points_keep_the_noise_at_the_floor():
    """On interpolated, repeated data (an L-BFGS fit interpolates) the tuned noise would go
    to zero; the floor holds it."""
    X = torch.rand(8, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    X = torch.cat([X, X[:1].repeat(4, 1)])
    Y = torch.sin(3 * X).sum(-1, keepdim=True)
    fits = {}
    for floor in (0.0, 1e-2):
        model = LaplaceModel(X, Y, network=small_net(2, 1))
        fits[floor] = fit_laplace_model(model, FitOptions(optimizer="lbfgs", min_noise_std=floor))
    assert float(fits[0.0].fit_info["noise_std"]) < 1e-3
    assert float(fits[1e-2].fit_info["noise_std"]) >= 1e-2
    post = fits[1e-2].posterior(torch.rand(64, 2, dtype=torch.float64))
    assert torch.isfinite(post.variance).all() and (post.variance > 0).all()
    assert math.isfinite(float(fits[1e-2].laplace.log_marginal_likelihood()))


def test_ard_prior_finds_the_relevant_input():
    """prior="ard": one precision per input column of the first layer; on y = sin(3 x_0) the
    irrelevant inputs get a larger precision (a smaller prior scale) than x_0."""
    from labo.laplace import input_relevance_groups

    g = torch.Generator().manual_seed(0)
    X = torch.rand(40, 4, dtype=torch.float64, generator=g)
    Y = torch.sin(3 * X[:, :1]) + 0.01 * torch.randn(40, 1, dtype=torch.float64, generator=g)
    ard = FitOptions(prior="ard", max_epochs_cold=600, max_epochs_warm=100, hyper_steps_warm=20)
    model = fit_laplace_model(LaplaceModel(X, Y, network=small_net(4, 1)), ard)
    la = model.laplace
    groups = input_relevance_groups(la)
    prior = la.prior_precision
    assert prior.shape == (la.n_weights,)
    per_group = torch.stack([prior[groups == k][0] for k in range(int(groups.max()) + 1)])
    for k in range(per_group.numel()):
        assert torch.all(prior[groups == k] == per_group[k])
    assert float(per_group[0]) < float(per_group[1:4].min())
    # A warm refit keeps the grouped prior.
    refit = fit_laplace_model(LaplaceModel(X, Y, network=small_net(4, 1, seed=5), warm_start=model), ard)
    assert refit.laplace.prior_precision.shape == (la.n_weights,)


def test_bad_prior_option():
    with pytest.raises(ValueError, match="prior"):
        FitOptions(prior="per-weight")
