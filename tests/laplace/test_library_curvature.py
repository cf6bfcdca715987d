"""Curvature served by curvlinops and BackPACK (labo.laplace.structures.library_curvature) against labo's
torch.func paths and the dense references of tests/_reference.py, in float64 to 1e-8.

* curvlinops' K-FAC factors of Linear layers equal labo's (regression with one and several
  outputs, fixed per-row noise, classification); forcing the library for a Linear network
  gives the same log marginal likelihood and gradients w.r.t. prior precision and noise.
* Convolutions (Conv1d, Conv2d; Sequential and residual networks) get K-FAC-expand factors
  equal to a hand-computed reference (patches read off index by index, output gradients by
  ``jacrev``), and the Kron marginal likelihood, its gradients and the predictive variance
  equal the dense posterior built from those factors.
* BackPACK's GGN diagonal equals the diagonal of the dense ``jacrev`` GGN, and the Diagonal
  marginal likelihood and its gradients equal the dense reference.
"""

import subprocess
import sys

import pytest
import torch
from torch import nn

from labo.laplace import AllWeights, Diagonal, Kron, LastLayer, WeightMask, by_module, fit_laplace
from labo.laplace.structures import curvature as curvature_module
from labo.laplace.structures import library_curvature as lib
from labo.laplace.structures.curvature import ggn, kfac_factors, kfac_layer_plan
from tests import _reference as ref
from tests.conftest import make_problem

TOL = {"rtol": 1e-8, "atol": 1e-10}


class ResidualConv(nn.Module):
    """Conv1d stem, residual Conv1d block, mean over positions, Linear head (not a Sequential)."""

    def __init__(self, d: int = 7, channels: int = 3, K: int = 1):
        super().__init__()
        self.stem = nn.Conv1d(1, channels, kernel_size=3, padding=1)
        self.block = nn.Conv1d(channels, channels, kernel_size=3, padding=1, dilation=1)
        self.head = nn.Linear(channels, K)

    def forward(self, x):
        h = torch.tanh(self.stem(x.unsqueeze(-2)))
        h = h + torch.tanh(self.block(h))
        return self.head(h.mean(-1))


