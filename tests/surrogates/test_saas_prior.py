"""``FitOptions(lengthscale_prior="saas")``: the evidence fit under the SAAS prior, checked in
float64 against the MAP-II objective written out densely (value and stationarity)."""

from __future__ import annotations

import pytest
import torch
from botorch.models.transforms import Normalize, Standardize

from labo.exceptions import HyperparameterError
from labo.surrogates import FitOptions, LaplaceModel, fit_laplace_model
from labo.surrogates.feature_evidence import SAAS_TAU
from labo.surrogates.networks import rff_network
from tests import _reference as ref

D64 = torch.float64


def _data(n=24, d=4, seed=0):
    """Only the first input matters."""
    g = torch.Generator().manual_seed(seed)
    X = torch.rand(n, d, generator=g, dtype=D64)
    return X, (3 * torch.sin(5 * X[:, :1]) + 0.05 * torch.randn(n, 1, generator=g, dtype=D64))


def _fit(X, Y, prior):
    d = X.shape[-1]
    model = LaplaceModel(
        X,
        Y,
        network=rff_network(d, 1, n_features=64, dtype=D64),
        input_transform=Normalize(d),
        outcome_transform=Standardize(1),
    )
    return fit_laplace_model(model, FitOptions(lengthscale_prior=prior, evidence_iters=300))


def _neg_log_post(X, Z, log_ls, log_lam, u):
    """Minus the MAP-II objective under the SAAS prior, written out densely."""
    return ref.dense_map_ii_objective(
        X, Z, log_ls, log_lam, u, lambda ls: torch.log(1 + ((-2 * ls).exp() / SAAS_TAU) ** 2).sum()
    )


def test_saas_fit_maximises_the_written_out_objective_and_keeps_irrelevant_inputs_long():
    X, Y = _data()
    model = _fit(X, Y, "saas")
    la = model.laplace
    Xt = model.transform_inputs(X)
    Z = (model.train_targets - model.y_mean) / model.y_scale
    log_ls = model.network[0].log_lengthscale.detach().clone().requires_grad_(True)
    log_lam = la.prior_precision.detach().mean().log().clone().requires_grad_(True)
    u = (la.noise_std.detach().mean() - 1e-2).log().clone().requires_grad_(True)
    f = _neg_log_post(Xt, Z.reshape(-1, 1), log_ls, log_lam, u)
    assert float(f.detach()) == pytest.approx(-model.fit_info["hyper_log_posterior"], rel=1e-8)
    grads = torch.autograd.grad(f, (log_ls, log_lam, u))
    assert max(float(g.abs().max()) for g in grads) < 1e-3  # a stationary point
    ls = model.network[0].log_lengthscale.detach().exp()
    assert float(ls[0]) < 1.0 and float(ls[1:].min()) > 3.0
    # the dimension-scaled prior leaves the irrelevant inputs shorter than SAAS does
    plain = _fit(X, Y, "dim_scaled").network[0].log_lengthscale.detach().exp()
    assert float(ls[1:].min()) > float(plain[1:].min())


def test_unknown_lengthscale_prior_is_refused():
    with pytest.raises(HyperparameterError, match="lengthscale_prior must be one of"):
        FitOptions(lengthscale_prior="horseshoe")


def test_a_warm_refit_turns_an_input_back_on_when_the_data_need_it():
    X, Y = _data(n=40, d=3)
    first = _fit(X[:20], Y[:20], "saas")
    assert float(first.network[0].log_lengthscale.detach()[1].exp()) > 100.0  # input 1 switched off
    Y2 = Y + 3 * torch.sin(5 * X[:, 1:2])  # now input 1 matters
    model = LaplaceModel(
        X,
        Y2,
        network=rff_network(3, 1, n_features=64, dtype=D64),
        input_transform=Normalize(3),
        outcome_transform=Standardize(1),
        warm_start=first,
    )
    fit_laplace_model(model, FitOptions(lengthscale_prior="saas", evidence_iters=300))
    assert float(model.network[0].log_lengthscale.detach()[1].exp()) < 1.0


def test_the_research_method_laplace_saas_is_the_default_with_the_saas_prior():
    from labo.bench import runner

    X, Y = _data(n=20, d=3)
    U = (X - X.min(0).values) / (X.max(0).values - X.min(0).values)
    saas, default = runner.fit_model("laplace-saas", U, Y), runner.fit_model("laplace", U, Y)
    ls_saas = saas.network[0].log_lengthscale.detach().exp()
    ls_default = default.network[0].log_lengthscale.detach().exp()
    assert float(ls_saas[1:].min()) > float(ls_default[1:].max())
    assert saas.posterior(torch.rand(3, 1, 3, dtype=D64)).mean.shape == (3, 1, 1)
