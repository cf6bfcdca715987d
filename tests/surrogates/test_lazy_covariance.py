"""The factored (lazy) posterior covariance equals the dense one, in values and x-gradients."""

import pytest
import torch
from botorch.acquisition import qLogNoisyExpectedImprovement
from botorch.sampling import SobolQMCNormalSampler

from labo.laplace import Diagonal, Full, Kron
from labo.surrogates import model_posterior as posterior_module
from labo.surrogates.lazy_covariance import LayerFactorCovariance, SharedHeadCovariance, shared_prefix_rows
from tests.surrogates.conftest import fitted_model


def _dense_posterior(model, X, monkeypatch):
    with monkeypatch.context() as m:
        m.setattr(posterior_module, "LAZY_MIN_ROWS", 10**9)
        return model.posterior(X)


@pytest.mark.parametrize("structure", [Kron(), Diagonal()], ids=repr)
def test_lazy_posterior_equals_dense(structure, monkeypatch):
    model = fitted_model(structure=structure)
    X = torch.rand(2, 70, 3, dtype=torch.float64, requires_grad=True)
    lazy = model.posterior(X)
    covar = lazy.distribution.lazy_covariance_matrix
    assert isinstance(covar, LayerFactorCovariance)
    dense = _dense_posterior(model, X, monkeypatch)
    C = dense.distribution.covariance_matrix
    torch.testing.assert_close(lazy.mean, dense.mean, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(covar.to_dense(), C, rtol=1e-10, atol=1e-12)
    # the rows BoTorch's cached-root path reads, without forming the whole matrix
    rows = covar[..., -4:, :]
    assert isinstance(rows, LayerFactorCovariance)
    torch.testing.assert_close(rows.to_dense(), C[..., -4:, :], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(covar[1, 3:9, 50:].to_dense(), C[1, 3:9, 50:], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(covar.mT[..., 2:5, :].to_dense(), C[..., 2:5, :], rtol=1e-10, atol=1e-12)
    rhs = torch.randn(2, 70, 3, dtype=torch.float64)
    torch.testing.assert_close(covar @ rhs, C @ rhs, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(covar.diagonal(dim1=-1, dim2=-2), C.diagonal(dim1=-1, dim2=-2))
    idx = torch.tensor([0, 5, 69])
    torch.testing.assert_close(covar[..., idx, idx], C[..., idx, idx], rtol=1e-10, atol=1e-12)
    expanded = covar.expand(3, 2, 70, 70)
    torch.testing.assert_close(expanded[..., -2:, :].to_dense(), C.expand(3, 2, 70, 70)[..., -2:, :])
    # x-gradients through the sliced rows and the dense matrix agree
    g_lazy = torch.autograd.grad(rows.to_dense().pow(2).sum() + lazy.mean.sum(), X)[0]
    g_dense = torch.autograd.grad(C[..., -4:, :].pow(2).sum() + dense.mean.sum(), X)[0]
    torch.testing.assert_close(g_lazy, g_dense, rtol=1e-9, atol=1e-11)


def test_small_q_and_other_structures_stay_dense():
    model = fitted_model(structure=Full())
    X = torch.rand(70, 3, dtype=torch.float64)
    assert not isinstance(model.posterior(X).distribution.lazy_covariance_matrix, LayerFactorCovariance)
    model = fitted_model(structure=Kron())
    assert not isinstance(model.posterior(X[:5]).distribution.lazy_covariance_matrix, LayerFactorCovariance)
    assert model._supports_cache_root and not fitted_model(m=2)._supports_cache_root


def test_cached_root_qlognei_matches_uncached():
    """With many baseline points qLogNEI reads only the candidate rows; the value agrees with
    the uncached joint sampling up to Monte-Carlo error (same Sobol base samples)."""
    model = fitted_model(n=80, structure=Kron())
    X_base = model.train_inputs[0]
    X = torch.rand(5, 2, 3, dtype=torch.float64) * 4 - 1
    vals = []
    for cache_root in (True, False):
        acq = qLogNoisyExpectedImprovement(
            model,
            X_baseline=X_base,
            prune_baseline=False,
            cache_root=cache_root,
            sampler=SobolQMCNormalSampler(torch.Size([4096]), seed=0),
        )
        assert acq._cache_root is cache_root
        vals.append(acq(X))
    torch.testing.assert_close(vals[0], vals[1], rtol=0.05, atol=0.05)


def test_shared_baseline_rows_are_computed_once_and_exact(monkeypatch):
    """qNEI-style inputs ``cat([X_base.expand(...), X])``: the baseline rows are shared across
    t-batches (computed once); values, covariance rows and x-gradients equal the unshared path."""
    model = fitted_model(n=40, structure=Kron())
    base = torch.rand(30, 3, dtype=torch.float64)
    Xc = torch.rand(6, 4, 3, dtype=torch.float64, requires_grad=True)
    X_full = torch.cat([base.expand(6, 30, 3), Xc], dim=-2)
    assert shared_prefix_rows(X_full) == 30
    post = model.posterior(X_full)
    covar = post.distribution.lazy_covariance_matrix
    assert isinstance(covar, SharedHeadCovariance)
    rows = covar[..., -4:, :].to_dense()
    # every other access goes through the joined factors: check them against the dense matrix
    C = _dense_posterior(model, X_full, monkeypatch).distribution.covariance_matrix
    torch.testing.assert_close(covar.to_dense(), C, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(rows, C[..., -4:, :], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(covar[..., 31:33, :].to_dense(), C[..., 31:33, :], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(covar[2, 3:9, 10:].to_dense(), C[2, 3:9, 10:], rtol=1e-10, atol=1e-12)
    rhs = torch.randn(6, 34, 2, dtype=torch.float64)
    torch.testing.assert_close(covar @ rhs, C @ rhs, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(covar.diagonal(dim1=-1, dim2=-2), C.diagonal(dim1=-1, dim2=-2))
    torch.testing.assert_close(covar.mT[..., -2:, :].to_dense(), C[..., -2:, :], rtol=1e-10, atol=1e-12)
    g = torch.autograd.grad(rows.pow(2).sum() + post.mean.pow(2).sum(), Xc)[0]
    with monkeypatch.context() as m:
        m.setattr(posterior_module, "shared_prefix_rows", lambda X: 0)
        ref = model.posterior(X_full)
        ref_rows = ref.distribution.lazy_covariance_matrix[..., -4:, :].to_dense()
        g_ref = torch.autograd.grad(ref_rows.pow(2).sum() + ref.mean.pow(2).sum(), Xc)[0]
    torch.testing.assert_close(post.mean, ref.mean, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(rows, ref_rows, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(g, g_ref, rtol=1e-10, atol=1e-12)


def test_shared_rows_only_where_gradients_cannot_tell():
    base = torch.rand(5, 3, dtype=torch.float64)
    # a leaf whose leading rows happen to agree across t-batches: each copy has its own gradient
    leaf = torch.cat([base.expand(4, 5, 3), torch.rand(4, 2, 3, dtype=torch.float64)], -2)
    assert shared_prefix_rows(leaf.clone().requires_grad_(True)) == 0
    # without autograd any common prefix is shared (values only)
    assert shared_prefix_rows(leaf) == 5
    with torch.no_grad():
        assert shared_prefix_rows(leaf.clone().requires_grad_(True)) == 5
    # the baseline piece requires grad: not shared
    b = base.clone().requires_grad_(True)
    Xc = torch.rand(4, 2, 3, dtype=torch.float64, requires_grad=True)
    assert shared_prefix_rows(torch.cat([b.expand(4, 5, 3), Xc], -2)) == 0
    # the prefix differs between t-batches: only the common rows
    other = torch.cat([base.expand(4, 5, 3).clone(), Xc], -2)
    with torch.no_grad():
        other[1, 3] += 1.0
    assert shared_prefix_rows(other.detach()) == 3
    # one t-batch: nothing to share
    assert shared_prefix_rows(leaf[:1]) == 0


def test_shared_rows_when_the_candidates_are_computed():
    """BoTorch's optimisers pass candidates through ``fix_features``, which builds them by
    slice assignment (a computed tensor, not a leaf): the candidates' shape gives the split."""
    from botorch.optim.utils import fix_features

    base = torch.rand(5, 3, dtype=torch.float64)
    Xc = torch.rand(4, 2, 3, dtype=torch.float64, requires_grad=True)
    built = fix_features(Xc[..., :2], {2: 0.5}, replace_current_value=False)  # CopySlices
    assert built.grad_fn is not None and built.shape == (4, 2, 3)
    assert shared_prefix_rows(torch.cat([base.expand(4, 5, 3), built], -2)) == 5
    assert shared_prefix_rows(torch.cat([base.expand(1, 5, 3), built[:1]], -2)) == 5  # one t-batch
    assert shared_prefix_rows(torch.cat([base.expand(4, 5, 3), 2.0 * Xc], -2)) == 5
    b = base.clone().requires_grad_(True)  # the baseline requires grad: never shared
    assert shared_prefix_rows(torch.cat([b.expand(4, 5, 3), built], -2)) == 0


def test_qlognei_value_and_gradient_with_shared_baseline(monkeypatch):
    """BoTorch's qLogNEI (cached root) gives the same values and x-gradients whether the
    baseline rows are shared across t-batches or recomputed in each."""
    model = fitted_model(n=60, structure=Kron())
    acq = qLogNoisyExpectedImprovement(
        model,
        X_baseline=model.train_inputs[0],
        prune_baseline=False,
        sampler=SobolQMCNormalSampler(torch.Size([64]), seed=0),
    )
    X = torch.rand(5, 3, 3, dtype=torch.float64, requires_grad=True)
    calls = []

    def spy(X_full):
        calls.append(shared_prefix_rows(X_full))
        return calls[-1]

    monkeypatch.setattr(posterior_module, "shared_prefix_rows", spy)
    value = acq(X)
    (grad,) = torch.autograd.grad(value.sum(), X)
    assert calls == [60]
    monkeypatch.setattr(posterior_module, "shared_prefix_rows", lambda X_full: 0)
    ref = acq(X)
    (ref_grad,) = torch.autograd.grad(ref.sum(), X)
    torch.testing.assert_close(value, ref, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-8, atol=1e-10)


def test_head_cache_reuses_only_identical_rows_and_model_state():
    """One t-batch per call (BoTorch's late L-BFGS iterations): the baseline rows' factors are
    kept across calls, and recomputed when the rows, the weights or the posterior change."""
    model = fitted_model(n=40, structure=Kron())
    base = torch.rand(25, 3, dtype=torch.float64)

    def rows_and_grad(head):
        Xc = torch.rand(1, 3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
        Xc.requires_grad_(True)
        X_full = torch.cat([head.expand(1, *head.shape), Xc], dim=-2)
        assert shared_prefix_rows(X_full) == head.shape[0]
        post = model.posterior(X_full)
        rows = post.distribution.lazy_covariance_matrix[..., -3:, :].to_dense()
        (g,) = torch.autograd.grad(rows.sum() + post.mean.sum(), Xc)
        return post.mean.detach(), rows.detach(), g, X_full.detach()

    first = rows_and_grad(base)
    cache = model.__dict__["_head_cache"]
    entry = cache._entry
    again = rows_and_grad(base.clone())
    assert cache._entry is entry  # reused: equal values
    for a, b in zip(first, again, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    # different rows: recomputed, and equal to the dense posterior
    other = rows_and_grad(base + 0.01)
    assert cache._entry is not entry
    C = model.posterior(other[3]).distribution.covariance_matrix  # one t-batch, no grad: unshared
    torch.testing.assert_close(other[1], C[..., -3:, :], rtol=1e-10, atol=1e-12)
    # new weights: recomputed
    entry = cache._entry
    with torch.no_grad():
        next(model.network.parameters()).mul_(1.01)
    rows_and_grad(base + 0.01)
    assert cache._entry is not entry


@pytest.mark.parametrize("weights", ["last", "all"])
def test_factor_root_is_exact_and_sampling_uses_it(weights, monkeypatch):
    """``R Rᵀ`` equals the dense covariance; where ``P < N`` samples are ``mean + R ε`` with
    the first ``P`` base samples, without forming the ``N x N`` matrix; else the dense path."""
    from labo.laplace import LastLayer
    from labo.surrogates.lazy_covariance import FactorMultivariateNormal

    kw = {"weights": LastLayer()} if weights == "last" else {"structure": Kron()}
    model = fitted_model(n=30, **kw)
    X = torch.rand(2, 40, 3, dtype=torch.float64)
    post = model.posterior(X)
    mvn = post.distribution
    covar = mvn.lazy_covariance_matrix
    assert isinstance(mvn, FactorMultivariateNormal) and covar.is_symmetric
    P = covar.root_rank
    assert P == (17 if weights == "last" else 16 * 4 + 16 * 17 + 17)
    R = covar.root_matmul(torch.eye(P, dtype=torch.float64).expand(2, P, P))
    C = _dense_posterior(model, X, monkeypatch).distribution.covariance_matrix
    torch.testing.assert_close(R @ R.mT, C, rtol=1e-10, atol=1e-12)
    base = torch.randn(5, 2, 40, dtype=torch.float64)
    if weights == "last":  # P = 17 < N = 40: factor root, no dense matrix
        with monkeypatch.context() as m:
            m.setattr(LayerFactorCovariance, "to_dense", lambda self: pytest.fail("dense matrix formed"))
            samples = mvn.rsample(torch.Size([5]), base_samples=base)
            free = mvn.rsample(torch.Size([3, 4]))
        expected = mvn.mean + (R @ base[..., :P].unsqueeze(-1)).squeeze(-1)
        torch.testing.assert_close(samples, expected, rtol=1e-10, atol=1e-12)
        assert free.shape == (3, 4, 2, 40) and torch.isfinite(free).all()
        # the empirical covariance of many free samples approaches C
        many = mvn.rsample(torch.Size([20000]))
        emp = torch.einsum("sbn,sbm->bnm", many - mvn.mean, many - mvn.mean) / 20000
        assert (emp - C).abs().max() < 0.05 * C.diagonal(dim1=-1, dim2=-2).max()
        # a small chunk size gives the same product
        m = pytest.MonkeyPatch()
        m.setattr("labo.surrogates.factor_covariance._ROOT_CHUNK", 20)
        try:
            torch.testing.assert_close(mvn.rsample(torch.Size([5]), base_samples=base), samples)
        finally:
            m.undo()
        with pytest.raises(RuntimeError, match="mean's shape"):
            mvn.rsample(torch.Size([5]), base_samples=base[..., :30])
    else:  # P = 353 > N = 40: GPyTorch's dense root, same samples as a plain MVN
        from gpytorch.distributions import MultivariateNormal

        ref = MultivariateNormal(mvn.mean, C).rsample(torch.Size([5]), base_samples=base)
        torch.testing.assert_close(mvn.rsample(torch.Size([5]), base_samples=base), ref, rtol=1e-6, atol=1e-8)


def test_pruning_with_the_factor_root_keeps_the_same_points():
    """BoTorch's prune_inferior_points over more points than the last layer has weights:
    the factor-root samples (exact) and the dense, jittered root find the same best points."""
    from botorch.acquisition.utils import prune_inferior_points

    from labo.laplace import LastLayer
    from labo.surrogates import lazy_covariance

    model = fitted_model(n=60, weights=LastLayer())
    X = model.train_inputs[0]
    kept = prune_inferior_points(model, X, num_samples=512)
    assert 1 <= kept.shape[0] <= X.shape[0]
    original = lazy_covariance.FactorMultivariateNormal._factor_root
    lazy_covariance.FactorMultivariateNormal._factor_root = lambda self: None
    try:
        dense_kept = prune_inferior_points(model, X, num_samples=512)
    finally:
        lazy_covariance.FactorMultivariateNormal._factor_root = original
    best = model.posterior(X).mean.argmax()
    assert (kept == X[best]).all(-1).any() and (dense_kept == X[best]).all(-1).any()
