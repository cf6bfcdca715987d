"""The core and the model on a CUDA device: same numbers as on the CPU, outputs on the device.

Skipped where CUDA is absent (CI runs on CPUs); run on a GPU machine with
``python -m pytest tests/cuda -q``.
"""

import copy
from functools import partial

import pytest
import torch
from botorch.acquisition import qLogNoisyExpectedImprovement
from botorch.models.transforms import Normalize, Standardize
from botorch.optim import optimize_acqf

from labo.laplace import (
    AllWeights,
    Diagonal,
    Full,
    Functional,
    Kron,
    LastLayer,
    fit_laplace,
    largest_variance,
)
from labo.surrogates import FitOptions, LaplaceModel, fit_laplace_model
from tests.conftest import make_problem

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
CUDA = torch.device("cuda")


@pytest.mark.parametrize("structure", [Full(), Diagonal(), Kron(), Functional()], ids=repr)
@pytest.mark.parametrize("weights", [AllWeights(), LastLayer()], ids=repr)
@pytest.mark.parametrize(
    ("likelihood", "sizes"), [("regression", (3, 8, 8, 2)), ("classification", (3, 8, 4))]
)
def test_core_on_cuda_equals_cpu(structure, weights, likelihood, sizes):
    net, X, Y = make_problem(likelihood, sizes, n=20)
    Xt = torch.randn(2, 5, sizes[0], dtype=torch.float64)
    la_cpu = fit_laplace(net, X, Y, likelihood, weights, structure, 0.7, 0.3)
    net_gpu = copy.deepcopy(net).to(CUDA)
    la_gpu = fit_laplace(net_gpu, X.to(CUDA), Y.to(CUDA), likelihood, weights, structure, 0.7, 0.3)
    Xg = Xt.to(CUDA).requires_grad_(True)
    mean, cov = la_gpu.predictive(Xg)
    var = la_gpu.predictive_variance(Xg)
    lml = la_gpu.log_marginal_likelihood()
    assert mean.device.type == cov.device.type == var.device.type == lml.device.type == "cuda"
    m_ref, c_ref = la_cpu.predictive(Xt)
    torch.testing.assert_close(mean.cpu(), m_ref, rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(cov.cpu(), c_ref, rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(lml.cpu(), la_cpu.log_marginal_likelihood(), rtol=1e-8, atol=1e-8)
    (g,) = torch.autograd.grad(cov.sum() + var.sum(), Xg)
    Xc = Xt.clone().requires_grad_(True)
    _, c2 = la_cpu.predictive(Xc)
    (g_ref,) = torch.autograd.grad(c2.sum() + la_cpu.predictive_variance(Xc).sum(), Xc)
    torch.testing.assert_close(g.cpu(), g_ref, rtol=1e-7, atol=1e-9)
    samples = la_gpu.predictive_samples(Xg.detach(), 8, torch.Generator(device=CUDA).manual_seed(0))
    assert samples.device.type == "cuda" and torch.isfinite(samples).all()


@pytest.mark.parametrize("network", ["mlp", "rbf", "rbf-all"])
@pytest.mark.parametrize("n", [20, 300])  # Functional by default at n=20, Kron (lazy covariance) at 300
def test_model_fit_and_qlognei_on_cuda(n, network):
    """``rbf-all``: every weight Bayesian, the centres through the RBF closed form under Kron."""
    g = torch.Generator(device=CUDA).manual_seed(0)
    X = torch.rand(n, 4, dtype=torch.float64, device=CUDA, generator=g)
    Y = torch.sin(6 * X).sum(-1, keepdim=True)
    extra = {"network": "rbf", "weights": AllWeights()} if network == "rbf-all" else {"network": network}
    model = LaplaceModel(X, Y, input_transform=Normalize(4), outcome_transform=Standardize(1), **extra)
    fit_laplace_model(model, FitOptions(max_epochs_cold=200, hyper_steps_cold=20))
    if network == "rbf-all" and n == 300:
        la = model.laplace
        assert la.rbf_plan is not None
        Xc = torch.rand(2, 5, 4, dtype=torch.float64, device=CUDA)
        torch.testing.assert_close(la.predictive(Xc)[1], la.predictive(Xc, mode="jacobian")[1])
    post = model.posterior(torch.rand(3, 70, 4, dtype=torch.float64, device=CUDA))
    assert post.mean.device.type == "cuda" and post.variance.device.type == "cuda"
    acq = qLogNoisyExpectedImprovement(model, X_baseline=X)
    bounds = torch.stack([torch.zeros(4), torch.ones(4)]).double().to(CUDA)
    cand, val = optimize_acqf(acq, bounds=bounds, q=2, num_restarts=2, raw_samples=32)
    assert cand.device.type == "cuda" and torch.isfinite(val).all()
    assert ((cand >= 0) & (cand <= 1)).all()


@pytest.mark.parametrize("prior_mean", ["zero", "init"])
def test_weight_strategy_model_with_prior_centre_fits_on_cuda(prior_mean):
    """A mask that selects parts of tensors (the training objective's partial-tensor term)
    and a prior centred at the initial weights, on the GPU."""
    g = torch.Generator(device=CUDA).manual_seed(0)
    X = torch.rand(30, 4, dtype=torch.float64, device=CUDA, generator=g)
    Y = torch.sin(6 * X).sum(-1, keepdim=True)
    strategy = partial(largest_variance, n_weights=40, noise_std=0.3)
    model = LaplaceModel(X, Y, weights=strategy, prior_mean=prior_mean, outcome_transform=Standardize(1))
    fit_laplace_model(model, FitOptions(max_epochs_cold=100, hyper_steps_cold=10))
    la = model.laplace
    assert la.n_weights == 40 and la.prior_mean.device.type == "cuda"
    assert model.network_anchor.device.type == "cuda"
    assert torch.isfinite(la.log_marginal_likelihood())
    post = model.posterior(torch.rand(5, 4, dtype=torch.float64, device=CUDA))
    assert post.variance.device.type == "cuda" and torch.isfinite(post.variance).all()


@pytest.mark.parametrize("gen_device", ["cpu", "cuda"])
def test_samples_and_thompson_with_generators_on_cuda(gen_device):
    from labo.acquisition import thompson_candidates

    net, X, Y = make_problem("regression", (3, 8, 1), n=20)
    X, Y, net = X.to(CUDA), Y.to(CUDA), copy.deepcopy(net).to(CUDA)
    model = LaplaceModel(X, Y, network=net)
    fit_laplace_model(model, FitOptions(max_epochs_cold=100, hyper_steps_cold=10))
    gen = torch.Generator(device=gen_device).manual_seed(0)
    draws = model.laplace.sample_parameters(4, gen)
    assert draws.device.type == "cuda"
    bounds = torch.stack([X.min(0).values, X.max(0).values])
    gen = torch.Generator(device=gen_device).manual_seed(0)
    cand = thompson_candidates(model, bounds, q=2, num_restarts=2, raw_samples=16, generator=gen)
    assert cand.shape == (2, 3) and cand.device.type == "cuda"


def test_factor_root_sampling_and_pruning_on_cuda():
    """Last-layer model over more points than it has Bayesian weights: samples come from the
    exact factor root on the GPU (``R Rᵀ`` equals the covariance); qLogNEI's pruning uses it."""
    from labo.surrogates.lazy_covariance import FactorMultivariateNormal

    g = torch.Generator(device=CUDA).manual_seed(0)
    X = torch.rand(120, 4, dtype=torch.float64, device=CUDA, generator=g)
    Y = torch.sin(6 * X).sum(-1, keepdim=True)
    model = LaplaceModel(
        X,
        Y,
        network="mlp",  # 65 last-layer weights < 120 rows: the factor-root path
        weights=LastLayer(),
        input_transform=Normalize(4),
        outcome_transform=Standardize(1),
    )
    fit_laplace_model(model, FitOptions(max_epochs_cold=200, hyper_steps_cold=20))
    Xt = torch.rand(2, 150, 4, dtype=torch.float64, device=CUDA, generator=g)
    mvn = model.posterior(Xt).distribution
    assert isinstance(mvn, FactorMultivariateNormal)
    root = mvn._factor_root()
    assert root is not None
    P = root.root_rank
    R = root.root_matmul(torch.eye(P, dtype=torch.float64, device=CUDA).expand(2, P, P))
    torch.testing.assert_close(R @ R.mT, root.to_dense(), rtol=1e-9, atol=1e-11)
    base = torch.randn(8, 2, 150, dtype=torch.float64, device=CUDA, generator=g)
    samples = mvn.rsample(torch.Size([8]), base_samples=base)
    expected = mvn.mean + (R @ base[..., :P].unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(samples, expected, rtol=1e-9, atol=1e-11)
    assert mvn.rsample(torch.Size([3])).device == X.device
    acq = qLogNoisyExpectedImprovement(model, X_baseline=X, prune_baseline=True)
    assert acq.X_baseline.device == X.device and 1 <= acq.X_baseline.shape[0] <= 120


@pytest.mark.parametrize("gen_device", ["cpu", "cuda"])
def test_default_kernel_posterior_model_on_cuda(gen_device):
    """The default (rff, exact kernel posterior averaged over lengthscale draws at 2d ≤ n <
    30d): posterior, qLogNEI, fantasies and Thompson sampling on the GPU, with a CPU or a
    CUDA generator."""
    from botorch.sampling import SobolQMCNormalSampler

    from labo.acquisition import thompson_candidates

    g = torch.Generator(device=CUDA).manual_seed(0)
    X = torch.rand(30, 4, dtype=torch.float64, device=CUDA, generator=g)
    Y = torch.sin(6 * X).sum(-1, keepdim=True)
    model = fit_laplace_model(
        LaplaceModel(X, Y, input_transform=Normalize(4), outcome_transform=Standardize(1))
    )
    assert model.fit_info["posterior"] == "kernel" and model.fit_info["lengthscale_samples"] == 16
    assert all(block.L.device.type == "cuda" for block in model.kernel_posterior.blocks)
    post = model.posterior(torch.rand(3, 20, 4, dtype=torch.float64, device=CUDA))
    assert post.mean.device.type == "cuda" and torch.isfinite(post.variance).all()
    from labo.surrogates.kernel_rows import TailRowsCovariance

    T = torch.rand(3, 2, 4, dtype=torch.float64, device=CUDA, generator=g).requires_grad_(True)
    joint = model.posterior(torch.cat([X[:10].expand(3, 10, 4), T], -2))  # baseline rows + candidates
    assert isinstance(joint.distribution.lazy_covariance_matrix, TailRowsCovariance)
    dense = model.posterior(torch.cat([X[:10].expand(3, 10, 4), T], -2).detach().clone())
    torch.testing.assert_close(
        joint.distribution.covariance_matrix, dense.distribution.covariance_matrix, rtol=1e-9, atol=1e-11
    )
    acq = qLogNoisyExpectedImprovement(model, X_baseline=X)
    bounds = torch.stack([torch.zeros(4), torch.ones(4)]).double().to(CUDA)
    cand, val = optimize_acqf(acq, bounds=bounds, q=2, num_restarts=2, raw_samples=32)
    assert cand.device.type == "cuda" and torch.isfinite(val).all()
    fantasy = model.fantasize(cand, sampler=SobolQMCNormalSampler(torch.Size([3]), seed=0))
    assert fantasy.posterior(cand).mean.shape == (3, 2, 1)
    gen = torch.Generator(device=gen_device).manual_seed(0)
    cand = thompson_candidates(model, bounds, q=2, num_restarts=2, raw_samples=16, generator=gen)
    assert cand.shape == (2, 4) and cand.device.type == "cuda"