def conv1d_seq(d: int = 7, K: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Unflatten(1, (1, d)),
        nn.Conv1d(1, 2, kernel_size=3, stride=2, padding=1),
        nn.Tanh(),
        nn.Flatten(),
        nn.Linear(2 * ((d + 1) // 2), 3),
        nn.Tanh(),
        nn.Linear(3, K),
    )


def conv2d_seq(d: int = 9, K: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Unflatten(1, (1, 3, 3)), nn.Conv2d(1, 2, kernel_size=2), nn.Tanh(), nn.Flatten(), nn.Linear(8, K)
    )


NETWORKS = {"conv1d": (conv1d_seq, 7), "residual": (ResidualConv, 7), "conv2d": (conv2d_seq, 9)}
LIKELIHOODS = [("regression", 1), ("regression", 3), ("classification", 3)]


def conv_problem(kind, likelihood, K, n=6, seed=0):
    make, d = NETWORKS[kind]
    torch.manual_seed(seed)
    net = make(d=d, K=K).double()
    g = torch.Generator().manual_seed(seed + 1)
    X = torch.randn(n, d, generator=g, dtype=torch.float64)
    if likelihood == "regression":
        Y = torch.randn(n, K, generator=g, dtype=torch.float64)
    else:
        Y = torch.randint(0, K, (n,), generator=g)
    return net, X, Y


def layer_names(net, weights=None):
    subset = (weights or AllWeights()).resolve(net)
    return [name for name, _ in kfac_layer_plan(net, subset)[0]], subset


# ---------------------------------------------------------------------------------- K-FAC


@pytest.mark.parametrize("likelihood,K", LIKELIHOODS)
@pytest.mark.parametrize("noisy", [False, True])
def test_curvlinops_linear_factors_equal_labo(likelihood, K, noisy):
    if noisy and likelihood != "regression":
        pytest.skip("noise_var is for regression")
    net, X, Y = make_problem(likelihood, (3, 6, 5, K), n=10)
    names, _ = layer_names(net)
    v = 0.2 + torch.rand(X.shape[0], K, dtype=torch.float64) if noisy else None
    labo_factors = kfac_factors(net, names, likelihood, X, K, v)
    library = lib.curvlinops_kfac_factors(net, names, likelihood, X, K, v)
    for (A1, G1), (A2, G2) in zip(labo_factors, library, strict=True):
        torch.testing.assert_close(A2, A1, **TOL)
        torch.testing.assert_close(G2, G1, **TOL)


@pytest.mark.parametrize("kind", list(NETWORKS))
@pytest.mark.parametrize("likelihood,K", LIKELIHOODS)
def test_conv_kfac_factors_equal_expand_reference(kind, likelihood, K):
    net, X, Y = conv_problem(kind, likelihood, K)
    names, _ = layer_names(net)
    n_conv = sum(isinstance(dict(net.named_modules())[n], (nn.Conv1d, nn.Conv2d)) for n in names)
    assert n_conv >= 1 and len(names) == len([m for m in net.modules() if lib.is_kfac_conv(m)]) + len(
        [m for m in net.modules() if isinstance(m, nn.Linear)]
    )
    factors = kfac_factors(net, names, likelihood, X, K)
    blocks = ref.dense_kfac_expand_blocks(net, X, Y, likelihood, AllWeights())
    assert len(blocks) == len(factors)
    for (A, G), (_, A_ref, G_ref) in zip(factors, blocks, strict=True):
        torch.testing.assert_close(A, A_ref, **TOL)
        torch.testing.assert_close(G, G_ref, **TOL)


def test_conv_kfac_with_fixed_noise_equals_reference():
    net, X, Y = conv_problem("residual", "regression", 2)
    v = 0.2 + torch.rand(X.shape[0], 2, dtype=torch.float64)
    names, _ = layer_names(net)
    factors = kfac_factors(net, names, "regression", X, 2, v)
    blocks = ref.dense_kfac_expand_blocks(net, X, Y, "regression", AllWeights(), noise_var=v)
    for (A, G), (_, A_ref, G_ref) in zip(factors, blocks, strict=True):
        torch.testing.assert_close(A, A_ref, **TOL)
        torch.testing.assert_close(G, G_ref, **TOL)


def _lml_and_grads(la, prior, noise):
    p = prior.clone().requires_grad_(True)
    s = noise.clone().requires_grad_(True)
    lml = la.log_marginal_likelihood(p, s)
    grads = torch.autograd.grad(lml, [p, s], allow_unused=True)
    return lml.detach(), [torch.zeros(()) if g is None else g for g in grads]


def _dense_lml_and_grads(net, X, Y, likelihood, weights, C_fn, prior, noise):
    p = prior.clone().requires_grad_(True)
    s = noise.clone().requires_grad_(True)
    H = C_fn(p, s)
    lml = ref.dense_log_marginal_likelihood(net, X, Y, likelihood, weights, H, p, s)
    grads = torch.autograd.grad(lml, [p, s], allow_unused=True)
    return lml.detach(), [torch.zeros(()) if g is None else g for g in grads]


@pytest.mark.parametrize("kind", list(NETWORKS))
@pytest.mark.parametrize("likelihood,K", LIKELIHOODS)
def test_conv_kron_marglik_and_predictive_equal_dense(kind, likelihood, K):
    net, X, Y = conv_problem(kind, likelihood, K)
    weights = AllWeights()
    subset = weights.resolve(net)
    prior = 0.5 + torch.rand(subset.n_tensors, dtype=torch.float64)  # per tensor: not tied in a block
    noise = torch.tensor(0.4, dtype=torch.float64)
    la = fit_laplace(net, X, Y, likelihood, weights, Kron(), prior, noise)
    assert la.curvature.rest_index.numel() == 0  # every weight is in a Kronecker block
    blocks = ref.dense_kfac_expand_blocks(net, X, Y, likelihood, weights)

    def precision(p, s):
        scale = s.pow(-2) if likelihood == "regression" else torch.ones((), dtype=torch.float64)
        return ref.kron_precision_from_blocks(
            blocks, subset.n_weights, ref.expand_prior(net, weights, p), scale
        )

    value, grads = _lml_and_grads(la, prior, noise)
    value_ref, grads_ref = _dense_lml_and_grads(net, X, Y, likelihood, weights, precision, prior, noise)
    torch.testing.assert_close(value, value_ref, **TOL)
    for g, g_ref in zip(grads, grads_ref, strict=True):
        torch.testing.assert_close(g, g_ref, **TOL)
    X_new = torch.randn(4, X.shape[1], dtype=torch.float64)
    mean_ref, cov_ref = ref.dense_predictive(net, X_new, weights, precision(prior, noise).detach())
    var = la.predictive_variance(X_new)
    torch.testing.assert_close(var, torch.einsum("nknk->nk", cov_ref), **TOL)


@pytest.mark.parametrize("likelihood,K", LIKELIHOODS)
def test_forced_curvlinops_kron_marglik_equals_labo_path(likelihood, K, monkeypatch):
    """The library path for Linear layers (not chosen by the dispatch: slower) gives the same
    log marginal likelihood and gradients as labo's path and as the dense K-FAC reference."""
    net, X, Y = make_problem(likelihood, (3, 6, 5, K), n=10)
    prior = torch.tensor([0.5, 0.8, 1.1, 0.7, 0.9, 1.3], dtype=torch.float64)
    noise = torch.tensor(0.4, dtype=torch.float64)
    la = fit_laplace(net, X, Y, likelihood, AllWeights(), Kron(), prior, noise)
    calls = []

    def forced(network, names, lik, X_, K_, noise_var=None):
        calls.append(names)
        return lib.curvlinops_kfac_factors(network, names, lik, X_, K_, noise_var)

    monkeypatch.setattr(curvature_module, "_kfac_from_linear_factors", forced)
    la_lib = fit_laplace(net, X, Y, likelihood, AllWeights(), Kron(), prior, noise)
    assert calls
    value, grads = _lml_and_grads(la, prior, noise)
    value_lib, grads_lib = _lml_and_grads(la_lib, prior, noise)
    torch.testing.assert_close(value_lib, value, **TOL)
    for g, g_ref in zip(grads_lib, grads, strict=True):
        torch.testing.assert_close(g, g_ref, **TOL)
    H = ref.dense_precision(net, X, Y, likelihood, AllWeights(), "kron", prior, noise)
    torch.testing.assert_close(
        value_lib,
        ref.dense_log_marginal_likelihood(net, X, Y, likelihood, AllWeights(), H, prior, noise),
        **TOL,
    )


def test_partly_selected_conv_goes_to_the_rest():
    net, X, Y = conv_problem("conv1d", "regression", 1)
    weights = WeightMask({"1.weight": torch.ones_like(net[1].weight, dtype=torch.bool)})  # no bias
    la = fit_laplace(net, X, Y, weights=weights, structure=Kron())
    assert la.curvature.layer_names == [] and la.curvature.rest_index.numel() == net[1].weight.numel()


def test_grouped_conv_is_not_a_kfac_block():
    assert lib.is_kfac_conv(nn.Conv1d(2, 2, 3))
    assert not lib.is_kfac_conv(nn.Conv1d(2, 2, 3, groups=2))
    assert not lib.is_kfac_conv(nn.Conv1d(2, 2, 3, padding="same"))
    assert not lib.is_kfac_conv(nn.Conv1d(2, 2, 3, padding=1, padding_mode="circular"))


def test_frozen_parameters_stay_frozen():
    net, X, _ = conv_problem("conv1d", "regression", 1)
    names, _ = layer_names(net)
    for p in net.parameters():
        p.requires_grad_(False)
    kfac_factors(net, names, "regression", X, 1)
    assert not any(p.requires_grad for p in net.parameters())
    assert all(p.grad is None for p in net.parameters())


# ---------------------------------------------------------------------------------- diagonal


DIAG_CASES = [
    ("conv1d", lambda net: AllWeights()),
    ("conv2d", lambda net: AllWeights()),
    ("conv1d", lambda net: by_module(net, names=["1"])),
]


@pytest.mark.parametrize("kind,make_weights", DIAG_CASES)
@pytest.mark.parametrize("likelihood,K", LIKELIHOODS)
def test_backpack_diagonal_equals_dense_ggn(kind, make_weights, likelihood, K, monkeypatch):
    net, X, Y = conv_problem(kind, likelihood, K)
    weights = make_weights(net)
    subset = weights.resolve(net)
    assert lib.backpack_plan(net, subset)
    served = []
    original = curvature_module.backpack_ggn_diagonal

    def spy(*args):
        served.append(True)
        return original(*args)

    monkeypatch.setattr(curvature_module, "backpack_ggn_diagonal", spy)
    d = ggn(net, subset, likelihood, X, K, diagonal=True)
    assert served
    mask = ref.param_mask(net, weights)
    C = ref.dense_ggn(net, X, Y, likelihood, AllWeights())
    torch.testing.assert_close(d, C.diagonal()[mask], **TOL)


@pytest.mark.parametrize("likelihood,K", LIKELIHOODS)
def test_backpack_serves_big_linear_inputs_with_labos_numbers(likelihood, K, monkeypatch):
    """Past BACKPACK_LINEAR_MIN_ENTRIES (rows x widest Linear input) BackPACK gives the diagonal
    of whole Linear layers; it equals labo's closed form and the dense GGN."""
    net, X, Y = make_problem(likelihood, (3, 6, 5, K), n=10)
    subset = AllWeights().resolve(net)
    closed_form = ggn(net, subset, likelihood, X, K, diagonal=True)
    assert not lib.backpack_preferred_for_linear(net, X)
    monkeypatch.setattr(lib, "BACKPACK_LINEAR_MIN_ENTRIES", 30)
    assert lib.backpack_preferred_for_linear(net, X)
    served = []
    original = curvature_module.backpack_ggn_diagonal
    monkeypatch.setattr(
        curvature_module, "backpack_ggn_diagonal", lambda *a: served.append(1) or original(*a)
    )
    d = ggn(net, subset, likelihood, X, K, diagonal=True)
    assert served
    torch.testing.assert_close(d, closed_form, **TOL)
    torch.testing.assert_close(d, ref.dense_ggn(net, X, Y, likelihood, AllWeights()).diagonal(), **TOL)


@pytest.mark.parametrize("likelihood,K", LIKELIHOODS)
def test_backpack_diagonal_marglik_equals_dense(likelihood, K):
    net, X, Y = conv_problem("conv1d", likelihood, K)
    weights = AllWeights()
    subset = weights.resolve(net)
    prior = 0.5 + torch.rand(subset.n_tensors, dtype=torch.float64)
    noise = torch.tensor(0.4, dtype=torch.float64)
    la = fit_laplace(net, X, Y, likelihood, weights, Diagonal(), prior, noise)
    value, grads = _lml_and_grads(la, prior, noise)
    C = ref.dense_ggn(net, X, Y, likelihood, weights)

    def precision(p, s):
        scale = s.pow(-2) if likelihood == "regression" else torch.ones((), dtype=torch.float64)
        return torch.diag(scale * C.diagonal() + ref.expand_prior(net, weights, p))

    value_ref, grads_ref = _dense_lml_and_grads(net, X, Y, likelihood, weights, precision, prior, noise)
    torch.testing.assert_close(value, value_ref, **TOL)
    for g, g_ref in zip(grads, grads_ref, strict=True):
        torch.testing.assert_close(g, g_ref, **TOL)


def test_backpack_leaves_the_network_usable_by_torch_func():
    """BackPACK extends a deep copy: the user's network keeps working with vmap/jacrev."""
    net, X, Y = conv_problem("conv1d", "regression", 1)
    fit_laplace(net, X, Y, structure=Diagonal())
    assert not any(hasattr(p, "diag_ggn_exact") for p in net.parameters())
    la = fit_laplace(net, X, Y, structure=Diagonal(), weights=AllWeights())
    la.predictive(X[:2], mode="jacobian")  # torch.func on the same network


def test_backpack_plan_declines():
    net, X, _ = conv_problem("residual", "regression", 1)
    assert not lib.backpack_plan(net, AllWeights().resolve(net))  # not a Sequential
    seq = conv1d_seq().double()
    mask = WeightMask({"1.weight": torch.rand(seq[1].weight.shape) < 0.5})
    assert not lib.backpack_plan(seq, mask.resolve(seq))  # per-weight mask
    v = torch.ones(3, 1, dtype=torch.float64)
    assert not lib.backpack_plan(seq, AllWeights().resolve(seq), v)  # fixed noise
    odd = nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4), nn.Linear(4, 1)).double()
    assert not lib.backpack_plan(odd, AllWeights().resolve(odd))  # a module BackPACK lacks
    assert lib.backpack_plan(seq, LastLayer().resolve(seq))


