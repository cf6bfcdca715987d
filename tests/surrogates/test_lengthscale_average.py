"""``FitOptions(lengthscale_samples=S)``: the kernel posterior averaged over lengthscales drawn
from their Laplace marginal, checked in float64 against explicit mixture moments and a
finite-difference Hessian of the MAP-II objective written out by hand."""

from __future__ import annotations

import pytest
import torch
from botorch.acquisition.logei import qLogNoisyExpectedImprovement
from botorch.models.transforms import Normalize, Standardize
from botorch.sampling import SobolQMCNormalSampler

from labo.acquisition import model_function_samples
from labo.exceptions import HyperparameterError, InputShapeError
from labo.surrogates import FitOptions, LaplaceModel, fit_laplace_model
from labo.surrogates.averaged_posterior import AveragedKernelPosterior
from labo.surrogates.kernel_posterior import KernelPosterior
from labo.surrogates.networks import dim_scaled_lengthscale_prior, rff_network
from tests import _reference as ref

D64 = torch.float64


def _data(n=12, d=2, m=1, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.rand(n, d, generator=g, dtype=D64)
    cols = [(k + 1) * torch.sin(4 * X).sum(-1) + X[:, 0] * k for k in range(m)]
    return X, 3.0 * torch.stack(cols, -1) + 0.05 * torch.randn(n, m, generator=g, dtype=D64)


def _model(X, Y, samples):
    d, m = X.shape[-1], Y.shape[-1]
    model = LaplaceModel(
        X,
        Y,
        network=rff_network(d, m, n_features=64, dtype=D64),
        input_transform=Normalize(d),
        outcome_transform=Standardize(m),
    )
    return fit_laplace_model(model, FitOptions(lengthscale_samples=samples, lengthscale_samples_min_rows=0))


@pytest.mark.parametrize("m", [1, 2])
def test_predictive_is_the_mixtures_first_two_moments(m):
    members = ref.kernel_posterior_members(m)
    Xs = torch.rand(4, 3, 3, dtype=D64)
    mean, cov = AveragedKernelPosterior(members).predictive(Xs)
    outs = [p.predictive(Xs) for p in members]
    for b in range(4):  # written out: E[f] and E[f fᵀ] − E[f] E[f]ᵀ over the members
        mus = [o[0][b].reshape(-1) for o in outs]
        second = (
            sum(o[1][b].reshape(3 * m, 3 * m) + torch.outer(mu, mu) for o, mu in zip(outs, mus, strict=True))
            / 3
        )
        mu = sum(mus) / 3
        torch.testing.assert_close(mean[b].reshape(-1), mu, rtol=0, atol=1e-12)
        torch.testing.assert_close(
            cov[b].reshape(3 * m, 3 * m), second - torch.outer(mu, mu), rtol=0, atol=1e-12
        )
    var = AveragedKernelPosterior(members).predictive_variance(Xs)
    torch.testing.assert_close(var, cov.reshape(4, 3 * m, 3 * m).diagonal(dim1=-2, dim2=-1).reshape(4, 3, m))


def test_identical_members_give_the_member_and_conditioning_goes_member_by_member():
    member = ref.kernel_posterior_members()[0]
    Xs = torch.rand(5, 2, 3, dtype=D64)
    torch.testing.assert_close(
        AveragedKernelPosterior([member, member]).predictive(Xs), member.predictive(Xs)
    )
    members = ref.kernel_posterior_members()
    Xn, Zn = torch.rand(2, 3, dtype=D64), torch.randn(2, 1, dtype=D64)
    noise = torch.full((2, 1), 0.05, dtype=D64)
    conditioned = AveragedKernelPosterior(members).condition(Xn, Zn, noise)
    explicit = AveragedKernelPosterior([p.condition(Xn, Zn, noise) for p in members])
    torch.testing.assert_close(conditioned.predictive(Xs), explicit.predictive(Xs))
    assert conditioned.X.shape[-2] == 12
    with pytest.raises(InputShapeError, match="at least one member"):
        AveragedKernelPosterior([])


def test_member_blocks_agree_with_one_block_and_with_fantasy_batches(monkeypatch):
    members = ref.kernel_posterior_members(m=2)
    Xs = torch.rand(4, 3, 3, dtype=D64)
    together = AveragedKernelPosterior(members)
    assert len(together.blocks) == 1 and together.num_members == 3
    monkeypatch.setattr("labo.surrogates.averaged_posterior.MEMBER_BLOCK_ENTRIES", 150)  # 10 rows: 1 a block
    apart = AveragedKernelPosterior(members)
    assert len(apart.blocks) == 3 and apart.num_members == 3
    torch.testing.assert_close(apart.predictive(Xs), together.predictive(Xs), rtol=0, atol=1e-12)
    torch.testing.assert_close(apart.inv_lengthscales, together.inv_lengthscales)
    Xg = torch.rand(2, 2, 3, dtype=D64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: together.predictive(x), (Xg,))
    # fantasies: a batch of 5 observation sets at the same 2 points, each member conditioned
    Xn = torch.rand(2, 3, dtype=D64)
    Zn = torch.randn(5, 2, 2, dtype=D64)
    noise = torch.full((2, 1), 0.05, dtype=D64)
    conditioned = together.condition(Xn, Zn, noise)
    assert conditioned.batch_shape == (5,) and conditioned.X.shape == (12, 3)
    Xq = torch.rand(7, 1, 3, 3, dtype=D64)  # t-batches against the fantasy batch
    mean, cov = conditioned.predictive(Xq)
    assert mean.shape == (7, 5, 3, 2) and cov.shape == (7, 5, 3, 2, 3, 2)
    for f in range(5):
        explicit = AveragedKernelPosterior([p.condition(Xn, Zn[f], noise) for p in members])
        ref_mean, ref_cov = explicit.predictive(Xq[:, 0])
        torch.testing.assert_close(mean[:, f], ref_mean, rtol=0, atol=1e-10)
        torch.testing.assert_close(cov[:, f], ref_cov, rtol=0, atol=1e-10)
    var = conditioned.predictive_variance(Xq)
    torch.testing.assert_close(var, cov.reshape(7, 5, 6, 6).diagonal(dim1=-2, dim2=-1).reshape(7, 5, 3, 2))


def _neg_log_post(X, Z, log_ls, log_lam, u):
    """Minus the MAP-II objective of the default's fit, written out densely."""
    loc, scale = dim_scaled_lengthscale_prior(X.shape[-1])
    return ref.dense_map_ii_objective(
        X, Z, log_ls, log_lam, u, lambda ls: (0.5 * ((ls - loc) / scale).pow(2) + ls).sum()
    )


def test_draws_follow_the_laplace_marginal_of_a_finite_difference_hessian():
    X, Y = _data()
    model = _model(X, Y, samples=3000)
    post = model.kernel_posterior
    assert isinstance(post, AveragedKernelPosterior) and model.fit_info["lengthscale_samples"] == 3000
    draws = -post.inv_lengthscales.log()  # (S, d)
    la, d = model.laplace, X.shape[-1]
    log_ls = model.network[0].log_lengthscale.detach()
    u = (la.noise_std.detach().mean() - 1e-2).log()
    theta = torch.cat([log_ls, la.prior_precision.detach().mean().log().reshape(1), u.reshape(1)])

    def f(v):
        return _neg_log_post(post.X, post.Z, v[:d], v[d], v[d + 1])

    assert float(f(theta)) == pytest.approx(-model.fit_info["hyper_log_posterior"], rel=1e-9)
    h, k = 1e-4, theta.numel()
    H = torch.zeros(k, k, dtype=D64)
    for i in range(k):
        for j in range(k):
            e_i, e_j = torch.eye(k, dtype=D64)[i] * h, torch.eye(k, dtype=D64)[j] * h
            H[i, j] = (
                f(theta + e_i + e_j) - f(theta + e_i - e_j) - f(theta - e_i + e_j) + f(theta - e_i - e_j)
            ) / (4 * h * h)
    assert torch.linalg.eigvalsh(H).min() > 1e-2  # no floored direction in this case
    block = torch.linalg.inv(H)[:d, :d]
    torch.testing.assert_close(
        draws.mean(0), log_ls, rtol=0, atol=4 * float(block.diagonal().max().sqrt()) / 50
    )
    emp = torch.cov(draws.T)
    torch.testing.assert_close(emp, block, rtol=0.12, atol=0.12 * float(block.diagonal().max()))


def test_fit_predict_acquire_and_fantasize_with_lengthscale_samples():
    X, Y = _data(n=14, d=3, m=1)
    model = _model(X, Y, samples=6)
    assert model.kernel_posterior.num_members == 6
    Xs = torch.rand(7, 2, 3, dtype=D64, requires_grad=True)
    acq = qLogNoisyExpectedImprovement(model, X_baseline=X)
    value = acq(Xs)
    value.sum().backward()
    assert torch.isfinite(Xs.grad).all() and Xs.grad.abs().sum() > 0
    fantasy = model.fantasize(torch.rand(2, 3, dtype=D64), sampler=SobolQMCNormalSampler(torch.Size([3])))
    assert fantasy.posterior(torch.rand(4, 1, 1, 3, dtype=D64)).mean.shape == (4, 3, 1, 1)
    plain = _model(X, Y, samples=0)
    assert isinstance(plain.kernel_posterior, KernelPosterior) and plain.fit_info["lengthscale_samples"] == 0
    # the average keeps the mean near the MAP's and widens where the lengthscales matter
    Xt = torch.rand(64, 1, 3, dtype=D64)
    assert (model.posterior(Xt).variance.mean() > 0.5 * plain.posterior(Xt).variance.mean()).item()
    # function samples come from the mixture (tests/surrogates/test_mixture_samples.py)
    assert model_function_samples(model, 2)(Xt).shape == (2, 64, 1, 1)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"lengthscale_samples": -1}, "non-negative integer"),
        ({"lengthscale_samples": True}, "non-negative integer"),
        ({"lengthscale_samples": 2.0}, "non-negative integer"),
        ({"lengthscale_samples": 4, "evidence": "features"}, "posterior='kernel'"),
        ({"lengthscale_samples": 4, "posterior": "features"}, "posterior='kernel'"),
    ],
)
def test_bad_lengthscale_samples_are_refused(kwargs, match):
    with pytest.raises(HyperparameterError, match=match):
        FitOptions(**kwargs)


