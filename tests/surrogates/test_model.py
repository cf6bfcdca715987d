"""LaplaceModel as a BoTorch Model: shapes, transforms, noise, gradients, conditioning, state."""

import copy
import io
import warnings

import pytest
import torch
from botorch import settings
from botorch.exceptions.warnings import InputDataWarning
from botorch.models.transforms import Normalize
from botorch.posteriors.gpytorch import GPyTorchPosterior
from botorch.sampling import SobolQMCNormalSampler
from gpytorch.distributions import MultitaskMultivariateNormal, MultivariateNormal

from labo.exceptions import InputDtypeError, InputShapeError, NonFiniteInputError, NotFittedError
from labo.laplace import Diagonal, Full, Kron
from labo.surrogates import LaplaceModel
from labo.surrogates.model_support import check_training_data
from tests.surrogates.conftest import FAST, fitted_model, small_net, toy_data


def manual_predictive(model, X):
    """Mean and joint covariance in the original outcome space, composed by hand."""
    X_tf = model.input_transform(X)
    mean_z, cov_z = model.laplace.predictive(X_tf)
    s = model.y_scale * model.outcome_transform.stdvs.squeeze(0)
    mu = model.y_mean * model.outcome_transform.stdvs.squeeze(0) + model.outcome_transform.means.squeeze(0)
    return mu + s * mean_z, cov_z * s.view(-1, 1, 1) * s


@pytest.mark.parametrize("shape", [(4,), (2, 4), (3, 2, 4)], ids=str)
@pytest.mark.parametrize("m", [1, 2])
def test_posterior_shapes_and_values(shape, m):
    model = fitted_model(m=m)
    X = torch.rand(*shape, 3, dtype=torch.float64)
    post = model.posterior(X)
    assert isinstance(post, GPyTorchPosterior)
    dist = post.distribution
    assert isinstance(dist, MultitaskMultivariateNormal if m > 1 else MultivariateNormal)
    q = shape[-1]
    assert post.mean.shape == (*shape, m)
    assert post.variance.shape == (*shape, m)
    mean, cov = manual_predictive(model, X)
    torch.testing.assert_close(post.mean, mean)
    full_cov = dist.covariance_matrix
    if m == 1:
        torch.testing.assert_close(full_cov, cov[..., :, 0, :, 0])
    else:  # interleaved: (q, m) with m fastest
        torch.testing.assert_close(full_cov, cov.reshape(*shape[:-1], q * m, q * m))


def test_t_batches_are_independent(model_1):
    X = torch.rand(3, 2, 3, dtype=torch.float64)
    post = model_1.posterior(X)
    single = model_1.posterior(X[1])
    torch.testing.assert_close(post.mean[1], single.mean)
    torch.testing.assert_close(post.distribution.covariance_matrix[1], single.distribution.covariance_matrix)


def test_observation_noise(model_2):
    X = torch.rand(4, 3, dtype=torch.float64)
    base = model_2.posterior(X).variance
    noisy = model_2.posterior(X, observation_noise=True).variance
    stdv = model_2.outcome_transform.stdvs.squeeze(0)
    expected = model_2.z_noise_var * (model_2.y_scale * stdv).pow(2)
    torch.testing.assert_close(noisy - base, expected.expand(4, 2))
    given = torch.full((4, 2), 0.5, dtype=torch.float64)  # outcome-transformed space
    noisy_t = model_2.posterior(X, observation_noise=given).variance
    torch.testing.assert_close(noisy_t - base, (0.5 * stdv.pow(2)).expand(4, 2))


def test_output_indices_and_subset_output(model_2):
    X = torch.rand(2, 5, 3, dtype=torch.float64)
    full = model_2.posterior(X)
    one = model_2.posterior(X, output_indices=[1])
    torch.testing.assert_close(one.mean, full.mean[..., 1:])
    torch.testing.assert_close(one.variance, full.variance[..., 1:])
    sub = model_2.subset_output([1])
    assert sub.num_outputs == 1 and model_2.num_outputs == 2
    torch.testing.assert_close(sub.posterior(X).mean, one.mean)
    with pytest.raises(InputShapeError, match="output_indices"):
        model_2.posterior(X, output_indices=[2])


def test_x_gradients_match_finite_differences(model_1):
    X = torch.rand(3, 3, dtype=torch.float64, requires_grad=True)

    def f(x):
        post = model_1.posterior(x)
        return post.mean.squeeze(-1), post.distribution.covariance_matrix

    assert torch.autograd.gradcheck(f, (X,))


