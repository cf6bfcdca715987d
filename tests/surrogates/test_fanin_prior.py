"""Fan-in (NTK-scaled) priors and their tuning: tied factor, hyperpriors, function-space pin."""

from __future__ import annotations

import pytest
import torch
from torch.func import functional_call, jacrev

from labo.laplace import Kron, fit_laplace, optimize_hyperparameters
from labo.surrogates import FitOptions, LaplaceModel, fit_laplace_model
from labo.surrogates.networks import default_network
from labo.surrogates.priors import fanin_prior_base, function_space_scale

D64 = torch.float64


def _net(d=3, width=5):
    torch.manual_seed(0)
    return default_network(d, 1, width=width, dtype=D64)


def test_fanin_base_is_in_features_for_weights_and_one_for_the_rest():
    la = fit_laplace(_net(), torch.rand(10, 3, dtype=D64), torch.rand(10, 1, dtype=D64), structure=Kron())
    assert fanin_prior_base(la).tolist() == [3.0, 1.0, 5.0, 1.0, 5.0, 1.0]


def test_tied_prior_keeps_the_ratios_and_matches_a_brute_force_search():
    X, Y = torch.rand(15, 3, dtype=D64), torch.rand(15, 1, dtype=D64)
    la = fit_laplace(_net(), X, Y, structure=Kron(), noise_std=0.3)
    base = fanin_prior_base(la)
    la.prior_precision = base.clone()
    optimize_hyperparameters(la, n_steps=300, lr=0.05, tune_noise=False, tie_prior=True)
    ratio = la.prior_precision / base
    assert torch.allclose(ratio, ratio[0].expand_as(ratio))
    # the tuned factor maximises the LML over c along the tied direction
    cs = torch.logspace(-3, 3, 601, dtype=D64) * ratio[0]
    lmls = torch.stack([la.log_marginal_likelihood(prior_precision=c * base) for c in cs])
    best = cs[lmls.argmax()]
    assert float(ratio[0]) == pytest.approx(float(best), rel=0.05)


def test_hyperprior_pulls_the_factor_towards_its_centre():
    X, Y = torch.rand(15, 3, dtype=D64), torch.rand(15, 1, dtype=D64)
    la = fit_laplace(_net(), X, Y, structure=Kron(), noise_std=0.3)
    base = fanin_prior_base(la)
    tuned = {}
    for name, hp in {"ml": None, "map": lambda p, s: -50.0 * (p / base).log().mean().pow(2)}.items():
        la.prior_precision = base.clone()
        optimize_hyperparameters(la, n_steps=300, lr=0.05, tune_noise=False, tie_prior=True, hyperprior=hp)
        tuned[name] = float((la.prior_precision / base)[0].log().abs())
    assert tuned["map"] < tuned["ml"]
    with pytest.raises(ValueError, match="tie_prior"):
        optimize_hyperparameters(la, tie_prior=True, prior_groups=torch.zeros(la.n_weights, dtype=torch.long))


def test_function_space_scale_against_explicit_jacobians():
    net = _net()
    X = torch.rand(10, 3, dtype=D64)
    la = fit_laplace(net, X, torch.rand(10, 1, dtype=D64), structure=Kron())
    base = fanin_prior_base(la)
    c = function_space_scale(la, X, base, n_points=64)
    g = torch.Generator().manual_seed(0)
    box = torch.rand(64, 3, generator=g, dtype=torch.float64)
    params = {k: v.detach() for k, v in net.named_parameters()}
    J = jacrev(lambda p: functional_call(net, p, (box,)))(params)
    var = sum(J[k].reshape(64, -1).pow(2).sum(-1) / b for k, b in zip(params, base, strict=True))
    assert float(c) == pytest.approx(float(var.mean()), rel=1e-10)
    la.prior_precision = c * base  # the prior predictive then averages 1 over the box
    assert float((var / c).mean()) == pytest.approx(1.0)


@pytest.mark.parametrize("prior", ["fanin", "function"])
def test_model_fits_with_fanin_priors(prior):
    X = torch.rand(20, 4, dtype=D64)
    Y = torch.sin(4 * X[:, :1])
    opts = FitOptions(
        prior=prior, max_epochs_cold=60, hyper_steps_cold=20, hyperprior_std=1.0, noise_prior=True
    )
    model = fit_laplace_model(LaplaceModel(X, Y, network="mlp"), opts)
    p = model.laplace.prior_precision
    assert p.shape == (6,)
    ratio = p / torch.tensor([4.0, 1, 64, 1, 64, 1], dtype=D64)
    assert torch.allclose(ratio, ratio[0].expand_as(ratio))
    if prior == "function":
        assert model.map_prior_precision is not None and model.map_prior_precision.dim() == 0
    with pytest.raises(ValueError, match="prior"):
        FitOptions(prior="nope")
    with pytest.raises(ValueError, match="hyperprior_std"):
        FitOptions(hyperprior_std=-1.0)


def test_sphere_map_puts_every_input_on_the_unit_sphere():
    from labo.surrogates.networks import SphereMap

    d = 7
    X = torch.cat([torch.rand(50, d, dtype=D64), torch.randint(0, 2, (20, d)).to(D64)])
    Zs = SphereMap(d)(X)
    assert Zs.shape == (70, d + 1)
    assert torch.allclose(Zs.norm(dim=-1), torch.ones(70, dtype=D64))
    # the box centre goes to the pole (0, ..., 0, 1); inverse stereographic projection by formula
    assert torch.allclose(SphereMap(d)(torch.full((1, d), 0.5, dtype=D64)), torch.eye(d + 1, dtype=D64)[-1:])
    u = (2 * X[0] - 1) * (3 / d) ** 0.5
    expected = torch.cat([2 * u, (1 - u @ u).reshape(1)]) / (1 + u @ u)
    assert torch.allclose(Zs[0], expected)
