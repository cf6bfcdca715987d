"""``Kron(rest="full")``: the selected weights outside Linear layers as one full GGN block.

Checked in float64 against the dense reference (explicit K-FAC blocks of the Linear
layers plus the full GGN block of the rest, ``jacrev`` Jacobians): the precision, its
log-determinant, solves and samples, the log marginal likelihood and its
hyperparameter gradients, the predictive (the RBF closed form and the generic Jacobian
path) with x-gradients, the lazy model posterior, and the bad options.
"""

import pytest
import torch
from torch import nn

from labo.exceptions import StructureError
from labo.laplace import AllWeights, Kron, LaplaceApproximation
from labo.laplace.subnetworks import by_module
from labo.surrogates.networks import rbf_network
from tests import _reference as ref

RBF_LAYERS = {"all": None, "centres+linear": ["0.centres", "1", "3"], "centres": ["0.centres"]}


class Scale(nn.Module):
    """``x -> s ⊙ x``: a selected weight that is not a Linear layer (the generic rest)."""

    def __init__(self, n):
        super().__init__()
        self.s = nn.Parameter(torch.linspace(0.5, 1.5, n, dtype=torch.float64))

    def forward(self, x):
        return self.s * x


def _data(m=2, n=25):
    g = torch.Generator().manual_seed(0)
    X = torch.rand(n, 3, generator=g, dtype=torch.float64)
    Y = torch.cat([torch.sin(3 * X).sum(-1, keepdim=True), X[:, :1] * X[:, 1:2]], -1)[:, :m]
    return X, Y


def _rbf(names, m=2, prior=0.7):
    torch.manual_seed(1)
    X, Y = _data(m)
    net = rbf_network(X, m, n_centres=6, width=5)
    w = AllWeights() if names is None else by_module(net, names=names)
    la = LaplaceApproximation(net, "regression", w, Kron(rest="full"), prior, 0.3).fit(X, Y)
    return la, net, w, X, Y


def _generic(m=2):
    torch.manual_seed(2)
    X, Y = _data(m)
    net = nn.Sequential(nn.Linear(3, 5), Scale(5), nn.Tanh(), nn.Linear(5, m)).double()
    la = LaplaceApproximation(net, "regression", AllWeights(), Kron(rest="full"), 0.7, 0.3).fit(X, Y)
    return la, net, AllWeights(), X, Y


def _rest_positions(net, w, linear_prefixes):
    mask = ref.param_mask(net, w)
    rest, pos, i = [], 0, 0
    for name, p in net.named_parameters():
        k = int(mask[i : i + p.numel()].sum())
        if k and not name.startswith(linear_prefixes):
            rest.append(torch.arange(pos, pos + k))
        pos, i = pos + k, i + p.numel()
    return torch.cat(rest)


def _dense(net, X, Y, w, prior, noise, linear_prefixes=("1.", "3.")):
    """K-FAC blocks of the Linear layers plus the rest's full GGN block, with the documented
    prior rule on it (``diag(Qᵀ D Q)`` in its eigenbasis; exact for a constant prior)."""
    H = ref.dense_precision(net, X, Y, "regression", w, "kron", prior, noise)
    C = ref.dense_ggn(net, X, Y, "regression", w)
    d = ref.expand_prior(net, w, prior)
    r = _rest_positions(net, w, linear_prefixes)
    lam, Q = torch.linalg.eigh(C[r.unsqueeze(-1), r])
    d_eig = torch.diagonal(Q.T @ torch.diag(d[r]) @ Q)
    H[r.unsqueeze(-1), r] = Q @ torch.diag(noise.pow(-2) * lam.clamp_min(0) + d_eig) @ Q.T
    return H


CASES = [("rbf", k) for k in RBF_LAYERS] + [("generic", None)]


def _case(kind, layers, m=2):
    if kind == "rbf":
        la, net, w, X, Y = _rbf(RBF_LAYERS[layers], m)
        return la, net, w, X, Y, ("1.", "3.")
    la, net, w, X, Y = _generic(m)
    return la, net, w, X, Y, ("0.", "3.")