@pytest.mark.parametrize("structure", [Full(), Diagonal(), Kron()], ids=repr)
def test_condition_on_observations_equals_refit_at_same_linearisation(structure):
    model = fitted_model(structure=structure)
    X_new = torch.rand(3, 3, dtype=torch.float64) * 4 - 1
    Y_new = toy_data(3, 3, seed=7)[1]
    cond = model.condition_on_observations(X_new, Y_new)
    X_test = torch.rand(4, 3, dtype=torch.float64)
    # reference: GGN over the union of the data (same weights, same hyperparameters), Gaussian update
    la = model.laplace
    Xc = model.input_transform(X_new)
    Zc = (model.outcome_transform(Y_new)[0] - model.y_mean) / model.y_scale
    _, cov_c = la.predictive(torch.cat([Xc, model.input_transform(X_test)]))
    n = 3
    Kall = cov_c.reshape(n + 4, n + 4)
    noise = la.noise_std.pow(2)
    Kcc = Kall[:n, :n] + noise * torch.eye(n, dtype=torch.float64)
    Ktc = Kall[n:, :n]
    F_c = la.network(Xc)
    mean_z = la.network(model.input_transform(X_test)) + Ktc @ torch.linalg.solve(Kcc, Zc - F_c)
    cov_z = Kall[n:, n:] - Ktc @ torch.linalg.solve(Kcc, Ktc.T)
    s = model.y_scale * model.outcome_transform.stdvs.squeeze(0)
    mu0 = model.y_mean * model.outcome_transform.stdvs.squeeze(0) + model.outcome_transform.means.squeeze(0)
    post = cond.posterior(X_test)
    torch.testing.assert_close(post.mean.squeeze(-1), (mu0 + s * mean_z).squeeze(-1).detach())
    torch.testing.assert_close(post.distribution.covariance_matrix, (s**2 * cov_z).detach())
    if isinstance(structure, Full):
        # weight space: posterior precision H + J_cᵀ J_c / σ² gives the same covariance
        from labo.laplace.linearization.jacobians import output_and_jacobian

        _, Jc = output_and_jacobian(la.network, la.subset, Xc)
        _, Jt = output_and_jacobian(la.network, la.subset, model.input_transform(X_test))
        H = la.posterior_precision().precision() + Jc[:, 0].T @ Jc[:, 0] / noise
        cov_w = Jt[:, 0] @ torch.linalg.solve(H, Jt[:, 0].T)
        torch.testing.assert_close(post.distribution.covariance_matrix, (s**2 * cov_w).detach())
    # the original model is unchanged and the conditioned one has the data appended
    assert model.train_inputs[0].shape[0] == 20 and cond.train_inputs[0].shape[0] == 23


def test_fantasize_shapes_and_consistency(model_1):
    X = torch.rand(2, 1, 3, dtype=torch.float64)  # batch 2, one point each
    sampler = SobolQMCNormalSampler(sample_shape=torch.Size([5]), seed=0)
    fm = model_1.fantasize(X, sampler)
    assert fm.batch_shape == torch.Size([5, 2])
    X_test = torch.rand(2, 4, 3, dtype=torch.float64)
    post = fm.posterior(X_test)
    assert post.mean.shape == (5, 2, 4, 1)
    # fantasy posteriors have smaller variance than the original
    assert (post.variance <= model_1.posterior(X_test).variance + 1e-9).all()
    # conditioning one fantasy by hand gives the same posterior
    Y_f = fm._conditioning[1][3, 1]  # z-space targets of fantasy 3, batch 1
    ot = model_1.outcome_transform
    Y_orig = ot.untransform((Y_f * model_1.y_scale + model_1.y_mean).unsqueeze(0))[0][0]
    one = model_1.condition_on_observations(X[1], Y_orig)
    torch.testing.assert_close(one.posterior(X_test[1]).mean, post.mean[3, 1])


def test_deepcopy_state_dict_and_determinism(model_1):
    X = torch.rand(5, 3, dtype=torch.float64)
    ref = model_1.posterior(X)
    clone = copy.deepcopy(model_1)
    torch.testing.assert_close(clone.posterior(X).mean, ref.mean)
    buf = io.BytesIO()
    torch.save(model_1.state_dict(), buf)
    buf.seek(0)
    # a model built on the same data with another network's weights, then loaded
    other = LaplaceModel(
        model_1.train_inputs[0],
        toy_data()[1],
        network=small_net(3, 1, seed=5),
        input_transform=copy.deepcopy(model_1.input_transform),
        outcome_transform=copy.deepcopy(model_1.outcome_transform),
    )
    other.load_state_dict(torch.load(buf))
    torch.testing.assert_close(other.posterior(X).mean, ref.mean)
    torch.testing.assert_close(other.posterior(X).variance, ref.variance)
    again = fitted_model(m=1)
    torch.testing.assert_close(again.posterior(X).mean, ref.mean)
    torch.testing.assert_close(again.posterior(X).variance, ref.variance)


