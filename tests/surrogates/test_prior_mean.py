"""LaplaceModel(prior_mean="init"): the weight prior centred at the network's initial weights."""

from functools import partial

import pytest
import torch

from labo.laplace import LastLayer, WeightMask, largest_variance
from labo.surrogates import FitOptions, LaplaceModel, fit_laplace_model
from labo.surrogates.fit import train_map

from .conftest import FAST, small_net, toy_data


def _model(prior_mean="init", **kw):
    X, Y = toy_data(n=20, d=3)
    return LaplaceModel(X, Y, network=small_net(3, 1), prior_mean=prior_mean, **kw)


def _flat(net):
    return torch.cat([p.detach().reshape(-1) for p in net.parameters()])


def _z_data(model):
    with torch.no_grad():
        X = model.transform_inputs(model.train_inputs[0])
    return X, (model.train_targets - model.y_mean) / model.y_scale


def test_anchor_is_the_initial_weights_through_fit_and_warm_start():
    model = _model()
    init = _flat(model.network).clone()
    torch.testing.assert_close(model.network_anchor, init)
    torch.testing.assert_close(model.laplace.prior_mean, init)  # all weights are Bayesian
    fit_laplace_model(model, FAST)
    assert not torch.equal(_flat(model.network), init)  # trained
    torch.testing.assert_close(model.network_anchor, init)
    torch.testing.assert_close(model.laplace.prior_mean, init)
    # A warm start keeps the first model's centre, not its trained weights.
    X, Y = toy_data(n=24, d=3)
    warm = LaplaceModel(X, Y, network=small_net(3, 1, seed=7), prior_mean="zero", warm_start=model)
    assert warm.prior_mean == "init"
    torch.testing.assert_close(warm.network_anchor, init)
    torch.testing.assert_close(warm.laplace.prior_mean, init)
    fit_laplace_model(warm, FAST)
    torch.testing.assert_close(warm.laplace.prior_mean, init)


def test_zero_centre_is_the_default_and_unchanged():
    X, Y = toy_data(n=20, d=3)
    model = LaplaceModel(X, Y, network=small_net(3, 1))
    assert model.prior_mean == "zero"
    assert torch.all(model.network_anchor == 0) and torch.all(model.laplace.prior_mean == 0)


def test_last_layer_prior_mean_is_the_last_layers_initial_weights():
    model = _model(weights=LastLayer())
    last = model.network[-1]
    expected = torch.cat([last.weight.detach().reshape(-1), last.bias.detach()])
    torch.testing.assert_close(model.laplace.prior_mean, expected)


def test_state_dict_round_trip_keeps_the_centre():
    model = fit_laplace_model(_model(), FAST)
    X, Y = toy_data(n=20, d=3)
    other = LaplaceModel(X, Y, network=small_net(3, 1, seed=5), prior_mean="init")
    other.load_state_dict(model.state_dict())
    torch.testing.assert_close(other.network_anchor, model.network_anchor)
    torch.testing.assert_close(other.laplace.prior_mean, model.laplace.prior_mean)


@pytest.mark.parametrize("weights", ["all", "last", "mask"])
@pytest.mark.parametrize("prior_mean", ["zero", "init"])
def test_training_objective_matches_hand_formula(weights, prior_mean):
    """train_map's negative log joint: data term + ½λ‖θ_sel − θ₀‖² + ½λ̄‖θ_rest − θ₀‖², over n."""
    net = small_net(3, 1)
    mask = WeightMask(
        {
            n: torch.rand(p.shape, generator=torch.Generator().manual_seed(1)) < 0.5
            for n, p in net.named_parameters()
        }
    )
    w = {"all": None, "last": LastLayer(), "mask": mask}[weights]
    X, Y = toy_data(n=20, d=3)
    model = LaplaceModel(X, Y, network=net, weights=w, prior_mean=prior_mean)
    anchor = _flat(model.network).clone() if prior_mean == "init" else torch.zeros_like(model.network_anchor)
    with torch.no_grad():  # move every weight away from the anchor
        for p in model.network.parameters():
            p.add_(
                0.1 * torch.randn(p.shape, dtype=p.dtype, generator=torch.Generator().manual_seed(p.numel()))
            )
    la = model.laplace
    per_tensor = torch.linspace(0.5, 2.0, la.subset.n_tensors, dtype=torch.float64)
    la.prior_precision = per_tensor
    Xz, Z = _z_data(model)
    loss = train_map(model, Xz, Z, FitOptions(), max_epochs=0)["loss"]

    # By hand: every network weight, with its own prior precision (selected) or the mean one.
    flat = _flat(model.network)
    sel = torch.zeros_like(flat, dtype=torch.bool)
    lam = torch.full_like(flat, float(la._expand_prior(per_tensor).mean()))
    start, selected = 0, {s.name: s for s in la.subset.selected}
    prior_sel = la._expand_prior(per_tensor)
    for name, p in model.network.named_parameters():
        idx = torch.arange(start, start + p.numel())
        s = selected.get(name)
        if s is not None:
            chosen = idx if s.index is None else idx[s.index]
            sel[chosen] = True
            lam[chosen] = prior_sel[s.offset : s.offset + s.size]
        start += p.numel()
    with torch.no_grad():
        data = 0.5 * (model.network(Xz) - Z).pow(2).sum() / model.z_noise_var.mean()
    expected = (data + 0.5 * (lam * (flat - anchor).pow(2)).sum()) / Xz.shape[0]
    assert loss == pytest.approx(float(expected), rel=1e-12)
    assert sel.sum() == la.n_weights


@pytest.mark.parametrize("prior_mean", ["zero", "init"])
def test_a_strong_prior_holds_the_weights_at_its_centre(prior_mean):
    model = _model(prior_mean=prior_mean)
    centre = model.network_anchor.clone()
    model.laplace.prior_precision = 1e6
    X, Z = _z_data(model)
    train_map(model, X, Z, FitOptions(optimizer="lbfgs"), max_epochs=200)
    assert (_flat(model.network) - centre).abs().max() < 1e-3
    if prior_mean == "init":
        assert centre.abs().max() > 0.1  # a real initialisation, not zeros


def test_weight_strategy_model_uses_the_masks_centre():
    strategy = partial(largest_variance, n_weights=20, noise_std=0.3)
    model = fit_laplace_model(_model(weights=strategy), FAST)
    la = model.laplace
    torch.testing.assert_close(la.prior_mean, la.subset.theta_from(model.anchor_parameters()))
    assert la.n_weights == 20


def test_bad_prior_mean_raises():
    with pytest.raises(ValueError, match="prior_mean must be one of"):
        _model(prior_mean="initial")
