"""Exact conditioning: function-space Cholesky block update and weight-space Woodbury.

References are dense (explicit Jacobians with jacrev, explicit precisions and inverses):
the conditioned precision is ``H + J_cᵀ J_c / σ²``, which for Full and Functional is the
exact GGN posterior refitted on the union of the data at the same weights.
"""

import pytest
import torch

from labo.exceptions import HyperparameterError, InputShapeError, NonFiniteInputError
from labo.laplace import AllWeights, Diagonal, Full, Functional, Kron, WeightMask, fit_laplace
from labo.laplace.predictive.conditioning import WoodburyPrecision, condition
from labo.laplace.structures.functional import FunctionalPrecision
from labo.laplace.structures.functional_update import ExtendedFunctionalPrecision, extend_functional
from tests._reference import dense_precision, subset_jacobian
from tests.conftest import make_problem

PRIOR, NOISE = 2.0, 0.5
NAME = {"Full()": "full", "Diagonal()": "diagonal", "Kron()": "kron", "Functional()": "functional"}


def _mask(net):
    masks = {
        n: torch.rand(p.shape, generator=torch.Generator().manual_seed(0)) < 0.5
        for n, p in net.named_parameters()
    }
    return WeightMask(masks)


def _setup(structure, weights="all", K=2, n_c=3, seed=0):
    net, X, Y = make_problem("regression", (2, 5, K), n=10, seed=seed)
    w = AllWeights() if weights == "all" else _mask(net)
    la = fit_laplace(net, X, Y, weights=w, structure=structure, prior_precision=PRIOR, noise_std=NOISE)
    g = torch.Generator().manual_seed(seed + 10)
    Xc = torch.randn(n_c, 2, generator=g, dtype=torch.float64)
    Yc = torch.randn(n_c, K, generator=g, dtype=torch.float64)
    Xt = torch.randn(4, 2, generator=g, dtype=torch.float64)
    return la, net, X, Y, Xc, Yc, Xt


def _reference(la, net, X, Y, Xc, Yc, Xt, structure):
    p, s = torch.tensor(PRIOR, dtype=torch.float64), torch.tensor(NOISE, dtype=torch.float64)
    H = dense_precision(net, X, Y, "regression", la.weights, NAME[repr(structure)], p, s)
    Fc, Jc = subset_jacobian(net, Xc, la.weights)
    Jc = Jc.reshape(-1, Jc.shape[-1])
    H2 = H + Jc.T @ Jc / NOISE**2
    Ft, Jt = subset_jacobian(net, Xt, la.weights)
    n, K, S = Jt.shape
    Jt = Jt.reshape(n * K, S)
    delta = torch.linalg.solve(H2, Jc.T @ (Yc - Fc).reshape(-1, 1) / NOISE**2)  # (S, 1)
    mean = Ft + (Jt @ delta).reshape(n, K)
    cov = Jt @ torch.linalg.solve(H2, Jt.T)
    return mean.detach(), cov.reshape(n, K, n, K).detach(), H2.detach()