def test_float32():
    X, Y = toy_data()
    model = LaplaceModel(X.float(), Y.float(), network=small_net(3, 1).float())
    from labo.surrogates import fit_laplace_model

    fit_laplace_model(model, FAST)
    post = model.posterior(torch.rand(2, 3))
    assert post.mean.dtype == torch.float32 and torch.isfinite(post.variance).all()


def test_warm_refit_is_cheaper():
    X, Y = toy_data(40)
    from labo.surrogates import fit_laplace_model

    cold = fit_laplace_model(LaplaceModel(X[:30], Y[:30], network=small_net(3, 1)))
    warm = fit_laplace_model(LaplaceModel(X, Y, network=small_net(3, 1, seed=9), warm_start=cold))
    assert warm.fit_info["warm_start"] and not cold.fit_info["warm_start"]
    assert sum(warm.fit_info["train_steps"]) < sum(cold.fit_info["train_steps"])
    torch.testing.assert_close(warm.laplace.prior_precision, warm.fit_info["prior_precision"])


def test_map_training_ends_at_the_lowest_loss_weights():
    """Early stopping restores the best weights seen: a warm restart with a large step size
    (Adam's first steps move every weight by about lr) never ends worse than it started."""
    from labo.surrogates.fit import FitOptions, train_map

    model = fitted_model(n=40)
    with torch.no_grad():
        X = model.transform_inputs(model.train_inputs[0])
    Z = (model.train_targets - model.y_mean) / model.y_scale
    start = train_map(model, X, Z, FitOptions(), max_epochs=0)["loss"]
    before = [p.detach().clone() for p in model.network.parameters()]
    info = train_map(model, X, Z, FitOptions(optimizer="adam", lr=0.5, patience=5), max_epochs=50)
    assert info["loss"] <= start
    after = train_map(model, X, Z, FitOptions(), max_epochs=0)["loss"]
    assert after == pytest.approx(info["loss"], rel=1e-12)
    if info["loss"] == start:  # nothing better was found: the weights are the starting ones
        for p, q in zip(model.network.parameters(), before, strict=True):
            torch.testing.assert_close(p.detach(), q)


def test_constant_targets_and_duplicate_inputs_fit():
    X = torch.rand(6, 2, dtype=torch.float64).repeat(2, 1)
    Y = torch.full((12, 1), 3.0, dtype=torch.float64)
    from labo.surrogates import fit_laplace_model

    model = fit_laplace_model(LaplaceModel(X, Y, network=small_net(2, 1)), FAST)
    post = model.posterior(torch.rand(3, 2, dtype=torch.float64))
    assert torch.isfinite(post.mean).all() and torch.isfinite(post.variance).all()
    torch.testing.assert_close(post.mean, torch.full_like(post.mean, 3.0), atol=0.05, rtol=0)


def test_bad_input():
    X, Y = toy_data()
    with pytest.raises(InputShapeError, match=r"train_Y"):
        LaplaceModel(X, Y[:-1])
    with pytest.raises(InputDtypeError, match="dtype"):
        LaplaceModel(X, Y.float())
    Xn = X.clone()
    Xn[0, 0] = float("nan")
    with pytest.raises(NonFiniteInputError, match="NaN"):
        LaplaceModel(Xn, Y)
    Yn = Y.clone()
    Yn[1, 0] = float("inf")
    with pytest.raises(NonFiniteInputError, match="train_Y"):
        LaplaceModel(X, Yn)
    with pytest.raises(NonFiniteInputError, match="train_Yvar"):
        LaplaceModel(X, Y, -torch.ones_like(Y))
    model = LaplaceModel(X, Y, network=small_net(3, 1))
    with pytest.raises(NotFittedError):
        model.posterior(X[:2])
    from labo.surrogates import fit_laplace_model

    fit_laplace_model(model, FAST)
    with pytest.raises(InputShapeError, match=r"batch_shape x q x 3, got \(2, 4\)"):
        model.posterior(torch.rand(2, 4, dtype=torch.float64))


def _wide_inputs(n=12, d=2):
    """``n x d`` inputs in ``[100, 1000]`` (the issue's example) and targets."""
    g = torch.Generator().manual_seed(0)
    X = 100 + 900 * torch.rand(n, d, generator=g, dtype=torch.float64)
    return X, X.sum(-1, keepdim=True) / 1000


