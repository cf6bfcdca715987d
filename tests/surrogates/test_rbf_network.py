"""The RBF network (``LaplaceModel(network="rbf")``): features by their formula, the
centres and lengthscale it starts from, and the model's posterior against the dense
reference (``jacrev`` Jacobians, explicit precision) in values and x-gradients."""

import pytest
import torch
from botorch.models.transforms import Normalize, Standardize

from labo.laplace import Kron
from labo.surrogates import LaplaceModel, fit_laplace_model
from labo.surrogates.networks import RBF_BAYESIAN_LAYERS, RBFFeatures, rbf_centres, rbf_network
from tests import _reference as ref
from tests.surrogates.conftest import FAST, toy_data


def test_rbf_features_match_their_formula_and_gradcheck():
    g = torch.Generator().manual_seed(0)
    centres = torch.rand(5, 3, generator=g, dtype=torch.float64)
    layer = RBFFeatures(centres, lengthscale=0.7)
    x = torch.rand(2, 4, 3, generator=g, dtype=torch.float64, requires_grad=True)
    expected = torch.exp(-0.5 * torch.cdist(x, centres.expand(2, -1, -1)).pow(2) / 0.7**2)
    torch.testing.assert_close(layer(x), expected, rtol=1e-12, atol=1e-14)
    assert torch.autograd.gradcheck(layer, (x,))
    params = {"centres": layer.centres.detach().clone().requires_grad_(True)}
    params["log_lengthscale"] = layer.log_lengthscale.detach().clone().requires_grad_(True)

    def by_params(c, log_l):
        return torch.func.functional_call(layer, {"centres": c, "log_lengthscale": log_l}, (x.detach(),))

    assert torch.autograd.gradcheck(by_params, (params["centres"], params["log_lengthscale"]))


def test_rbf_features_reject_bad_arguments():
    with pytest.raises(ValueError, match="centres must be n_centres x d"):
        RBFFeatures(torch.zeros(3), 1.0)
    with pytest.raises(ValueError, match="lengthscale must be positive"):
        RBFFeatures(torch.zeros(3, 2), 0.0)


def test_rbf_centres_are_data_rows_or_fill_the_bounding_box():
    g = torch.Generator().manual_seed(1)
    X = torch.rand(100, 4, generator=g, dtype=torch.float64)
    C = rbf_centres(X, 64)
    assert C.shape == (64, 4)
    rows = (C.unsqueeze(1) == X.unsqueeze(0)).all(-1)  # 64 x 100
    assert bool(rows.any(1).all()) and int(rows.any(0).sum()) == 64  # distinct data rows
    few = X[:10] * 2 + 1
    C = rbf_centres(few, 64)
    torch.testing.assert_close(C[:10], few)
    lo, hi = few.min(0).values, few.max(0).values
    assert bool(((C[10:] >= lo) & (C[10:] <= hi)).all())


def test_rbf_network_starts_at_the_median_centre_distance():
    torch.manual_seed(0)
    X = torch.rand(80, 6, dtype=torch.float64)
    net = rbf_network(X, 2)
    C = net[0].centres.detach()
    D = torch.cdist(C, C)
    median = D[~torch.eye(64, dtype=torch.bool)].median()
    torch.testing.assert_close(net[0].log_lengthscale.exp(), median)
    assert net(X).shape == (80, 2) and net(X).dtype == torch.float64


def _rbf_model(n=24, d=3, structure=None):
    X, Y = toy_data(n, d)
    bounds = torch.tensor([[-1.0] * d, [3.0] * d], dtype=torch.float64)
    torch.manual_seed(0)
    kw = {} if structure is None else {"structure": structure}
    model = LaplaceModel(
        X,
        Y,
        network="rbf",
        input_transform=Normalize(d, bounds=bounds),
        outcome_transform=Standardize(1),
        **kw,
    )
    return fit_laplace_model(model, FAST), X, Y


@pytest.mark.parametrize("structure", [None, Kron()], ids=["default", "kron"])
def test_rbf_model_posterior_matches_dense_reference(structure):
    model, X, _ = _rbf_model(structure=structure)
    la = model.laplace
    # only the two linear layers are Bayesian
    expected = {f"{layer}.{kind}" for layer in RBF_BAYESIAN_LAYERS for kind in ("weight", "bias")}
    assert set(la.weights.masks) == expected
    assert la.n_weights == 64 * 64 + 64 + 64 + 1
    net = model.network
    X_tf = model.transform_inputs(X)
    Z = (model.train_targets - model.y_mean) / model.y_scale
    skind = "kron" if isinstance(la.structure, Kron) else "functional"
    prior, noise = la.prior_precision.detach(), la.noise_std.detach()
    H = ref.dense_precision(net, X_tf.detach(), Z.detach(), "regression", la.weights, skind, prior, noise)
    Xq = torch.rand(5, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(3)) * 4 - 1
    Xq.requires_grad_(True)
    post = model.posterior(Xq)
    F, cov = ref.dense_predictive(net, model.transform_inputs(Xq), la.weights, H.detach())
    s = model.y_scale
    mean_ref = model.y_mean + s * F
    cov_ref = cov[:, 0, :, 0] * s.pow(2)
    # the outcome transform maps back to the raw scale
    ot = model.outcome_transform
    mean_ref, cov_ref = ot.means + ot.stdvs * mean_ref, cov_ref * ot.stdvs.pow(2)
    torch.testing.assert_close(post.mean, mean_ref, rtol=1e-8, atol=1e-9)
    torch.testing.assert_close(post.distribution.covariance_matrix, cov_ref, rtol=1e-7, atol=1e-9)
    g = torch.autograd.grad(post.mean.sum() + post.variance.sum(), Xq)[0]
    g_ref = torch.autograd.grad(mean_ref.sum() + cov_ref.diagonal().sum(), Xq)[0]
    torch.testing.assert_close(g, g_ref, rtol=1e-7, atol=1e-9)


def test_rbf_model_warm_start_keeps_the_centres_and_bad_name_raises():
    model, X, Y = _rbf_model()
    X2, Y2 = toy_data(30, 3, seed=1)
    warm = LaplaceModel(
        torch.cat([X, X2]),
        torch.cat([Y, Y2]),
        network="rbf",
        outcome_transform=Standardize(1),
        warm_start=model,
    )
    torch.testing.assert_close(warm.network[0].centres, model.network[0].centres)
    with pytest.raises(ValueError, match="network must be an nn.Module or one of"):
        LaplaceModel(X, Y, network="resnet")
