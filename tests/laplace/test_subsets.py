"""Weight subsets: resolution, the functional network, and Jacobians w.r.t. selected weights only."""

import torch
from torch import nn

from labo.laplace import AllWeights, LastLayer, WeightMask
from labo.laplace.linearization.jacobians import output_and_jacobian
from tests import _reference as ref
from tests.conftest import mlp


def test_last_layer_found_automatically_and_by_name():
    net = mlp((2, 5, 3))
    sub = LastLayer().resolve(net)
    assert [s.name for s in sub.selected] == ["2.weight", "2.bias"]
    assert sub.n_weights == 5 * 3 + 3
    assert [s.name for s in LastLayer("0").resolve(net).selected] == ["0.weight", "0.bias"]


def test_last_layer_without_bias():
    net = nn.Sequential(nn.Linear(2, 4), nn.Tanh(), nn.Linear(4, 1, bias=False)).double()
    sub = LastLayer().resolve(net)
    assert [s.name for s in sub.selected] == ["2.weight"]


def test_all_weights_skips_frozen_parameters():
    net = mlp((2, 4, 1))
    net[0].weight.requires_grad_(False)
    assert [s.name for s in AllWeights().resolve(net).selected] == ["0.bias", "2.weight", "2.bias"]


def test_weight_mask_order_and_theta():
    net = mlp((2, 4, 1))
    m0 = torch.zeros(4, 2, dtype=torch.bool)
    m0[1, 0] = m0[3, 1] = True
    mask = WeightMask({"2.bias": torch.ones(1, dtype=torch.bool), "0.weight": m0})
    sub = mask.resolve(net)
    assert [s.name for s in sub.selected] == ["0.weight", "2.bias"]  # network order
    theta = sub.get_theta(net)
    torch.testing.assert_close(theta, torch.stack([net[0].weight[1, 0], net[0].weight[3, 1], net[2].bias[0]]))


def test_functional_changes_only_selected_weights():
    net = mlp((2, 4, 1))
    m0 = torch.zeros(4, 2, dtype=torch.bool)
    m0[2, 1] = True
    sub = WeightMask({"0.weight": m0}).resolve(net)
    params = sub.parameters_from_theta(net, torch.tensor([5.0], dtype=torch.float64))
    expected = net[0].weight.detach().clone()
    expected[2, 1] = 5.0
    torch.testing.assert_close(params["0.weight"], expected)
    torch.testing.assert_close(params["2.weight"], net[2].weight.detach())


def test_full_vector_only_selected_vary():
    net = mlp((2, 4, 1))
    m0 = torch.zeros(4, 2, dtype=torch.bool)
    m0[0, 0] = True
    sub = WeightMask({"0.weight": m0}).resolve(net)
    theta = torch.randn(7, 1, dtype=torch.float64)
    full = sub.full_vector(net, theta)
    base = torch.cat([p.detach().reshape(-1) for p in net.parameters()])
    assert full.shape == (7, base.numel())
    varying = (full != base).any(0)
    assert varying.nonzero().squeeze(-1).tolist() == [0]


def test_jacobian_matches_sliced_reference_for_masks():
    net = mlp((3, 6, 4))
    g = torch.Generator().manual_seed(0)
    masks = {n: torch.rand(p.shape, generator=g) < 0.3 for n, p in net.named_parameters()}
    wm = WeightMask(masks)
    X = torch.randn(5, 3, dtype=torch.float64)
    F, J = output_and_jacobian(net, wm.resolve(net), X)
    F_ref, J_ref = ref.subset_jacobian(net, X, wm)
    torch.testing.assert_close(F, F_ref)
    torch.testing.assert_close(J, J_ref)