def test_no_torchvision_import():
    code = (
        "import sys, torch\n"
        "from torch import nn\n"
        "from labo.laplace import fit_laplace, Kron, Diagonal\n"
        "net = nn.Sequential(nn.Unflatten(1, (1, 6)), nn.Conv1d(1, 2, 3), nn.Tanh(), nn.Flatten(),"
        " nn.Linear(8, 1)).double()\n"
        "X = torch.randn(5, 6, dtype=torch.float64); Y = torch.randn(5, 1, dtype=torch.float64)\n"
        "fit_laplace(net, X, Y, structure=Kron()); fit_laplace(net, X, Y, structure=Diagonal())\n"
        "assert 'curvlinops' in sys.modules and 'backpack' in sys.modules\n"
        "assert 'torchvision' not in sys.modules, 'torchvision was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_backpack_dispatch_rules_per_device():
    """The measured dispatch: on the CPU BackPACK serves whole Linear layers from rows x widest
    input >= 5e6 and convolutions always; on a GPU Linear layers from a widest input of 1000
    and convolutions from rows x input entries >= 5e6 (per-row Jacobians are faster below)."""
    from types import SimpleNamespace

    def inputs(n, d, device):
        return SimpleNamespace(shape=torch.Size([n, d]), device=torch.device(device))

    narrow, wide = nn.Sequential(nn.Linear(100, 8), nn.Tanh(), nn.Linear(8, 1)), nn.Linear(1000, 1)
    assert not lib.backpack_preferred_for_linear(narrow, inputs(20000, 100, "cpu"))  # 2e6 entries
    assert lib.backpack_preferred_for_linear(narrow, inputs(50000, 100, "cpu"))  # 5e6 entries
    assert not lib.backpack_preferred_for_linear(narrow, inputs(50000, 100, "cuda"))  # width 100
    assert lib.backpack_preferred_for_linear(wide, inputs(1000, 1000, "cuda"))  # width 1000
    assert not lib.backpack_preferred_for_linear(nn.Sequential(nn.Tanh()), inputs(10**6, 10, "cpu"))
    assert lib.backpack_preferred_for_rest(inputs(10, 10, "cpu"))
    assert not lib.backpack_preferred_for_rest(inputs(20000, 100, "cuda"))
    assert lib.backpack_preferred_for_rest(inputs(5000, 1000, "cuda"))