def test_bad_rows_per_input_is_refused():
    for bad in (-1.0, True, "2", float("nan")):
        with pytest.raises(HyperparameterError, match="lengthscale_samples_rows_per_input"):
            FitOptions(lengthscale_samples=4, lengthscale_samples_rows_per_input=bad)


def test_bad_max_rows_per_input_is_refused():
    for bad in (2.0, 1.0, True, "30", float("nan")):
        with pytest.raises(HyperparameterError, match="lengthscale_samples_max_rows_per_input"):
            FitOptions(
                lengthscale_samples=4,
                lengthscale_samples_rows_per_input=2.0,
                lengthscale_samples_max_rows_per_input=bad,
            )
    FitOptions(lengthscale_samples=4, lengthscale_samples_max_rows_per_input=30.0)


def test_the_default_averages_sixteen_members_with_the_kernel_posterior_only():
    default = FitOptions()
    assert default.lengthscale_samples == 16 and default.posterior == "kernel"
    assert default.lengthscale_samples_rows_per_input == 2.0
    assert default.lengthscale_samples_max_rows_per_input == 30.0
    assert default.lengthscale_samples_max_rows == 200
    assert default.lengthscale_samples_min_rows == 20
    assert FitOptions(posterior="features").lengthscale_samples == 0
    assert FitOptions(evidence="features").lengthscale_samples == 0
    X, Y = _data(n=19, d=3)  # 19 < 20 rows (though >= 2d): the MAP-II lengthscales alone
    model = fit_laplace_model(LaplaceModel(X, Y, network=rff_network(3, 1, n_features=64, dtype=D64)))
    assert isinstance(model.kernel_posterior, KernelPosterior) and model.fit_info["lengthscale_samples"] == 0
    X, Y = _data(n=20, d=3)
    model = fit_laplace_model(LaplaceModel(X, Y, network=rff_network(3, 1, n_features=64, dtype=D64)))
    assert model.kernel_posterior.num_members == 16 and model.fit_info["lengthscale_samples"] == 16
    X, Y = _data(n=21, d=11)  # 21 < 2d rows: the MAP-II lengthscales alone
    model = fit_laplace_model(LaplaceModel(X, Y, network=rff_network(11, 1, n_features=64, dtype=D64)))
    assert isinstance(model.kernel_posterior, KernelPosterior) and model.fit_info["lengthscale_samples"] == 0


