"""Kron with RBF centres (and lengthscale) in its diagonal rest: the closed-form predictive
(``labo.laplace.linearization.rbf``) against the dense reference (``jacrev`` Jacobians, explicit K-FAC
blocks plus the diagonal GGN of the rest), values, x-gradients (gradcheck), and the
cases that must fall back to the Jacobian path."""

import pytest
import torch

from labo.laplace import AllWeights, Kron, LaplaceApproximation
from labo.laplace.linearization.rbf import RBFTerm
from labo.laplace.subnetworks import by_module
from labo.surrogates.networks import rbf_network
from tests import _reference as ref

LAYERS = {"all": None, "centres+linear": ["0.centres", "1", "3"], "centres": ["0.centres"]}


def _data(m=2):
    g = torch.Generator().manual_seed(0)
    X = torch.rand(25, 3, generator=g, dtype=torch.float64)
    Y = torch.cat([torch.sin(3 * X).sum(-1, keepdim=True), X[:, :1] * X[:, 1:2]], -1)[:, :m]
    return X, Y


def _fitted(names, m=2):
    torch.manual_seed(1)
    X, Y = _data(m)
    net = rbf_network(X, m, n_centres=6, width=5)
    w = AllWeights() if names is None else by_module(net, names=names)
    la = LaplaceApproximation(net, "regression", w, Kron(), prior_precision=0.7, noise_std=0.3).fit(X, Y)
    return la, net, w, X, Y


def _dense_kron_with_rest(net, X, Y, w, prior, noise):
    """K-FAC blocks of the Linear layers plus the diagonal GGN of every other selected weight."""
    H = ref.dense_precision(net, X, Y, "regression", w, "kron", prior, noise)
    C = ref.dense_ggn(net, X, Y, "regression", w)
    d = ref.expand_prior(net, w, prior)
    mask = ref.param_mask(net, w)
    rest, pos, i = [], 0, 0
    for name, p in net.named_parameters():
        k = int(mask[i : i + p.numel()].sum())
        if k and not name.startswith(("1.", "3.")):
            rest.append(torch.arange(pos, pos + k))
        pos, i = pos + k, i + p.numel()
    r = torch.cat(rest)
    H[r, r] = noise.pow(-2) * C[r, r] + d[r]
    return H


@pytest.mark.parametrize("layers", list(LAYERS))
def test_closed_form_matches_the_dense_reference(layers):
    la, net, w, X, Y = _fitted(LAYERS[layers])
    assert la.rbf_plan is not None
    H = _dense_kron_with_rest(net, X, Y, w, la.prior_precision, la.noise_std)
    torch.testing.assert_close(la.posterior_precision().precision(), H, rtol=1e-9, atol=1e-9)
    Xt = torch.rand(3, 4, 3, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    F, cov = la.predictive(Xt)
    var = la.predictive_variance(Xt)
    for b in range(3):
        F_ref, cov_ref = ref.dense_predictive(net, Xt[b], w, H)
        torch.testing.assert_close(F[b], F_ref, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(cov[b], cov_ref, rtol=1e-8, atol=1e-11)
        torch.testing.assert_close(var[b], torch.einsum("nknk->nk", cov_ref), rtol=1e-8, atol=1e-11)


@pytest.mark.parametrize("layers", ["all", "centres"])
def test_closed_form_is_differentiable_in_x(layers):
    la, *_ = _fitted(LAYERS[layers], m=1)
    x = torch.rand(2, 3, 3, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    x.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda z: la.predictive(z)[1], (x,))
    assert torch.autograd.gradcheck(lambda z: la.predictive_variance(z), (x,))


def test_closed_form_matches_the_jacobian_path_and_keeps_its_term():
    la, *_ = _fitted(None)
    Xt = torch.rand(2, 5, 3, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    F1, C1 = la.predictive(Xt)
    F2, C2 = la.predictive(Xt, mode="jacobian")
    torch.testing.assert_close(C1, C2, rtol=1e-9, atol=1e-12)
    # the rest's term is a real part of the covariance, not a rounding
    from labo.laplace.predictive.glm import _rbf_terms

    lead, rows = la.split_inputs(Xt)
    _, _, term = _rbf_terms(la, rows, lead, la.posterior_precision())
    assert isinstance(term, RBFTerm) and term.quad().diagonal(dim1=-2, dim2=-1).min() > 1e-6


def test_other_rests_fall_back_to_the_jacobian_path():
    X, Y = _data()
    torch.manual_seed(1)
    net = rbf_network(X, 2, n_centres=6, width=5)
    # lengthscale without the centres: not the planned rest
    w = by_module(net, names=["0.log_lengthscale", "1", "3"])
    la = LaplaceApproximation(net, "regression", w, Kron(), prior_precision=0.7, noise_std=0.3).fit(X, Y)
    assert la.rbf_plan is None
    H = _dense_kron_with_rest(net, X, Y, w, la.prior_precision, la.noise_std)
    Xt = torch.rand(4, 3, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    torch.testing.assert_close(
        la.predictive(Xt)[1], ref.dense_predictive(net, Xt, w, H)[1], rtol=1e-8, atol=1e-11
    )
    # the default RBF weights (linear layers only) keep the Linear factors path
    la = LaplaceApproximation(net, "regression", by_module(net, names=["1", "3"]), Kron()).fit(X, Y)
    assert la.rbf_plan is None and la.factor_plan is not None


@pytest.mark.parametrize("m", [1, 2])
def test_many_rows_go_through_the_materialised_jacobian(m):
    """``n > K d`` rows per t-batch: the Jacobian branch of ``RBFTerm.quad``."""
    la, net, w, X, Y = _fitted(None, m=m)
    H = _dense_kron_with_rest(net, X, Y, w, la.prior_precision, la.noise_std)
    Xt = torch.rand(2, 9, 3, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    _, cov = la.predictive(Xt)
    for b in range(2):
        torch.testing.assert_close(cov[b], ref.dense_predictive(net, Xt[b], w, H)[1], rtol=1e-8, atol=1e-11)
    x = Xt[:1].clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda z: la.predictive(z)[1], (x,))


def test_model_lazy_posterior_holds_the_rbf_term(monkeypatch):
    """``LaplaceModel(network="rbf", weights=AllWeights(), structure=Kron())`` (diagonal rest): the
    factored covariance of many points, and qLogNEI's shared-baseline form, equal the
    dense closed form."""
    from botorch.models.transforms import Standardize

    from labo.surrogates import FitOptions, LaplaceModel, fit_laplace_model

    g = torch.Generator().manual_seed(0)
    X = torch.rand(300, 3, generator=g, dtype=torch.float64)
    Y = torch.sin(4 * X).sum(-1, keepdim=True)
    torch.manual_seed(0)
    model = LaplaceModel(
        X, Y, network="rbf", weights=AllWeights(), structure=Kron(), outcome_transform=Standardize(1)
    )
    fit_laplace_model(model, FitOptions(max_epochs_cold=60, hyper_steps_cold=10))
    assert isinstance(model.laplace.structure, Kron) and model.laplace.rbf_plan is not None
    ref.check_lazy_model_posterior(model, X, g, monkeypatch)
