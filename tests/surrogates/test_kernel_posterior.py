"""``FitOptions(posterior="kernel")``: the exact GP of the rff features' kernel as the
model's posterior, checked in float64 against the GP written out with dense matrices."""

from __future__ import annotations

import pytest
import torch
from botorch.acquisition.logei import qLogNoisyExpectedImprovement
from botorch.models.transforms import Normalize, Standardize
from botorch.optim import optimize_acqf
from botorch.sampling import SobolQMCNormalSampler

from labo.acquisition import get_optimal_samples, model_function_samples, thompson_candidates
from labo.bench.exact_kernel import exact_kernel_gp
from labo.exceptions import HyperparameterError, InputShapeError
from labo.surrogates import FitOptions, LaplaceModel, fit_laplace_model
from labo.surrogates import fit as fit_module
from labo.surrogates.kernel_posterior import KernelFunctionSamples, KernelPosterior, _solve_lower
from labo.surrogates.networks import rff_network, stationary_kernel

D64 = torch.float64
KERNEL = FitOptions(posterior="kernel", lengthscale_samples=0)  # the MAP-II lengthscales alone


def _data(n=18, d=3, m=1, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.rand(n, d, generator=g, dtype=D64) * 4 - 1
    cols = [(k + 1) * torch.sin(2 * X).sum(-1) + X[:, 0] * k for k in range(m)]
    Y = 10.0 + 3.0 * torch.stack(cols, -1) + 0.05 * torch.randn(n, m, generator=g, dtype=D64)
    return X, Y


def _model(X, Y, kernel="rbf", train_Yvar=None, options=KERNEL):
    d, m = X.shape[-1], Y.shape[-1]
    bounds = torch.tensor([[-1.0] * d, [3.0] * d], dtype=D64)
    model = LaplaceModel(
        X,
        Y,
        train_Yvar=train_Yvar,
        network=rff_network(d, m, n_features=64, dtype=D64, kernel=kernel),
        input_transform=Normalize(d, bounds=bounds),
        outcome_transform=Standardize(m),
    )
    return fit_laplace_model(model, options)


def _dense(model, X_train, Z_train, noise, Xs):
    """z-space GP posterior ``(mean (q,), cov (q, q))`` of one output, all dense."""
    features = model.network[0]
    ls = features.log_lengthscale.detach().exp()
    lam = float(model.laplace.prior_precision.mean())

    def k(A, B):
        return (stationary_kernel(features.kernel, torch.cdist(A / ls, B / ls).pow(2)) + 1.0) / lam

    K = k(X_train, X_train) + torch.diag(noise)
    kx = k(Xs, X_train)
    return kx @ torch.linalg.solve(K, Z_train), k(Xs, Xs) - kx @ torch.linalg.solve(K, kx.T)


def _z_train(model):
    with torch.no_grad():
        X_tf = model.transform_inputs(model.train_inputs[0])
    return X_tf, (model.train_targets - model.y_mean) / model.y_scale


@pytest.mark.parametrize("kernel", ["rbf", "matern52"])
def test_posterior_is_the_dense_gp_of_the_features_kernel(kernel):
    X, Y = _data()
    model = _model(X, Y, kernel)
    assert model.fit_info["posterior"] == "kernel"
    Xs = torch.rand(6, 3, dtype=D64) * 4 - 1
    X_tf, Z = _z_train(model)
    sigma2 = float(model.laplace.noise_std) ** 2
    with torch.no_grad():
        mean_z, cov_z = _dense(
            model, X_tf, Z[:, 0], torch.full((len(X),), sigma2, dtype=D64), model.transform_inputs(Xs)
        )
        post = model.posterior(Xs)
        noisy = model.posterior(Xs, observation_noise=True)
    sd = model.outcome_transform.stdvs.reshape(()) * model.y_scale.reshape(())
    mu = model.outcome_transform.means.reshape(()) + model.outcome_transform.stdvs.reshape(()) * model.y_mean
    assert torch.allclose(post.mean.squeeze(-1), mu + sd * mean_z, atol=1e-8)
    assert torch.allclose(post.distribution.covariance_matrix, sd**2 * cov_z, atol=1e-8)
    eye = torch.eye(6, dtype=D64)
    assert torch.allclose(noisy.distribution.covariance_matrix, sd**2 * (cov_z + sigma2 * eye), atol=1e-8)


def test_posterior_matches_the_exact_kernel_gp_and_its_acquisition_values():
    X, Y = _data(n=25, d=2)
    X = (X + 1) / 4  # the unit cube: no input transform here, as in exact_kernel_gp
    model = LaplaceModel(
        X, Y, network=rff_network(2, 1, n_features=64, dtype=D64), outcome_transform=Standardize(1)
    )
    fit_laplace_model(model, KERNEL)
    gp = exact_kernel_gp(model, X, Y)
    Xs = torch.rand(4, 5, 2, dtype=D64)
    with torch.no_grad():
        a, b = model.posterior(Xs), gp.posterior(Xs)
    assert torch.allclose(a.mean, b.mean, atol=1e-8)
    assert torch.allclose(a.distribution.covariance_matrix, b.distribution.covariance_matrix, atol=1e-8)
    torch.manual_seed(1)
    acq = qLogNoisyExpectedImprovement(model, X, prune_baseline=False)
    torch.manual_seed(1)
    acq_gp = qLogNoisyExpectedImprovement(gp, X, prune_baseline=False)
    cand = torch.rand(3, 2, 2, dtype=D64)
    assert torch.allclose(acq(cand), acq_gp(cand), atol=1e-5)
    bounds = torch.stack([X.min(0).values, X.max(0).values])
    best, value = optimize_acqf(acq, bounds, q=2, num_restarts=2, raw_samples=32)
    assert best.shape == (2, 2) and torch.isfinite(value)


def test_several_outputs_with_known_noise_are_independent_gps():
    X, Y = _data(m=2)
    Yvar = torch.tensor([1e-3, 4e-3], dtype=D64).expand_as(Y)
    model = _model(X, Y, train_Yvar=Yvar)
    assert model.fit_info["posterior"] == "kernel"
    Xs = torch.rand(4, 3, dtype=D64) * 4 - 1
    X_tf, Z = _z_train(model)
    with torch.no_grad():
        cov = model.posterior(Xs).distribution.covariance_matrix.reshape(4, 2, 4, 2)
        mean_z, cov_z = model.kernel_posterior.predictive(model.transform_inputs(Xs))
    assert torch.equal(cov[:, 0, :, 1], torch.zeros(4, 4, dtype=D64))
    noise = model.train_Yvar / model.y_scale.pow(2)
    for k in range(2):
        mean, c = _dense(model, X_tf, Z[:, k], noise[:, k], model.transform_inputs(Xs))
        assert torch.allclose(mean_z[:, k], mean, atol=1e-8)
        assert torch.allclose(cov_z[:, k, :, k], c, atol=1e-8)


def test_conditioning_and_fantasies_equal_the_gp_on_all_the_data():
    X, Y = _data()
    model = _model(X, Y)
    X_new = torch.rand(3, 3, dtype=D64) * 4 - 1
    Y_new = 10.0 + torch.randn(3, 1, dtype=D64)
    Xs = torch.rand(5, 3, dtype=D64) * 4 - 1
    conditioned = model.condition_on_observations(X_new, Y_new)
    sigma2 = float(model.laplace.noise_std) ** 2
    X_tf, Z = _z_train(conditioned)  # the training data now include the new rows
    with torch.no_grad():
        mean_z, cov_z = conditioned._z_predictive(model.transform_inputs(Xs))
        ref_mean, ref_cov = _dense(
            model, X_tf, Z[:, 0], torch.full((len(X_tf),), sigma2, dtype=D64), model.transform_inputs(Xs)
        )
    assert torch.allclose(mean_z[:, 0], ref_mean, atol=1e-8)
    assert torch.allclose(cov_z[:, 0, :, 0], ref_cov, atol=1e-8)
    sampler = SobolQMCNormalSampler(torch.Size([4]), seed=0)
    fantasy = model.fantasize(X_new, sampler=sampler)
    assert fantasy.batch_shape == torch.Size([4])
    with torch.no_grad():
        post = fantasy.posterior(Xs)
    assert post.mean.shape == (4, 5, 1)
    # Each fantasy is the GP conditioned on its own targets; all share one covariance.
    with torch.no_grad():
        Z_f = fantasy.conditioning[1][:, :, 0]
        X_all = torch.cat([model.transform_inputs(X), fantasy.conditioning[0]])
        for i in range(4):
            Z_all = torch.cat([_z_train(model)[1][:, 0], Z_f[i]])
            noise = torch.full((len(X_all),), sigma2, dtype=D64)
            mean, cov = _dense(model, X_all, Z_all, noise, model.transform_inputs(Xs))
            sd = model.outcome_transform.stdvs.reshape(()) * model.y_scale.reshape(())
            assert torch.allclose(post.distribution.covariance_matrix[i], sd**2 * cov, atol=1e-8)


def test_posterior_gradients_wrt_inputs_match_finite_differences():
    X, Y = _data(n=12, d=2)
    model = _model(X, Y, kernel="matern52")
    kp = model.kernel_posterior

    def f(Xs):
        mean, cov = kp.predictive(Xs)
        return mean, cov

    Xs = torch.rand(2, 3, 2, dtype=D64, requires_grad=True)
    assert torch.autograd.gradcheck(f, (Xs,))
    assert torch.autograd.gradcheck(lambda Xs: kp.predictive_variance(Xs), (Xs,))


def test_solve_lower_folds_the_batch_into_columns():
    g = torch.Generator().manual_seed(0)
    A = torch.randn(5, 5, generator=g, dtype=D64)
    L = torch.linalg.cholesky(A @ A.T + 5 * torch.eye(5, dtype=D64)).reshape(1, 5, 5)
    B = torch.randn(3, 4, 1, 5, 2, generator=g, dtype=D64)
    ref = torch.linalg.solve_triangular(L.expand(3, 4, 1, 5, 5), B, upper=False)
    assert torch.allclose(_solve_lower(L, B), ref, atol=1e-12)
    L2 = L.expand(4, 1, 5, 5).clone()
    assert torch.allclose(_solve_lower(L2, B), ref, atol=1e-12)
    # distinct factors in a middle dimension (members), t-batches folded around them
    M = torch.randn(4, 2, 5, 5, generator=g, dtype=D64)
    L3 = torch.linalg.cholesky(M @ M.transpose(-1, -2) + 5 * torch.eye(5, dtype=D64)).unsqueeze(-3)
    B3 = torch.randn(3, 1, 2, 1, 5, 6, generator=g, dtype=D64)  # (3, 1, 2, 1) against (4, 2, 1)
    ref3 = torch.linalg.solve_triangular(
        L3.expand(3, 4, 2, 1, 5, 5), B3.expand(3, 4, 2, 1, 5, 6), upper=False
    )
    torch.testing.assert_close(_solve_lower(L3, B3), ref3, rtol=0, atol=1e-12)


def test_the_default_posterior_and_the_features_posterior_above_the_row_limit(monkeypatch):
    X, Y = _data()
    assert FitOptions().posterior == "kernel" and FitOptions(evidence="features").posterior == "features"
    assert _model(X, Y, options=FitOptions()).kernel_posterior is not None
    assert _model(X, Y, options=FitOptions(posterior="features")).kernel_posterior is None
    monkeypatch.setattr(fit_module, "KERNEL_POSTERIOR_ROWS", 10)
    model = _model(X, Y)
    assert model.kernel_posterior is None and model.fit_info["posterior"] == "features"
    with torch.no_grad():
        mean, _ = model._z_predictive(model.transform_inputs(X[:3]))
        ref, _ = model.laplace.predictive(model.transform_inputs(X[:3]))
    assert torch.equal(mean, ref)


def test_a_refit_without_the_option_drops_the_kernel_posterior():
    X, Y = _data()
    model = _model(X, Y)
    assert model.kernel_posterior is not None
    fit_laplace_model(model, FitOptions(posterior="features"))
    assert model.kernel_posterior is None


def test_bad_options_and_shapes_raise_typed_errors():
    with pytest.raises(HyperparameterError, match="posterior must be one of"):
        FitOptions(posterior="gp")
    with pytest.raises(HyperparameterError, match="needs evidence='kernel'"):
        FitOptions(posterior="kernel", evidence="features")
    X = torch.rand(4, 2, dtype=D64)
    one = torch.ones((), dtype=D64)
    with pytest.raises(InputShapeError, match="as many rows"):
        KernelPosterior(
            "rbf", torch.ones(2, dtype=D64), X, torch.zeros(3, 1, dtype=D64), one, torch.ones(4, 1, dtype=D64)
        )
    with pytest.raises(InputShapeError, match="1 or 2 columns"):
        KernelPosterior(
            "rbf", torch.ones(2, dtype=D64), X, torch.zeros(4, 2, dtype=D64), one, torch.ones(4, 3, dtype=D64)
        )
    kp = KernelPosterior(
        "rbf", torch.ones(2, dtype=D64), X, torch.zeros(4, 1, dtype=D64), one, torch.ones(4, 1, dtype=D64)
    )
    with pytest.raises(InputShapeError, match="2 columns"):
        kp.predictive(torch.rand(3, 5, dtype=D64))


def test_pathwise_samples_have_the_posteriors_mean_and_their_own_exact_covariance():
    """Matheron's rule: mean exactly the posterior's; covariance the one the features'
    prior implies, which is the posterior's up to the features' kernel error."""
    X, Y = _data(n=10, d=2)
    model = _model(X, Y)
    kp, features = model.kernel_posterior, model.network[0]
    Xs = torch.rand(4, 2, dtype=D64)
    samples = KernelFunctionSamples(kp, features, 20000, torch.Generator().manual_seed(0))
    with torch.no_grad():
        f = samples(Xs)[..., 0]  # (s, 4)
        mean, cov = kp.predictive(Xs)
        # The covariance of f_s = g_s + k(x, X) A⁻¹ (Z − g_s(X) − ε) with Cov(g) = (ΦΦᵀ + 1) / λ:
        lam = kp.prior_precision

        def kphi(A, B):
            return (features(A) @ features(B).T + 1.0) / lam

        W = torch.linalg.solve(kp.kernel(kp.X, kp.X) + torch.diag(kp.noise_var[:, 0]), kp.kernel(kp.X, Xs))
        noise = torch.diag(kp.noise_var[:, 0])
        implied = (
            kphi(Xs, Xs) - kphi(Xs, kp.X) @ W - W.T @ kphi(kp.X, Xs) + W.T @ (kphi(kp.X, kp.X) + noise) @ W
        )
    emp_mean, emp_cov = f.mean(0), torch.cov(f.T)
    sd = implied.diagonal().sqrt()
    assert torch.allclose(emp_mean, mean[:, 0], atol=4 * float(sd.max()) / 20000**0.5)
    assert torch.allclose(emp_cov, implied, atol=0.05 * float(implied.diagonal().max()))
    assert torch.allclose(implied, cov[:, 0, :, 0], atol=0.15 * float(cov.diagonal(dim1=0, dim2=2).max()))
    # Deterministic, and paired evaluation is the diagonal of the full one.
    two = KernelFunctionSamples(kp, features, 3, torch.Generator().manual_seed(1))
    with torch.no_grad():
        full = two(Xs)
        assert torch.equal(full, two(Xs))
        paired = two.paired(Xs.expand(3, 4, 2))
    assert torch.allclose(paired, full, atol=1e-12)
    with pytest.raises(InputShapeError, match="paired evaluation"):
        two.paired(Xs.expand(2, 4, 2))


def test_thompson_sampling_on_a_kernel_posterior_model():
    X, Y = _data(n=12, d=2)
    model = _model(X, Y)
    bounds = torch.tensor([[-1.0, -1.0], [3.0, 3.0]], dtype=D64)
    gen = torch.Generator().manual_seed(0)
    cand = thompson_candidates(model, bounds, q=2, num_restarts=2, raw_samples=32, generator=gen)
    assert cand.shape == (2, 2) and bool(((cand >= bounds[0]) & (cand <= bounds[1])).all())
    samples = model_function_samples(model, 2, torch.Generator().manual_seed(0))
    assert isinstance(samples.samples, KernelFunctionSamples)
    Xs = torch.rand(3, 2, dtype=D64)
    pending = model.condition_on_observations(X[:2] + 0.01, Y[:2])
    cond = model_function_samples(pending, 2, torch.Generator().manual_seed(0))
    assert cond.samples.posterior.X.shape[0] == 14
    with torch.no_grad():
        assert samples(Xs).shape == (2, 3, 1) and torch.isfinite(cond(Xs)).all()


def test_optimal_samples_of_a_kernel_posterior_model_are_maxima_of_its_matheron_samples():
    X, Y = _data(n=12, d=2)
    model = _model(X, Y)
    bounds = torch.tensor([[-1.0, -1.0], [3.0, 3.0]], dtype=D64)
    X_opt, f_opt = get_optimal_samples(model, bounds, num_optima=5, seed=0)
    assert X_opt.shape == (5, 2) and f_opt.shape == (5, 1)
    samples = model_function_samples(model, 5, torch.Generator().manual_seed(0))
    with torch.no_grad():
        at_opt = samples.paired(X_opt.unsqueeze(-2))[..., 0, 0]
        at_train = samples(X)[..., 0]
    assert torch.allclose(at_opt, f_opt.squeeze(-1), atol=1e-9)
    assert (f_opt.squeeze(-1) >= at_train.max(-1).values - 1e-9).all()
