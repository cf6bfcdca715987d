"""Function samples of a lengthscale-averaged kernel posterior (``FitOptions(lengthscale_samples=S)``):
each function is a pathwise sample of one member, so the samples follow the mixture. Checked
in float64 against the members rebuilt explicitly and the covariance the features imply."""

from __future__ import annotations

import pytest
import torch
from botorch.models.transforms import Normalize, Standardize

from labo.acquisition import model_function_samples, thompson_candidates
from labo.exceptions import InputShapeError
from labo.surrogates import FitOptions, LaplaceModel, fit_laplace_model
from labo.surrogates import averaged_posterior as avg_mod
from labo.surrogates.averaged_posterior import AveragedKernelPosterior, MixtureFunctionSamples
from labo.surrogates.networks import rff_network
from tests import _reference as ref

D64 = torch.float64


def _data(n=12, d=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.rand(n, d, generator=g, dtype=D64)
    return X, 3.0 * torch.sin(4 * X).sum(-1, keepdim=True) + 0.05 * torch.randn(n, 1, generator=g, dtype=D64)


def _model(n=12, d=2, samples=6):
    X, Y = _data(n, d)
    model = LaplaceModel(
        X,
        Y,
        network=rff_network(d, 1, n_features=64, dtype=D64),
        input_transform=Normalize(d),
        outcome_transform=Standardize(1),
    )
    return fit_laplace_model(model, FitOptions(lengthscale_samples=samples, lengthscale_samples_min_rows=0))


@pytest.mark.parametrize("entries", [avg_mod.MEMBER_BLOCK_ENTRIES, 100])  # one block; a block each
def test_members_are_rebuilt_from_the_blocks_also_after_conditioning(monkeypatch, entries):
    monkeypatch.setattr(avg_mod, "MEMBER_BLOCK_ENTRIES", entries)
    explicit = ref.kernel_posterior_members(m=2)
    avg = AveragedKernelPosterior(explicit)
    assert len(avg.blocks) == (1 if entries > 100 else 3)
    Xs = torch.rand(5, 3, dtype=D64)
    g = torch.Generator().manual_seed(2)
    X_new, Z_new = torch.rand(2, 3, generator=g, dtype=D64), torch.randn(2, 2, generator=g, dtype=D64)
    noise_new = torch.full((2, 1), 0.05, dtype=D64)
    conditioned = avg.condition(X_new, Z_new, noise_new)
    for got, want in zip(avg.members(), explicit, strict=True):
        for a, b in zip(got.predictive(Xs), want.predictive(Xs), strict=True):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    for got, want in zip(conditioned.members(), explicit, strict=True):
        want = want.condition(X_new, Z_new, noise_new)
        assert got.X.shape == (12, 3)
        for a, b in zip(got.predictive(Xs), want.predictive(Xs), strict=True):
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)
    fantasies = avg.condition(X_new.expand(4, 2, 3), Z_new.expand(4, 2, 2), noise_new)
    with pytest.raises(InputShapeError, match="unbatched"):
        fantasies.members()


def test_mixture_samples_have_the_mixtures_mean_and_covariance():
    """Each function is one member's Matheron sample: over many draws the samples have the
    mixture's mean and the mixture of the covariances the features imply per member."""
    model = _model()
    avg, features = model.kernel_posterior, model.network[0]
    s = 20000
    samples = MixtureFunctionSamples(avg, features, s, torch.Generator().manual_seed(0))
    assert samples.num_samples == s and len(samples.groups) == avg.num_members
    Xs = torch.rand(4, 2, dtype=D64)
    with torch.no_grad():
        f = samples(Xs)[..., 0]  # (s, 4)
        mean, cov = avg.predictive(Xs)
        means, second = [], torch.zeros(4, 4, dtype=D64)
        for group in samples.groups:  # written out per member, weighted by its share of draws
            kp, w = group.posterior, group.num_samples / s
            params = dict(features.named_parameters())
            params["log_lengthscale"] = -kp.inv_lengthscale.log()

            def phi(A, params=params):
                return torch.func.functional_call(features, params, (A,))

            def kphi(A, B, phi=phi, lam=kp.prior_precision):
                return (phi(A) @ phi(B).T + 1.0) / lam

            noise = torch.diag(kp.noise_var[:, 0])
            W = torch.linalg.solve(kp.kernel(kp.X, kp.X) + noise, kp.kernel(kp.X, Xs))
            implied = (
                kphi(Xs, Xs)
                - kphi(Xs, kp.X) @ W
                - W.T @ kphi(kp.X, Xs)
                + W.T @ (kphi(kp.X, kp.X) + noise) @ W
            )
            mu = kp.predictive(Xs)[0][:, 0]
            means.append(w * mu)
            second += w * (implied + torch.outer(mu, mu))
        mix_mean = torch.stack(means).sum(0)
        mix_cov = second - torch.outer(mix_mean, mix_mean)
    sd = mix_cov.diagonal().sqrt()
    assert torch.allclose(f.mean(0), mix_mean, atol=4 * float(sd.max()) / s**0.5)
    assert torch.allclose(torch.cov(f.T), mix_cov, atol=0.05 * float(mix_cov.diagonal().max()))
    # the draws' shares only approximate uniform weights; the moment-matched predictive agrees
    assert torch.allclose(mix_mean, mean[:, 0], atol=0.05 * float(sd.max()))
    assert torch.allclose(mix_cov, cov[:, 0, :, 0], atol=0.2 * float(mix_cov.diagonal().max()))


def test_mixture_samples_are_deterministic_and_paired_is_the_diagonal():
    model = _model()
    samples = MixtureFunctionSamples(
        model.kernel_posterior, model.network[0], 5, torch.Generator().manual_seed(1)
    )
    Xs = torch.rand(3, 2, dtype=D64)
    with torch.no_grad():
        full = samples(Xs)
        assert full.shape == (5, 3, 1) and torch.equal(full, samples(Xs))
        torch.testing.assert_close(samples.paired(Xs.expand(5, 3, 2)), full, rtol=0, atol=1e-12)
    with pytest.raises(InputShapeError, match="paired evaluation"):
        samples.paired(Xs.expand(4, 3, 2))


def test_thompson_sampling_and_pending_points_with_lengthscale_samples():
    model = _model(n=14)
    assert isinstance(model.kernel_posterior, AveragedKernelPosterior)
    bounds = torch.tensor([[0.0, 0.0], [1.0, 1.0]], dtype=D64)
    cand = thompson_candidates(
        model, bounds, q=3, num_restarts=2, raw_samples=32, generator=torch.Generator().manual_seed(0)
    )
    assert cand.shape == (3, 2) and bool(((cand >= 0) & (cand <= 1)).all())
    samples = model_function_samples(model, 4, torch.Generator().manual_seed(0))
    assert isinstance(samples.samples, MixtureFunctionSamples)
    X, Y = _data(n=14)
    pending = model.condition_on_observations(X[:2] + 0.01, Y[:2])
    cond = model_function_samples(pending, 4, torch.Generator().manual_seed(0))
    assert all(group.posterior.X.shape[0] == 16 for group in cond.samples.groups)
    with torch.no_grad():
        values = cond(torch.rand(3, 2, dtype=D64))
    assert values.shape == (4, 3, 1) and torch.isfinite(values).all()
