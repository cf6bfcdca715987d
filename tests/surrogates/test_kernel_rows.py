"""The kernel posterior's row path for BoTorch's baseline + candidates joints
(:mod:`labo.surrogates.kernel_rows`): the same mean, covariance, rows and gradients as the
dense path and as the explicit mixture of the members' joint covariances, in float64."""

from __future__ import annotations

import pytest
import torch
from botorch.acquisition import qLogNoisyExpectedImprovement
from botorch.models.transforms import Normalize, Standardize

from labo.surrogates import FitOptions, LaplaceModel, fit_laplace_model
from labo.surrogates import averaged_posterior as avg_mod
from labo.surrogates.averaged_posterior import AveragedKernelPosterior
from labo.surrogates.kernel_posterior import KernelPosterior
from labo.surrogates.kernel_rows import TailRowsCovariance, kernel_rows_prediction
from labo.surrogates.networks import rff_network
from tests import _reference as ref

D64 = torch.float64


def _model(samples: int, transforms: bool = True, n: int = 14, d: int = 3, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    X = torch.rand(n, d, generator=g, dtype=D64)
    X = 2.0 * X - 1.0 if transforms else X  # without a transform, inputs in the unit cube
    Y = 5.0 + 3.0 * torch.sin(3 * X).sum(-1, keepdim=True) + 0.05 * torch.randn(n, 1, generator=g, dtype=D64)
    extra = {"input_transform": Normalize(d), "outcome_transform": Standardize(1)} if transforms else {}
    model = LaplaceModel(X, Y, network=rff_network(d, 1, n_features=64, dtype=D64), **extra)
    opts = FitOptions(lengthscale_samples=samples, lengthscale_samples_min_rows=0)
    return fit_laplace_model(model, opts), X


def _joint(model, X_base: torch.Tensor, T: torch.Tensor):
    """The posterior of ``cat([X_base.expand(...), T], -2)``, built as BoTorch builds it."""
    return model.posterior(torch.cat([X_base.expand(*T.shape[:-2], *X_base.shape), T], -2))


def _dense(model, X_base: torch.Tensor, T: torch.Tensor):
    """The same joint through the dense path (a copy of the rows is no baseline ``cat``)."""
    return model.posterior(torch.cat([X_base.expand(*T.shape[:-2], *X_base.shape), T], -2).clone())


@pytest.mark.parametrize("samples", [0, 5])
@pytest.mark.parametrize("transforms", [True, False])
def test_rows_path_equals_the_dense_path_in_values_and_gradients(samples, transforms):
    model, X = _model(samples, transforms)
    want_type = AveragedKernelPosterior if samples else KernelPosterior
    assert isinstance(model.kernel_posterior, want_type)
    g = torch.Generator().manual_seed(1)
    T = torch.rand(4, 3, 3, generator=g, dtype=D64).requires_grad_(True)
    T2 = T.detach().clone().requires_grad_(True)
    lazy, dense = _joint(model, X[:9], T), _dense(model, X[:9], T2)
    covar = lazy.distribution.lazy_covariance_matrix
    assert isinstance(covar, TailRowsCovariance)
    assert not isinstance(dense.distribution.lazy_covariance_matrix, TailRowsCovariance)
    C = dense.distribution.covariance_matrix
    torch.testing.assert_close(lazy.mean, dense.mean, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(covar.to_dense(), C, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(lazy.variance, dense.variance, rtol=1e-10, atol=1e-12)
    rows = covar[..., -3:, :].to_dense()  # what sample_cached_cholesky reads
    torch.testing.assert_close(rows, C[..., -3:, :], rtol=1e-10, atol=1e-12)
    w = torch.randn(rows.shape, generator=g, dtype=D64)
    (g1,) = torch.autograd.grad((rows * w).sum() + lazy.mean.pow(2).sum(), T)
    (g2,) = torch.autograd.grad((C[..., -3:, :] * w).sum() + dense.mean.pow(2).sum(), T2)
    torch.testing.assert_close(g1, g2, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("entries", [avg_mod.MEMBER_BLOCK_ENTRIES, 100])  # one block; a block each
def test_rows_equal_the_explicit_mixture_of_the_members(monkeypatch, entries):
    monkeypatch.setattr(avg_mod, "MEMBER_BLOCK_ENTRIES", entries)
    members = ref.kernel_posterior_members(m=1)
    avg = AveragedKernelPosterior(members)
    assert len(avg.blocks) == (1 if entries > 100 else 3)
    g = torch.Generator().manual_seed(3)
    H, T = torch.rand(6, 3, generator=g, dtype=D64), torch.rand(2, 4, 3, generator=g, dtype=D64)
    Xf = torch.cat([H.expand(2, 6, 3), T], -2)
    # explicit moment matching of the members' dense joints
    outs = [p.predictive(Xf) for p in members]
    means = torch.stack([m[..., 0] for m, _ in outs])  # (S, 2, 10)
    covs = torch.stack([c[..., 0, :, 0] for _, c in outs])  # (S, 2, 10, 10)
    centre = means.mean(0)
    dev = means - centre
    want = covs.mean(0) + torch.einsum("sbi,sbj->bij", dev, dev) / len(members)
    mean, covar = kernel_rows_prediction(avg, Xf, 6)
    torch.testing.assert_close(mean, centre, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(covar[..., 6:, :].to_dense(), want[..., 6:, :], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(covar.to_dense(), want, rtol=1e-10, atol=1e-12)
    # one member alone: the plain posterior
    mean1, covar1 = kernel_rows_prediction(members[1], Xf, 6)
    torch.testing.assert_close(mean1, outs[1][0][..., 0], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(covar1.to_dense(), outs[1][1][..., 0, :, 0], rtol=1e-10, atol=1e-12)


def test_tail_rows_covariance_as_a_linear_operator():
    g = torch.Generator().manual_seed(4)
    A = torch.randn(8, 5, 5, generator=g, dtype=D64)
    full = A @ A.transpose(-1, -2)  # (8, 5, 5) symmetric; head = first 3 rows, the same in every batch
    full[:, :3, :3] = full[0, :3, :3]
    full = 0.5 * (full + full.transpose(-1, -2))
    op = TailRowsCovariance(full[0, :3, :3], full[:, 3:, :])
    assert op.shape == (8, 5, 5)
    torch.testing.assert_close(op.to_dense(), full)
    torch.testing.assert_close(op[..., 3:, :].to_dense(), full[..., 3:, :])
    torch.testing.assert_close(op[..., 4:5, :].to_dense(), full[..., 4:5, :])
    torch.testing.assert_close(op[..., :2, :].to_dense(), full[..., :2, :])  # head rows: via the dense matrix
    torch.testing.assert_close(op[1].to_dense(), full[1])
    rhs = torch.randn(8, 5, 2, generator=g, dtype=D64)
    torch.testing.assert_close(op @ rhs, full @ rhs)
    torch.testing.assert_close(op.diagonal(dim1=-2, dim2=-1), full.diagonal(dim1=-2, dim2=-1))
    torch.testing.assert_close(op.mT.to_dense(), full)
    torch.testing.assert_close(op.expand(2, 8, 5, 5).to_dense(), full.expand(2, 8, 5, 5))


def test_baseline_terms_are_kept_across_calls_and_dropped_by_a_refit():
    model, X = _model(4)
    g = torch.Generator().manual_seed(5)
    T = torch.rand(3, 2, 3, generator=g, dtype=D64).requires_grad_(True)
    _joint(model, X[:8], T)
    cache = model.kernel_posterior.__dict__["_head_rows_cache"]
    entry = cache._entry
    _joint(model, X[:8], torch.rand(3, 2, 3, generator=g, dtype=D64).requires_grad_(True))
    assert cache._entry is entry  # the same baseline: reused
    other = _joint(model, X[:7], T)  # another baseline: recomputed, and still exact
    assert cache._entry is not entry
    torch.testing.assert_close(other.mean, _dense(model, X[:7], T).mean, rtol=1e-10, atol=1e-10)
    X2 = torch.cat([X, X[:3] * 0.5])
    Y2 = 5.0 + 3.0 * torch.sin(3 * X2).sum(-1, keepdim=True)
    refit = LaplaceModel(
        X2, Y2, network=rff_network(3, 1, n_features=64, dtype=D64),
        input_transform=Normalize(3), outcome_transform=Standardize(1),
    )  # fmt: skip
    refit = fit_laplace_model(refit, FitOptions(lengthscale_samples=4, lengthscale_samples_min_rows=0))
    lazy, dense = _joint(refit, X[:8], T), _dense(refit, X[:8], T)
    torch.testing.assert_close(lazy.distribution.covariance_matrix, dense.distribution.covariance_matrix)


@pytest.mark.parametrize("cache_root", [True, False])  # False: samples of the whole joint (rsample)
@pytest.mark.parametrize("samples", [0, 5])
def test_qlognei_with_the_cached_root_matches_the_dense_path(samples, cache_root):
    model, X = _model(samples, n=16)
    acqf = qLogNoisyExpectedImprovement(model, X_baseline=X, prune_baseline=False, cache_root=cache_root)
    g = torch.Generator().manual_seed(6)
    Xc = torch.rand(5, 2, 3, generator=g, dtype=D64).requires_grad_(True)
    value = acqf(Xc)
    (grad,) = torch.autograd.grad(value.sum(), Xc)
    model._lazy_posterior = lambda X_tf, X: None  # the dense path on this instance
    Xc2 = Xc.detach().clone().requires_grad_(True)
    value2 = acqf(Xc2)
    (grad2,) = torch.autograd.grad(value2.sum(), Xc2)
    torch.testing.assert_close(value, value2, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(grad, grad2, rtol=1e-7, atol=1e-9)


def test_rows_path_through_fix_features_gradients():
    """Candidates built by BoTorch's ``fix_features`` (as ``optimize_acqf`` passes them)
    take the row path, with the dense path's gradient w.r.t. the free features."""
    from botorch.optim.utils import fix_features

    model, X = _model(4)
    g = torch.Generator().manual_seed(7)
    free = torch.rand(3, 2, 2, generator=g, dtype=D64).requires_grad_(True)
    free2 = free.detach().clone().requires_grad_(True)
    T, T2 = (fix_features(f, {1: 0.3}, replace_current_value=False) for f in (free, free2))
    lazy, dense = _joint(model, X[:8], T), _dense(model, X[:8], T2)
    assert isinstance(lazy.distribution.lazy_covariance_matrix, TailRowsCovariance)
    rows = lazy.distribution.lazy_covariance_matrix[..., -2:, :].to_dense()
    C = dense.distribution.covariance_matrix[..., -2:, :]
    torch.testing.assert_close(rows, C, rtol=1e-10, atol=1e-12)
    (g1,) = torch.autograd.grad(rows.sum() + lazy.mean.sum(), free)
    (g2,) = torch.autograd.grad(C.sum() + dense.mean.sum(), free2)
    torch.testing.assert_close(g1, g2, rtol=1e-9, atol=1e-11)


def test_qlognei_with_pending_points_matches_the_dense_path():
    """Pending points join the candidates (a computed cat), after the shared baseline."""
    model, X = _model(5, n=16)
    g = torch.Generator().manual_seed(8)
    pending = torch.rand(2, 3, generator=g, dtype=D64)
    acqf = qLogNoisyExpectedImprovement(model, X_baseline=X, prune_baseline=False, X_pending=pending)
    Xc = torch.rand(4, 2, 3, generator=g, dtype=D64).requires_grad_(True)
    seen, rows_path = [], model._lazy_posterior

    def spy(X_tf, X_):
        post = rows_path(X_tf, X_)
        seen.append((X_.shape, type(post.distribution.lazy_covariance_matrix)))
        return post

    model._lazy_posterior = spy
    value = acqf(Xc)
    (grad,) = torch.autograd.grad(value.sum(), Xc)
    assert seen == [(torch.Size([4, 20, 3]), TailRowsCovariance)]  # 16 baseline, 2 candidates, 2 pending
    model._lazy_posterior = lambda X_tf, X_: None
    Xc2 = Xc.detach().clone().requires_grad_(True)
    value2 = acqf(Xc2)
    (grad2,) = torch.autograd.grad(value2.sum(), Xc2)
    torch.testing.assert_close(value, value2, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(grad, grad2, rtol=1e-7, atol=1e-9)
