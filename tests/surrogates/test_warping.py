"""The fitted Yeo-Johnson outcome transform (:class:`labo.surrogates.warping.YeoJohnson`)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from botorch.acquisition import qLogNoisyExpectedImprovement
from botorch.posteriors import GPyTorchPosterior, TransformedPosterior
from botorch.sampling import SobolQMCNormalSampler
from gpytorch.distributions import MultitaskMultivariateNormal, MultivariateNormal
from scipy import stats

from labo.exceptions import HyperparameterError, InputShapeError, NonFiniteInputError, NotFittedError
from labo.surrogates import LaplaceModel, fit_laplace_model
from labo.surrogates.warping import POWER_RANGE, YeoJohnson, fit_power, yeo_johnson, yeo_johnson_inverse

D64 = torch.float64


def _targets(seed: int = 0, n: int = 30) -> torch.Tensor:
    """Two outputs: a long tail of bad values, and a few high peaks."""
    g = torch.Generator().manual_seed(seed)
    return torch.cat(
        [
            -torch.exp(torch.randn(n, 1, generator=g, dtype=D64)),
            torch.exp(torch.randn(n, 1, generator=g, dtype=D64)),
        ],
        dim=1,
    )


@pytest.mark.parametrize("lam", [-1.5, 0.0, 0.5, 1.0, 2.0, 3.0])
def test_the_transform_matches_scipy_and_inverts(lam):
    z = torch.linspace(-3, 3, 41, dtype=D64)
    w = yeo_johnson(z, torch.tensor(lam, dtype=D64))
    assert np.allclose(w.numpy(), stats.yeojohnson(z.numpy(), lmbda=lam), atol=1e-12)
    assert torch.allclose(yeo_johnson_inverse(w, torch.tensor(lam, dtype=D64)), z, atol=1e-10)


def test_the_transform_is_differentiable():
    lam = torch.tensor(2.7, dtype=D64)
    z = torch.tensor([-1.3, -0.2, 0.4, 2.1], dtype=D64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda v: yeo_johnson(v, lam), (z,))
    w = yeo_johnson(z, lam).detach().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda v: yeo_johnson_inverse(v, lam), (w,))


def test_forward_fits_per_output_and_untransform_inverts():
    Y = _targets()
    tf = YeoJohnson(2)
    W, _ = tf(Y)
    y = Y.numpy()
    z = (y - y.mean(0)) / y.std(0)
    assert tf.powers[0] > 1.0 > tf.powers[1]  # the bad tail compressed; the peaks too (free exponent)
    for j in range(2):
        assert tf.powers[j] == pytest.approx(fit_power(z[:, j]))
        assert np.allclose(W[:, j].numpy(), stats.yeojohnson(z[:, j], lmbda=float(tf.powers[j])), atol=1e-10)
    tf.eval()
    back, _ = tf.untransform(W)
    assert torch.allclose(back, Y, atol=1e-10)
    assert torch.equal(tf(Y)[0], W)  # eval mode: no refit


def test_min_power_keeps_the_good_values_linear():
    tf = YeoJohnson(2, min_power=1.0)
    tf(_targets())
    assert tf.powers[0] > 1.0 and tf.powers[1] == 1.0


def test_known_noise_is_mapped_to_first_order():
    Y, Yvar = _targets(1), torch.full((30, 2), 1e-6, dtype=D64)
    tf = YeoJohnson(2)
    W, Wvar = tf(Y, Yvar)
    eps = 1e-4  # finite differences of the fitted map
    tf.eval()
    slope = (tf(Y + eps)[0] - tf(Y - eps)[0]) / (2 * eps)
    assert torch.allclose(Wvar, Yvar * slope.pow(2), rtol=1e-6)
    _, back = tf.untransform(W, Wvar)
    assert torch.allclose(back, Yvar, rtol=1e-6)


def test_the_posterior_in_raw_units_matches_monte_carlo():
    tf = YeoJohnson(2)
    tf(_targets(2))
    tf.eval()
    mean = torch.tensor([[0.3, -0.5], [-1.2, 1.0], [0.0, 0.2]], dtype=D64)
    sd = torch.tensor([[0.4, 0.6], [0.9, 0.3], [0.2, 1.1]], dtype=D64)
    raw = tf.untransform_posterior(_multi(mean, sd))
    assert isinstance(raw, TransformedPosterior)
    g = torch.Generator().manual_seed(0)
    draws = tf._inverse(mean + sd * torch.randn(200_000, 3, 2, generator=g, dtype=D64))
    assert torch.allclose(raw.mean, draws.mean(0), rtol=0.01, atol=0.01 * draws.std(0).max())
    assert torch.allclose(raw.variance, draws.var(0), rtol=0.05)
    samples = raw.rsample(torch.Size([4]))
    assert samples.shape == (4, 3, 2) and torch.isfinite(samples).all()


def _multi(mean: torch.Tensor, sd: torch.Tensor) -> GPyTorchPosterior:
    """Independent outputs with marginal means ``mean`` and sds ``sd`` (``n x m``)."""
    return GPyTorchPosterior(MultitaskMultivariateNormal(mean, torch.diag(sd.reshape(-1).pow(2))))


def test_samples_beyond_the_inverse_domain_stay_finite_and_clamped():
    tf = YeoJohnson(1)
    tf(_targets(3)[:, :1])
    tf.eval()
    lam = float(tf.powers)
    assert lam > 2.0  # the negative branch of the inverse is bounded below at -1/(lam - 2)
    W = torch.tensor([[-1.0 / (lam - 2) - 5.0], [-50.0], [0.0]], dtype=D64, requires_grad=True)
    out, _ = tf.untransform(W)
    assert torch.isfinite(out).all()
    lowest = tf.z_low * tf.stdvs + tf.means
    assert torch.allclose(out[:2, 0], lowest.expand(2))
    out.sum().backward()
    assert torch.isfinite(W.grad).all()


@pytest.mark.parametrize(
    ("call", "error"),
    [
        (lambda: YeoJohnson(0), HyperparameterError),
        (lambda: YeoJohnson(2)(torch.zeros(5, 3, dtype=D64)), InputShapeError),
        (lambda: YeoJohnson(1)(torch.zeros(1, 1, dtype=D64)), InputShapeError),
        (lambda: YeoJohnson(1)(torch.tensor([[1.0], [float("inf")]], dtype=D64)), NonFiniteInputError),
        (lambda: YeoJohnson(1).untransform(torch.zeros(3, 1, dtype=D64)), NotFittedError),
    ],
)
def test_bad_input_gets_a_typed_error(call, error):
    with pytest.raises(error, match="YeoJohnson"):
        call()


def test_a_laplace_model_with_the_warp_proposes_with_qlognei():
    g = torch.Generator().manual_seed(4)
    X = torch.rand(12, 2, generator=g, dtype=D64)
    Y = -torch.exp(3 * (X - 0.3).pow(2).sum(-1, keepdim=True))
    model = fit_laplace_model(LaplaceModel(X, Y, outcome_transform=YeoJohnson(1)))
    assert model.outcome_transform.powers.item() != 1.0
    post = model.posterior(X[:3])
    assert isinstance(post, TransformedPosterior)
    assert torch.allclose(post.mean, Y[:3], atol=0.1 * Y.std())  # interpolates its data, in raw units
    acqf = qLogNoisyExpectedImprovement(model, X_baseline=X, prune_baseline=True, cache_root=False)
    Xq = torch.rand(3, 2, 2, generator=g, dtype=D64, requires_grad=True)
    value = acqf(Xq)
    value.sum().backward()
    assert torch.isfinite(value).all() and torch.isfinite(Xq.grad).all()
    assert POWER_RANGE[0] <= model.outcome_transform.powers.item() <= POWER_RANGE[1]


@pytest.mark.parametrize("interleaved", [True, False])
def test_the_linearized_posterior_is_the_delta_method(interleaved):
    tf = YeoJohnson(2, linearized=True)
    tf(_targets(5))
    tf.eval()
    g = torch.Generator().manual_seed(6)
    mean = 0.5 * torch.randn(3, 2, generator=g, dtype=D64)
    A = torch.randn(6, 6, generator=g, dtype=D64)
    cov = A @ A.T / 6 + 1e-3 * torch.eye(6, dtype=D64)
    mvn = MultitaskMultivariateNormal(mean, cov, interleaved=interleaved)
    raw = tf.untransform_posterior(GPyTorchPosterior(mvn))
    assert type(raw) is GPyTorchPosterior
    assert torch.allclose(raw.mean, tf.untransform(mean)[0], atol=1e-12)
    jac = torch.autograd.functional.jacobian(lambda v: tf.untransform(v)[0], mean)  # 3x2x3x2, diagonal
    slopes = jac.reshape(6, 6).diagonal().reshape(3, 2)
    order = slopes.reshape(-1) if interleaved else slopes.T.reshape(-1)
    expected = order[:, None] * cov * order[None, :]
    assert torch.allclose(raw.distribution.covariance_matrix, expected, atol=1e-10)
    one = YeoJohnson(1, linearized=True)
    one(_targets(5)[:, :1])
    one.eval()
    single = one.untransform_posterior(GPyTorchPosterior(MultivariateNormal(mean[:, 0], cov[:3, :3])))
    d = torch.autograd.functional.jacobian(
        lambda v: one.untransform(v.unsqueeze(-1))[0].squeeze(-1), mean[:, 0]
    )
    assert torch.allclose(single.distribution.covariance_matrix, d @ cov[:3, :3] @ d.T, atol=1e-10)


def test_a_laplace_model_with_the_linearized_warp_keeps_a_gaussian_posterior():
    g = torch.Generator().manual_seed(7)
    X = torch.rand(12, 2, generator=g, dtype=D64)
    Y = -torch.exp(3 * (X - 0.3).pow(2).sum(-1, keepdim=True))
    model = fit_laplace_model(LaplaceModel(X, Y, outcome_transform=YeoJohnson(1, linearized=True)))
    post = model.posterior(torch.rand(4, 3, 2, generator=g, dtype=D64))
    assert type(post) is GPyTorchPosterior and post.mean.shape == (4, 3, 1)
    assert model.outcome_transform._is_linear and not YeoJohnson(1)._is_linear
    Xq = torch.rand(3, 2, 2, generator=g, dtype=D64, requires_grad=True)
    values, grads = [], []
    for cache_root in (False, True):  # the cached baseline root: the same values, to Monte Carlo error
        sampler = SobolQMCNormalSampler(torch.Size([32768]), seed=0)
        acqf = qLogNoisyExpectedImprovement(
            model, X_baseline=X, sampler=sampler, prune_baseline=False, cache_root=cache_root
        )
        assert acqf._cache_root is cache_root
        value = acqf(Xq)
        (grad,) = torch.autograd.grad(value.sum(), Xq)
        values.append(value.detach())
        grads.append(grad)
    assert torch.isfinite(grads[0]).all()
    assert torch.allclose(values[0], values[1], rtol=0.02)
    assert torch.allclose(grads[0], grads[1], rtol=0.1, atol=0.02 * grads[0].abs().max())