def test_the_average_stops_beyond_max_rows():
    X, Y = _data(n=11, d=3)
    net = rff_network(3, 1, n_features=64, dtype=D64)
    opts = FitOptions(lengthscale_samples=4, lengthscale_samples_min_rows=0, lengthscale_samples_max_rows=10)
    beyond = fit_laplace_model(LaplaceModel(X, Y, network=net), opts)  # 11 > 10 rows
    assert (
        isinstance(beyond.kernel_posterior, KernelPosterior) and beyond.fit_info["lengthscale_samples"] == 0
    )
    within = fit_laplace_model(LaplaceModel(X[:10], Y[:10], network=net), opts)
    assert within.kernel_posterior.num_members == 4
    for bad in (0, 2.5, True, "200"):
        with pytest.raises(HyperparameterError, match="lengthscale_samples_max_rows must"):
            FitOptions(lengthscale_samples_max_rows=bad)


def test_the_average_waits_for_min_rows():
    X, Y = _data(n=9, d=3)
    net = rff_network(3, 1, n_features=64, dtype=D64)
    opts = FitOptions(lengthscale_samples=4, lengthscale_samples_min_rows=10)
    few = fit_laplace_model(LaplaceModel(X, Y, network=net), opts)  # 9 < 10 rows (though >= 2d)
    assert isinstance(few.kernel_posterior, KernelPosterior) and few.fit_info["lengthscale_samples"] == 0
    X, Y = _data(n=10, d=3)
    enough = fit_laplace_model(LaplaceModel(X, Y, network=net), opts)
    assert enough.kernel_posterior.num_members == 4
    for bad in (-1, 2.5, True):
        with pytest.raises(HyperparameterError, match="lengthscale_samples_min_rows must"):
            FitOptions(lengthscale_samples_min_rows=bad)