@pytest.mark.parametrize("weights", ["all", "mask"])
@pytest.mark.parametrize("structure", [Full(), Diagonal(), Kron(), Functional()], ids=repr)
def test_condition_equals_dense_update(structure, weights):
    if weights == "mask" and isinstance(structure, Kron):
        pytest.skip("Kron needs whole tensors")
    la, net, X, Y, Xc, Yc, Xt = _setup(structure, weights)
    post = condition(la, Xc, Yc)
    mean, cov = post.predictive(Xt)
    ref_mean, ref_cov, H2 = _reference(la, net, X, Y, Xc, Yc, Xt, structure)
    torch.testing.assert_close(mean, ref_mean, rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(cov, ref_cov, rtol=1e-8, atol=1e-10)
    var = post.predictive_variance(Xt)
    torch.testing.assert_close(var, ref_cov.reshape(8, 8).diagonal().reshape(4, 2), rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(post.precision.logdet(), torch.linalg.slogdet(H2)[1], rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(post.precision.precision(), H2, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(post.precision.covariance(), torch.linalg.inv(H2), rtol=1e-7, atol=1e-9)
    kind = ExtendedFunctionalPrecision if isinstance(structure, Functional) else WoodburyPrecision
    assert isinstance(post.precision, kind)


@pytest.mark.parametrize("structure", [Full(), Functional()], ids=repr)
def test_condition_equals_refit_on_union(structure):
    """Full / Functional: conditioning equals fit_laplace on the union at the same weights."""
    la, net, X, Y, Xc, Yc, Xt = _setup(structure)
    post = condition(la, Xc, Yc)
    union = fit_laplace(
        net,
        torch.cat([X, Xc]),
        torch.cat([Y, Yc]),
        structure=structure,
        prior_precision=PRIOR,
        noise_std=NOISE,
    )
    _, cov = union.predictive(Xt)
    torch.testing.assert_close(post.predictive(Xt)[1], cov, rtol=1e-8, atol=1e-10)
    up = union.posterior_precision()
    torch.testing.assert_close(post.precision.logdet(), up.logdet(), rtol=1e-10, atol=1e-9)
    if isinstance(structure, Functional):
        # the block-updated Cholesky factor is the factor of the union's N x N matrix
        torch.testing.assert_close(post.precision.L, up.L, rtol=1e-8, atol=1e-10)
        assert post.precision.supports_factors  # the Jacobian-free path is kept


def test_fantasies_share_the_factorisation():
    la, net, X, Y, Xc, Yc, Xt = _setup(Functional())
    Yf = Yc + torch.randn(5, *Yc.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    for base in (la, fit_laplace(net, X, Y, structure=Kron(), prior_precision=PRIOR, noise_std=NOISE)):
        post = condition(base, Xc, Yf)
        assert post.batch_shape == (5,)
        L = post.precision.L if isinstance(post.precision, FunctionalPrecision) else post.precision.L_C
        assert L.dim() == 2  # one factorisation for all fantasies
        mean, cov = post.predictive(Xt)
        assert mean.shape == (5, 4, 2) and cov.shape == (5, 4, 2, 4, 2)
        for i in (0, 4):
            m_i, c_i = condition(base, Xc, Yf[i]).predictive(Xt)
            torch.testing.assert_close(mean[i], m_i)
            torch.testing.assert_close(cov[i], c_i)


def test_batched_inputs_use_woodbury_and_match_one_by_one():
    la, net, X, Y, Xc, Yc, Xt = _setup(Functional())
    Xcb = torch.stack([Xc, Xc + 0.3])
    Ycb = torch.stack([Yc, -Yc])
    post = condition(la, Xcb, Ycb)
    assert isinstance(post.precision, WoodburyPrecision) and post.batch_shape == (2,)
    mean, cov = post.predictive(Xt.expand(2, 4, 2))
    for i in range(2):
        m_i, c_i = condition(la, Xcb[i], Ycb[i]).predictive(Xt)
        torch.testing.assert_close(mean[i], m_i, rtol=1e-8, atol=1e-10)
        torch.testing.assert_close(cov[i], c_i, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("structure", [Functional(), Kron()], ids=repr)
def test_x_gradients_match_dense_reference(structure):
    la, net, X, Y, Xc, Yc, Xt = _setup(structure, K=1)
    post = condition(la, Xc, Yc)
    w = torch.randn(4, 1, 4, 1, dtype=torch.float64)
    x = Xt.clone().requires_grad_(True)
    m, c = post.predictive(x)
    g = torch.autograd.grad(m.sum() + (c * w).sum(), x)[0]
    xr = Xt.clone().requires_grad_(True)
    ref_m, ref_c, H2 = _reference(la, net, X, Y, Xc, Yc, xr, structure)  # detached: recompute with graph
    Ft, Jt = subset_jacobian(net, xr, la.weights)
    Fc, Jc = subset_jacobian(net, Xc, la.weights)
    delta = torch.linalg.solve(H2, Jc[:, 0].T @ (Yc - Fc.detach()) / NOISE**2)
    mr = Ft + Jt[:, 0] @ delta
    cr = Jt[:, 0] @ torch.linalg.solve(H2, Jt[:, 0].T)
    gr = torch.autograd.grad(mr.sum() + (cr * w.reshape(4, 4)).sum(), xr)[0]
    torch.testing.assert_close(g, gr, rtol=1e-7, atol=1e-9)


def test_woodbury_samples_have_the_conditioned_covariance():
    la, net, X, Y, Xc, Yc, Xt = _setup(Kron(), K=1)
    post = condition(la, Xc, Yc)
    n = 20000
    d = post.precision.sample(n, torch.Generator().manual_seed(0))
    cov = post.precision.covariance()
    emp = d.T @ d / n
    sd = torch.sqrt((cov.diagonal().outer(cov.diagonal()) + cov.pow(2)) / n)
    assert ((emp - cov).abs() <= 5 * sd).all()


@pytest.mark.parametrize("structure", [Functional(), Kron()], ids=repr)
def test_conditioned_function_samples_match_conditioned_predictive(structure):
    la, net, X, Y, Xc, Yc, Xt = _setup(structure, K=1)
    post = condition(la, Xc, Yc)
    n = 20000
    s = post.sample_functions(n, torch.Generator().manual_seed(1))(Xt)[..., 0]  # n x 4
    mean, cov = post.predictive(Xt)
    mean, cov = mean[:, 0], cov.reshape(4, 4)
    emp = (s - mean).T @ (s - mean) / n
    sd = torch.sqrt((cov.diagonal().outer(cov.diagonal()) + cov.pow(2)) / n)
    assert ((emp - cov).abs() <= 5 * sd).all()
    assert ((s.mean(0) - mean).abs() <= 5 * (cov.diagonal() / n).sqrt()).all()
    with pytest.raises(NotImplementedError, match="batched"):
        condition(la, Xc, Yc.expand(2, 3, 1)).sample_functions(2)


def test_sequential_block_updates_equal_one_update():
    la, net, X, Y, Xc, Yc, Xt = _setup(Functional(), n_c=4)
    joint = condition(la, Xc, Yc)
    first = condition(la, Xc[:2], Yc[:2])
    # GGN rows of the new points: J / sqrt(s v) = J, since s = 1/σ² and v = σ²
    second = extend_functional(
        first.precision, subset_jacobian(net, Xc[2:], la.weights)[1].reshape(-1, la.n_weights)
    )
    assert len(second.blocks) == 3  # training rows, then two updates: no N x S copies
    torch.testing.assert_close(second.L, joint.precision.L, rtol=1e-9, atol=1e-11)
    V = torch.randn(la.n_weights, 2, dtype=torch.float64)
    torch.testing.assert_close(second.solve(V), joint.precision.solve(V), rtol=1e-8, atol=1e-10)
    Jt = subset_jacobian(net, Xt, la.weights)[1].reshape(8, -1)
    torch.testing.assert_close(second.quad(Jt), joint.predictive(Xt)[1].reshape(8, 8), rtol=1e-8, atol=1e-10)


def test_bad_input():
    la, net, X, Y, Xc, Yc, Xt = _setup(Full())
    with pytest.raises(InputShapeError, match=r"Y_c with shape \(\.\.\., 3, 2\)"):
        condition(la, Xc, Yc[:2])
    with pytest.raises(NonFiniteInputError, match="Y_c"):
        condition(la, Xc, Yc * float("nan"))
    with pytest.raises(HyperparameterError, match="noise"):
        condition(la, Xc, Yc, noise=-1.0)
    with pytest.raises(InputShapeError, match="noise must broadcast"):
        condition(la, Xc, Yc, noise=torch.ones(4, 2, dtype=torch.float64))
    with pytest.raises(InputShapeError, match="X with shape"):
        condition(la, Xc[:, :1], Yc)
    netc, Xk, Yk = make_problem("classification", (2, 5, 3))
    lac = fit_laplace(netc, Xk, Yk, "classification", structure=Full())
    with pytest.raises(ValueError, match="regression"):
        condition(lac, Xk[:2], torch.zeros(2, 3, dtype=torch.float64))


def test_condition_method_and_public_names():
    """``la.condition`` is ``condition(la, ...)``; the names are exported from labo.laplace."""
    import labo.laplace as L

    la, net, X, Y, Xc, Yc, Xt = _setup(Full())
    a, b = la.condition(Xc, Yc).predictive(Xt), condition(la, Xc, Yc).predictive(Xt)
    torch.testing.assert_close(a, b)
    assert L.condition is condition and callable(L.sample_functions) and L.ConditionedLaplace
