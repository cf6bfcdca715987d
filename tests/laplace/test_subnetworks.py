"""Subnetwork selection strategies (labo/laplace/subnetworks.py) against brute force.

Random per-weight masks through every structure are covered by test_laplace.py
and test_subsets.py; here the masks come from the strategies, and the posterior
over a strategy's mask is checked once more against the dense reference.
"""

import functools

import pytest
import torch
from torch import nn

from labo.exceptions import NonFiniteInputError, WeightSubsetError
from labo.laplace import (
    Diagonal,
    Full,
    Functional,
    LastLayer,
    WeightMask,
    by_module,
    fit_laplace,
    largest_magnitude,
    largest_variance,
    last_layer,
    random_weights,
    union,
    union_of,
)
from tests import _reference as ref
from tests.conftest import make_problem, mlp


def flat_mask(net, wm: WeightMask) -> torch.Tensor:
    return ref.param_mask(net, wm)


def brute_top(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Top-k positions by a Python sort: larger score first, earlier position on ties."""
    order = sorted(range(scores.numel()), key=lambda i: (-float(scores[i]), i))
    out = torch.zeros(scores.numel(), dtype=torch.bool)
    out[order[:k]] = True
    return out


def all_params(net) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in net.parameters()])


# ---------------------------------------------------------------- counts, ranking, ties


@pytest.mark.parametrize("k", [1, 7, 33])
def test_largest_magnitude_is_brute_force_top_k(k):
    net = mlp((3, 6, 2))
    wm = largest_magnitude(net, n_weights=k)
    assert int(flat_mask(net, wm).sum()) == k
    assert torch.equal(flat_mask(net, wm), brute_top(all_params(net).abs(), k))


def test_ties_go_to_the_earlier_weight_and_count_is_exact():
    net = mlp((2, 3, 1))
    with torch.no_grad():
        for p in net.parameters():
            p.fill_(0.5)
        net[2].weight[0, 2] = -2.0  # the one strict winner, in the last layer
    wm = largest_magnitude(net, n_weights=4)
    P = all_params(net).numel()
    expected = torch.zeros(P, dtype=torch.bool)
    expected[[0, 1, 2]] = True  # first three of the tied 0.5s: 0.weight[0, :], 0.weight[1, 0]
    expected[6 + 3 + 2] = True  # 2.weight[0, 2] after 0.weight (6) and 0.bias (3)
    assert torch.equal(flat_mask(net, wm), expected)


def test_fraction_rounds_and_selects_at_least_one():
    net = mlp((3, 6, 2))
    P = all_params(net).numel()  # 18 + 6 + 12 + 2 = 38
    assert int(flat_mask(net, largest_magnitude(net, fraction=0.25)).sum()) == round(0.25 * P)
    assert int(flat_mask(net, largest_magnitude(net, fraction=1e-6)).sum()) == 1
    assert bool(flat_mask(net, random_weights(net, fraction=1.0)).all())


def test_random_weights_reproducible_uniform_count_and_skip_frozen():
    net = mlp((3, 6, 2))
    net[0].bias.requires_grad_(False)
    a = random_weights(net, n_weights=10, generator=torch.Generator().manual_seed(1))
    b = random_weights(net, n_weights=10, generator=torch.Generator().manual_seed(1))
    c = random_weights(net, n_weights=10, generator=torch.Generator().manual_seed(2))
    assert torch.equal(flat_mask(net, a), flat_mask(net, b))
    assert not torch.equal(flat_mask(net, a), flat_mask(net, c))
    assert "0.bias" not in a.masks and int(flat_mask(net, a).sum()) == 10
    # every trainable weight is drawn at some point (32 trainable, 60 draws of 10), the frozen bias never
    g = torch.Generator().manual_seed(0)
    hits = sum(flat_mask(net, random_weights(net, n_weights=10, generator=g)).long() for _ in range(60))
    assert int(hits[18:24].sum()) == 0 and bool((torch.cat([hits[:18], hits[24:]]) > 0).all())


@pytest.mark.parametrize("likelihood,sizes", [("regression", (3, 6, 2)), ("classification", (3, 5, 3))])
def test_largest_variance_matches_dense_diagonal_laplace(likelihood, sizes):
    net, X, Y = make_problem(likelihood, sizes, n=10)
    prior, noise = torch.tensor(0.8, dtype=torch.float64), torch.tensor(0.3, dtype=torch.float64)
    from labo.laplace import AllWeights

    H = ref.dense_precision(net, X, Y, likelihood, AllWeights(), "diagonal", prior, noise)
    var = 1.0 / H.diagonal()
    wm = largest_variance(
        net, X, Y, n_weights=9, likelihood=likelihood, prior_precision=prior, noise_std=noise
    )
    assert torch.equal(flat_mask(net, wm), brute_top(var, 9))


def test_by_module_and_last_layer():
    net = nn.Sequential(nn.Linear(2, 4), nn.Tanh(), nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 1))).double()
    wm = by_module(net, names=["2", "0.bias"])
    assert set(wm.masks) == {"0.bias", "2.0.weight", "2.0.bias", "2.1.weight", "2.1.bias"}
    assert all(bool(m.all()) for m in wm.masks.values())
    ll = last_layer(net)
    assert set(ll.masks) == {"2.1.weight", "2.1.bias"}
    X = torch.randn(4, 2, dtype=torch.float64)
    from labo.laplace.linearization.jacobians import output_and_jacobian

    _, J_mask = output_and_jacobian(net, ll.resolve(net), X)
    _, J_last = output_and_jacobian(net, LastLayer().resolve(net), X)
    torch.testing.assert_close(J_mask, J_last)
    assert set(last_layer(net, name="2.0").masks) == {"2.0.weight", "2.0.bias"}


def test_union_is_elementwise_or_and_union_of_combines_strategies():
    net = mlp((3, 6, 2))
    a = largest_magnitude(net, n_weights=5)
    b = random_weights(net, n_weights=8, generator=torch.Generator().manual_seed(0))
    u = union(a, b)
    torch.testing.assert_close(flat_mask(net, u), flat_mask(net, a) | flat_mask(net, b))
    strat = union_of(last_layer, functools.partial(largest_magnitude, n_weights=5))
    expected = flat_mask(net, last_layer(net)) | flat_mask(net, a)
    assert torch.equal(flat_mask(net, strat(net, None, None)), expected)


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({}, "exactly one of n_weights= or fraction="),
        ({"n_weights": 3, "fraction": 0.1}, "exactly one"),
        ({"n_weights": 0}, r"n_weights must be an int in \[1, 38\].*got 0"),
        ({"n_weights": 39}, r"\[1, 38\].*got 39"),
        ({"n_weights": 2.0}, "got 2.0"),
        ({"n_weights": True}, "got True"),
        ({"fraction": 0.0}, r"fraction must be a number in \(0, 1\], got 0.0"),
        ({"fraction": 1.5}, "got 1.5"),
    ],
)
@pytest.mark.parametrize("strategy", [largest_magnitude, random_weights])
def test_bad_counts_raise_typed_errors(strategy, kwargs, match):
    with pytest.raises(WeightSubsetError, match=match):
        strategy(mlp((3, 6, 2)), **kwargs)


def test_bad_names_data_and_masks_raise_typed_errors():
    net = mlp((3, 6, 2))
    with pytest.raises(WeightSubsetError, match=r"'nope' is neither a module.*modules are \['0', '1', '2'\]"):
        by_module(net, names=["nope"])
    with pytest.raises(WeightSubsetError, match="non-empty list"):
        by_module(net, names="0")
    with pytest.raises(WeightSubsetError, match="hold no trainable parameter"):
        by_module(net, names=["1"])  # the Tanh
    with pytest.raises(WeightSubsetError, match="needs the training data.*X=None"):
        largest_variance(net, n_weights=3)
    with pytest.raises(WeightSubsetError, match=r"shapes \(6, 3\) and \(3, 6\)"):
        union(WeightMask({"0.weight": torch.ones(6, 3, dtype=torch.bool)}),
              WeightMask({"0.weight": torch.ones(3, 6, dtype=torch.bool)}))  # fmt: skip
    with pytest.raises(WeightSubsetError, match="at least one"):
        union()
    with pytest.raises(WeightSubsetError, match="argument 1 must be a WeightMask, got dict"):
        union(last_layer(net), {"2.bias": torch.ones(2, dtype=torch.bool)})
    with torch.no_grad():
        net[0].weight[0, 0] = float("nan")
    with pytest.raises(NonFiniteInputError, match="1 NaN/inf"):
        largest_magnitude(net, n_weights=3)
    for p in net.parameters():
        p.requires_grad_(False)
    with pytest.raises(WeightSubsetError, match="no parameter requiring grad"):
        random_weights(net, n_weights=1)


# ------------------------------------------------------------ masked Linear Jacobians (masked_jacobians.py)


def test_masked_linear_jacobian_matches_sliced_full_jacobian_with_x_gradients():
    from labo.laplace.linearization.masked_jacobians import masked_linear_jacobian

    net = mlp((3, 6, 5, 2))
    wm = union(
        random_weights(net, n_weights=20, generator=torch.Generator().manual_seed(4)),
        by_module(net, names=["4.bias"]),  # a whole tensor next to partial ones
    )
    X = torch.randn(7, 3, dtype=torch.float64, requires_grad=True)
    F, J = masked_linear_jacobian(net, wm.resolve(net), X)
    F_ref, J_ref = ref.subset_jacobian(net, X, wm)
    torch.testing.assert_close(F, F_ref)
    torch.testing.assert_close(J, J_ref)
    W = torch.randn(J.shape, dtype=torch.float64)
    (g,) = torch.autograd.grad((J * W).sum() + F.sum(), X)
    (g_ref,) = torch.autograd.grad((J_ref * W).sum() + F_ref.sum(), X)
    torch.testing.assert_close(g, g_ref)


def test_masked_linear_jacobian_applies_only_to_partly_selected_linear_tensors():
    from labo.laplace import AllWeights
    from labo.laplace.linearization.masked_jacobians import masked_linear_plan

    net = mlp((3, 6, 2))
    assert masked_linear_plan(net, AllWeights().resolve(net)) is None  # jacrev wastes nothing here
    assert masked_linear_plan(net, largest_magnitude(net, n_weights=5).resolve(net)) is not None

    class Scaled(nn.Module):  # a parameter outside any nn.Linear: the jacrev path
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(3, 2).double()
            self.gain = nn.Parameter(torch.ones(2, dtype=torch.float64))

        def forward(self, x):
            return self.lin(x) * self.gain

    other = Scaled()
    wm = WeightMask({"gain": torch.tensor([True, False]), "lin.weight": torch.rand(2, 3) < 0.5})
    assert masked_linear_plan(other, wm.resolve(other)) is None
    from labo.laplace.linearization.jacobians import output_and_jacobian

    X = torch.randn(4, 3, dtype=torch.float64)
    torch.testing.assert_close(
        output_and_jacobian(other, wm.resolve(other), X)[1], ref.subset_jacobian(other, X, wm)[1]
    )


# ---------------------------------------------------------------- the posterior over a selected subnetwork


@pytest.mark.parametrize("structure", [Full, Functional, Diagonal])
@pytest.mark.parametrize("likelihood,sizes", [("regression", (2, 8, 8, 1)), ("classification", (3, 6, 3))])
def test_subnetwork_posterior_is_dense_sub_block_and_predictive_matches(structure, likelihood, sizes):
    net, X, Y = make_problem(likelihood, sizes, n=12)
    prior, noise = torch.tensor(0.7, dtype=torch.float64), torch.tensor(0.4, dtype=torch.float64)
    strategy = union_of(
        functools.partial(largest_variance, n_weights=6, likelihood=likelihood, noise_std=noise),
        functools.partial(largest_magnitude, n_weights=6),
    )
    wm = strategy(net, X, Y)
    la = fit_laplace(net, X, Y, likelihood, wm, structure(), prior, noise)
    # precision = (full-network GGN)[mask, mask] / σ² + prior restricted to the mask
    sel = flat_mask(net, wm)
    from labo.laplace import AllWeights

    H_all = ref.dense_precision(net, X, Y, likelihood, AllWeights(), "full", prior, noise)
    H_sub = H_all[sel][:, sel]
    if structure is Diagonal:
        H_sub = torch.diag(H_sub.diagonal())
    else:
        torch.testing.assert_close(la.posterior_precision().precision(), H_sub)
    X_new = torch.randn(4, sizes[0], dtype=torch.float64, requires_grad=True)
    mean, cov = la.predictive(X_new)
    mean_ref, cov_ref = ref.dense_predictive(net, X_new, wm, H_sub)
    torch.testing.assert_close(mean, mean_ref)
    torch.testing.assert_close(cov, cov_ref)
    (g,) = torch.autograd.grad(cov.sum() + mean.sum(), X_new)
    (g_ref,) = torch.autograd.grad(cov_ref.sum() + mean_ref.sum(), X_new)
    torch.testing.assert_close(g, g_ref)
    samples = la.sample_parameters(50, generator=torch.Generator().manual_seed(0))
    varies = (samples != all_params(net)).any(0)
    assert not bool(varies[~sel].any()) and bool(varies[sel].all())


# ---------------------------------------------------------------- inside LaplaceModel (surrogates layer)


def test_laplace_model_with_strategy_selects_after_training():
    from labo.surrogates import FitOptions, LaplaceModel, fit_laplace_model
    from tests.surrogates.conftest import small_net, toy_data

    FAST = FitOptions(max_epochs_cold=100, max_epochs_warm=30, hyper_steps_cold=10, hyper_steps_warm=5)
    X, Y = toy_data(n=20, d=3)
    strategy = functools.partial(largest_variance, n_weights=40, noise_std=0.1)
    model = LaplaceModel(X, Y, network=small_net(3, 1), weights=strategy)
    with pytest.raises(Exception, match="before fitting"):
        model.posterior(X[:2])
    fit_laplace_model(model, FAST)
    la = model.laplace
    assert isinstance(la.weights, WeightMask) and la.n_weights == 40 and isinstance(la.structure, Full)
    # the mask is the strategy's choice on the final (trained) network and the model's z-space data
    Z = (model.train_targets - model.y_mean) / model.y_scale
    expected = strategy(model.network, model.transform_inputs(X), Z)
    assert torch.equal(flat_mask(model.network, la.weights), flat_mask(model.network, expected))
    X_new = torch.rand(5, 3, dtype=torch.float64, requires_grad=True)
    post = model.posterior(X_new)
    _, cov_z = la.predictive(model.transform_inputs(X_new))
    torch.testing.assert_close(post.variance[..., 0], cov_z[:, 0, :, 0].diagonal() * model.y_scale**2)
    post.variance.sum().backward()
    assert X_new.grad is not None and bool(torch.isfinite(X_new.grad).all())
    refit = LaplaceModel(X, Y, network=small_net(3, 1), weights=strategy, warm_start=model)
    fit_laplace_model(refit, FAST)  # warm start: selects again after one training round
    assert refit.laplace.n_weights == 40 and refit.fit_info["warm_start"]


def test_laplace_model_rejects_bad_strategies():
    from labo.surrogates import LaplaceModel, fit_laplace_model
    from tests.surrogates.conftest import FAST, small_net, toy_data

    X, Y = toy_data(n=10, d=3)
    with pytest.raises(WeightSubsetError, match="WeightSubset or a strategy callable, got 3"):
        LaplaceModel(X, Y, network=small_net(3, 1), weights=3)
    model = LaplaceModel(X, Y, network=small_net(3, 1), weights=lambda net, X, Y: "0.weight")
    with pytest.raises(WeightSubsetError, match="must return a WeightMask, got str"):
        fit_laplace_model(model, FAST)