def test_antithetic_draws_come_in_pairs_around_the_map():
    X, Y = _data(n=14, d=3)
    net = rff_network(3, 1, n_features=64, dtype=D64)
    opts = FitOptions(lengthscale_samples=6, lengthscale_samples_min_rows=0, lengthscale_antithetic=True)
    model = fit_laplace_model(LaplaceModel(X, Y, network=net), opts)
    log_ls = -model.kernel_posterior.inv_lengthscales.log().reshape(6, 3)
    centre = model.network[0].log_lengthscale.detach().reshape(3)
    torch.testing.assert_close(log_ls[:3] + log_ls[3:], 2 * centre.expand(3, 3), rtol=0, atol=1e-12)
    assert (log_ls[:3] - centre).abs().min() > 0
    odd = FitOptions(lengthscale_samples=5, lengthscale_samples_min_rows=0, lengthscale_antithetic=True)
    five = fit_laplace_model(LaplaceModel(X, Y, network=rff_network(3, 1, n_features=64, dtype=D64)), odd)
    five_ls = -five.kernel_posterior.inv_lengthscales.log().reshape(5, 3)
    torch.testing.assert_close(five_ls[4], centre, rtol=0, atol=1e-12)  # the odd one out: the MAP
    with pytest.raises(HyperparameterError, match="lengthscale_antithetic must"):
        FitOptions(lengthscale_antithetic=1)