@pytest.mark.parametrize("kind,layers", CASES)
def test_precision_and_its_operations_match_the_dense_reference(kind, layers):
    la, net, w, X, Y, lin = _case(kind, layers)
    assert la.curvature.full_rest
    H = _dense(net, X, Y, w, la.prior_precision, la.noise_std, lin)
    P = la.posterior_precision()
    torch.testing.assert_close(P.precision(), H, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(P.covariance(), torch.linalg.inv(H), rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(P.logdet(), torch.linalg.slogdet(H)[1], rtol=1e-10, atol=1e-10)
    V = torch.randn(la.n_weights, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    torch.testing.assert_close(P.solve(V), torch.linalg.solve(H, V), rtol=1e-8, atol=1e-10)
    # samples: B z for the generator's white z, a linear map B with B Bᵀ = H⁻¹ (recovered
    # exactly from more samples than weights)
    n = la.n_weights + 5
    s = P.sample(n, torch.Generator().manual_seed(2))
    z = torch.randn(la.n_weights, n, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    B = s.T @ torch.linalg.pinv(z)
    torch.testing.assert_close(B @ z, s.T, rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(B @ B.T, torch.linalg.inv(H), rtol=1e-7, atol=1e-10)
    # the curvature's dense form is the data part of H
    C = (H - torch.diag(ref.expand_prior(net, w, la.prior_precision))) * la.noise_std.pow(2)
    r = _rest_positions(net, w, lin)
    torch.testing.assert_close(la.curvature.dense()[r.unsqueeze(-1), r], C[r.unsqueeze(-1), r])


@pytest.mark.parametrize("kind,layers", CASES)
def test_predictive_matches_the_dense_reference(kind, layers):
    la, net, w, X, Y, lin = _case(kind, layers)
    assert (la.rbf_plan is not None) == (kind == "rbf")
    H = _dense(net, X, Y, w, la.prior_precision, la.noise_std, lin)
    Xt = torch.rand(3, 9, 3, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    F, cov = la.predictive(Xt)
    var = la.predictive_variance(Xt)
    for b in range(3):
        F_ref, cov_ref = ref.dense_predictive(net, Xt[b], w, H)
        torch.testing.assert_close(F[b], F_ref, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(cov[b], cov_ref, rtol=1e-8, atol=1e-11)
        torch.testing.assert_close(var[b], torch.einsum("nknk->nk", cov_ref), rtol=1e-8, atol=1e-11)
    torch.testing.assert_close(la.predictive(Xt, mode="jacobian")[1], cov, rtol=1e-9, atol=1e-12)


def test_full_rest_is_closer_to_the_exact_ggn_than_the_diagonal():
    """The point of the option: on the rest, the full block is the exact GGN block, so the
    predictive of a centres-only posterior is the exact (Full) one, while the diagonal's is not."""
    la, net, w, X, Y = _rbf(["0.centres"], m=1)
    H_full = ref.dense_precision(net, X, Y, "regression", w, "full", la.prior_precision, la.noise_std)
    Xt = torch.rand(6, 3, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    exact = ref.dense_predictive(net, Xt, w, H_full)[1].reshape(6, 6).diagonal()
    torch.testing.assert_close(la.predictive_variance(Xt).reshape(-1), exact, rtol=1e-8, atol=1e-12)
    diag = LaplaceApproximation(net, "regression", w, Kron(), 0.7, 0.3).fit(X, Y)
    assert (diag.predictive_variance(Xt).reshape(-1) - exact).abs().max() > 1e-3 * exact.max()


@pytest.mark.parametrize("kind,layers", [("rbf", "all"), ("rbf", "centres"), ("generic", None)])
def test_log_marginal_likelihood_and_gradients(kind, layers):
    la, net, w, X, Y, lin = _case(kind, layers)
    prior = torch.tensor(0.9, dtype=torch.float64, requires_grad=True)
    noise = torch.tensor(0.4, dtype=torch.float64, requires_grad=True)
    lml = la.log_marginal_likelihood(prior, noise)
    H = _dense(net, X, Y, w, prior, noise, lin)
    ref_lml = ref.dense_log_marginal_likelihood(net, X, Y, "regression", w, H, prior, noise)
    torch.testing.assert_close(lml, ref_lml, rtol=1e-9, atol=1e-9)
    g = torch.autograd.grad(lml, (prior, noise))
    g_ref = torch.autograd.grad(ref_lml, (prior, noise))
    for a, b in zip(g, g_ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-9)


def test_per_tensor_prior_follows_the_documented_rule():
    la, net, w, X, Y = _rbf(None, m=1)
    prior = torch.tensor([0.5, 2.0, 0.8, 1.1, 0.6, 1.7], dtype=torch.float64)  # one per tensor
    la.prior_precision = prior
    H = _dense(net, X, Y, w, prior, la.noise_std)
    torch.testing.assert_close(la.posterior_precision().precision(), H, rtol=1e-9, atol=1e-9)
    Xt = torch.rand(5, 3, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    cov_ref = ref.dense_predictive(net, Xt, w, H)[1]
    torch.testing.assert_close(la.predictive(Xt)[1], cov_ref, rtol=1e-8, atol=1e-11)


@pytest.mark.parametrize("m", [1, 2])
def test_closed_form_is_differentiable_in_x(m):
    la, *_ = _rbf(None, m=m)
    x = torch.rand(2, 3, 3, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    x.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda z: la.predictive(z)[1], (x,))
    assert torch.autograd.gradcheck(lambda z: la.predictive_variance(z), (x,))


def test_state_dict_round_trip():
    la, net, w, X, Y = _rbf(None)
    other = LaplaceApproximation(net, "regression", w, Kron(rest="full"), 0.7, 0.3)
    other.load_state_dict(la.state_dict())
    Xt = torch.rand(4, 3, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    torch.testing.assert_close(other.predictive(Xt)[1], la.predictive(Xt)[1], rtol=1e-12, atol=1e-15)


def test_model_lazy_posterior_holds_the_full_block(monkeypatch):
    """``LaplaceModel(network="rbf", weights=AllWeights(), structure=Kron(rest="full"))``:
    the factored covariance and qLogNEI's shared-baseline form equal the dense closed form."""
    from botorch.models.transforms import Standardize

    from labo.surrogates import FitOptions, LaplaceModel, fit_laplace_model

    g = torch.Generator().manual_seed(0)
    X = torch.rand(60, 3, generator=g, dtype=torch.float64)
    Y = torch.sin(4 * X).sum(-1, keepdim=True)
    torch.manual_seed(0)
    model = LaplaceModel(
        X,
        Y,
        network="rbf",
        weights=AllWeights(),
        structure=Kron(rest="full"),
        outcome_transform=Standardize(1),
    )
    fit_laplace_model(model, FitOptions(max_epochs_cold=40, hyper_steps_cold=10))
    assert model.laplace.curvature.full_rest and model.laplace.rbf_plan is not None
    ref.check_lazy_model_posterior(model, X, g, monkeypatch)


def test_model_default_past_250_rows_takes_the_full_rest():
    from labo.surrogates import LaplaceModel

    g = torch.Generator().manual_seed(0)
    X = torch.rand(300, 3, generator=g, dtype=torch.float64)
    Y = torch.sin(4 * X).sum(-1, keepdim=True)
    rbf_all = LaplaceModel(X, Y, network="rbf", weights=AllWeights())
    assert repr(rbf_all.laplace.structure) == "Kron(rest='auto', max_full_rest=8192)"
    assert rbf_all.laplace.curvature.full_rest and rbf_all.laplace.rbf_plan is not None
    # the default weights are whole Linear layers: nothing in the rest, the factor path
    rbf = LaplaceModel(X, Y, network="rbf")
    assert not rbf.laplace.curvature.full_rest and rbf.laplace.factor_plan is not None


def test_options_and_size_cap():
    assert repr(Kron()) == "Kron()"
    assert repr(Kron(rest="full")) == "Kron(rest='full', max_full_rest=8192)"
    with pytest.raises(StructureError, match="rest"):
        Kron(rest="dense")
    for bad in (0, 2.5, True):
        with pytest.raises(StructureError, match="max_full_rest"):
            Kron(max_full_rest=bad)
    X, Y = _data(1)
    torch.manual_seed(1)
    net = rbf_network(X, 1, n_centres=6, width=5)  # rest: 6 x 3 centres + 1 lengthscale = 19
    with pytest.raises(StructureError, match="19 weights"):
        LaplaceApproximation(net, "regression", AllWeights(), Kron(rest="full", max_full_rest=18))
    auto_small = LaplaceApproximation(net, "regression", AllWeights(), Kron(rest="auto", max_full_rest=18))
    auto_big = LaplaceApproximation(net, "regression", AllWeights(), Kron(rest="auto", max_full_rest=19))
    assert not auto_small.curvature.full_rest and auto_big.curvature.full_rest
    # no rest at all: full is the plain Kron
    mlp = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1)).double()
    la = LaplaceApproximation(mlp, "regression", AllWeights(), Kron(rest="full")).fit(X, Y)
    assert not la.curvature.full_rest and la.posterior_precision().supports_factors