def test_inputs_off_the_unit_cube_without_transform_warn_like_botorch():
    X, Y = _wide_inputs()
    lo, hi = X[:, 0].min(), X[:, 0].max()
    with pytest.warns(InputDataWarning, match=r"input_transform=Normalize\(d=2\)") as record:
        LaplaceModel(X, Y)
    (warning,) = [w for w in record if issubclass(w.category, InputDataWarning)]
    message = str(warning.message)
    assert f"x0 in [{float(lo):.3g}, {float(hi):.3g}]" in message and "x1 in [" in message
    assert warning.filename == __file__  # points at the user's line, not at labo's internals


@pytest.mark.parametrize(
    "make_model",
    [
        lambda X, Y: LaplaceModel(X, Y, input_transform=Normalize(2)),  # the transform scales them
        lambda X, Y: LaplaceModel((X - 100) / 900, Y),  # already in the unit cube
        lambda X, Y: LaplaceModel(X / 1000 - 0.005, Y),  # within BoTorch's 1e-2 slack
    ],
    ids=["normalize", "unit-cube", "slack"],
)
def test_no_input_scaling_warning_when_inputs_are_scaled(make_model):
    X, Y = _wide_inputs()
    with warnings.catch_warnings():
        warnings.simplefilter("error", InputDataWarning)
        make_model(X, Y)


def test_input_scaling_warning_follows_botorchs_switch():
    X, Y = _wide_inputs()
    with warnings.catch_warnings(), settings.validate_input_scaling(False):
        warnings.simplefilter("error", InputDataWarning)
        LaplaceModel(X, Y)


def test_check_training_data_checks_scaling_only_when_told_the_transform():
    X, Y = _wide_inputs(d=5)
    with pytest.warns(InputDataWarning, match=r"x2 in \[.*\] and 2 more\).*Normalize\(d=5\)"):
        check_training_data(X, Y, None, input_transform=None)
    with warnings.catch_warnings():
        warnings.simplefilter("error", InputDataWarning)
        check_training_data(X, Y, None)  # transform unknown: no opinion
        check_training_data(X, Y, None, input_transform=Normalize(5))


def test_fixed_noise_train_yvar():
    X, Y = toy_data(20)
    Yvar = torch.full_like(Y, 0.01)
    from labo.surrogates import fit_laplace_model

    model = fit_laplace_model(LaplaceModel(X, Y, Yvar, network=small_net(3, 1)), FAST)
    assert bool(model.laplace.fixed_noise)
    Xt = torch.rand(3, 3, dtype=torch.float64)
    noisy = model.posterior(Xt, observation_noise=True).variance - model.posterior(Xt).variance
    torch.testing.assert_close(noisy, torch.full_like(noisy, 0.01))


def test_fit_gpytorch_mll_dispatches_to_laplace_fit():
    from botorch.fit import fit_gpytorch_mll
    from gpytorch.mlls import ExactMarginalLogLikelihood

    from labo.surrogates import LaplaceMarginalLogLikelihood

    X, Y = toy_data()
    model = LaplaceModel(X, Y, network=small_net(3, 1))
    mll = fit_gpytorch_mll(LaplaceMarginalLogLikelihood(model))
    assert model.is_fitted and not mll.training
    per_point = mll()
    torch.testing.assert_close(per_point, model.laplace.log_marginal_likelihood() / 20)
    # Ax's default mll class (ExactMarginalLogLikelihood) also reaches the Laplace fit
    other = LaplaceModel(X, Y, network=small_net(3, 1))
    fit_gpytorch_mll(ExactMarginalLogLikelihood(other.likelihood, other))
    assert other.is_fitted
    noise = other.laplace.noise_std.pow(2) * other.y_scale.pow(2)
    torch.testing.assert_close(other.likelihood.noise, noise.reshape(1).detach())


def test_optimal_samples_are_maxima_of_function_samples(model_1):
    from labo.acquisition import get_optimal_samples

    bounds = torch.tensor([[-1.0] * 3, [3.0] * 3], dtype=torch.float64)
    X_opt, f_opt = get_optimal_samples(model_1, bounds, num_optima=6, seed=0)
    assert X_opt.shape == (6, 3) and f_opt.shape == (6, 1)
    assert ((X_opt >= bounds[0]) & (X_opt <= bounds[1])).all()
    # each optimum is at least the posterior-sample value at the training inputs (part of the set)
    X_tr = model_1.train_inputs[0]
    z = model_1.laplace.predictive_samples(
        model_1.transform_inputs(X_tr), 6, torch.Generator().manual_seed(0), linearized=True
    )
    y = model_1.outcome_transform.untransform(model_1.y_mean + model_1.y_scale * z)[0][..., 0]
    assert (f_opt.squeeze(-1) >= y.max(-1).values - 1e-9).all()
