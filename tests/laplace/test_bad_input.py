"""Bad inputs raise typed errors; numerical trouble is repaired or reported; state_dict round trips.

Self-contained on purpose (no conftest fixtures): tiny float64 networks built
with ``.double()``; the global default dtype is never changed.
"""

import copy
import io
import re
import warnings

import pytest
import torch
from torch import nn

from labo.exceptions import (
    EmptyDataError,
    HyperparameterError,
    InputDtypeError,
    InputShapeError,
    LabelError,
    LaboError,
    LikelihoodError,
    NonFiniteInputError,
    NotFittedError,
    NumericalError,
    NumericalWarning,
    StructureError,
    WeightSubsetError,
)
from labo.laplace import (
    AllWeights,
    Diagonal,
    Full,
    Functional,
    Kron,
    LaplaceApproximation,
    LastLayer,
    WeightMask,
    fit_laplace,
)
from labo.laplace.structures.precisions import robust_cholesky

F64 = torch.float64
D, K_REG, K_CLS, N = 2, 1, 3, 10


def tiny_mlp(d=D, k=K_REG, hidden=8, seed=0):
    """``Linear(d,h) Tanh Linear(h,h) Tanh Linear(h,k)`` in float64 (modules "0".."4")."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(d, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh(), nn.Linear(hidden, k)
    ).double()


def data(likelihood, n=N, d=D, k=None, seed=1):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, d, generator=g, dtype=F64)
    if likelihood == "regression":
        Y = torch.randn(n, K_REG if k is None else k, generator=g, dtype=F64)
    else:
        Y = torch.randint(0, K_CLS if k is None else k, (n,), generator=g)
    return X, Y


def n_outputs(likelihood):
    return K_REG if likelihood == "regression" else K_CLS


@pytest.fixture(scope="module")
def reg():
    """A fitted regression posterior (Full, all weights) and its data; read-only."""
    net = tiny_mlp()
    X, Y = data("regression")
    return fit_laplace(net, X, Y, structure=Full(), prior_precision=0.5, noise_std=0.3), X, Y


class MatmulNet(nn.Module):
    """A network without any nn.Linear: ``x @ w``."""

    def __init__(self, d=D, k=K_REG):
        super().__init__()
        self.w = nn.Parameter(torch.randn(d, k, dtype=F64))

    def forward(self, x):
        return x @ self.w


class VectorNet(nn.Module):
    """A network returning ``(n,)`` instead of ``(n, K)``."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(D, 1).double()

    def forward(self, x):
        return self.lin(x).squeeze(-1)


# ----------------------------------------------------------------------------------------
# fit_laplace: inputs X and targets Y


def _fit(likelihood, X, Y, net=None, **kw):
    net = tiny_mlp(k=n_outputs(likelihood)) if net is None else net
    return fit_laplace(net, X, Y, likelihood=likelihood, **kw)


@pytest.mark.parametrize(
    "likelihood, n_y, match",
    [
        ("regression", N - 1, r"X has 10 rows but Y has 9 \(shape \(9, 1\)\)"),
        ("regression", N + 3, r"X has 10 rows but Y has 13"),
        ("classification", N - 1, r"X has 10 rows but Y has 9 labels"),
    ],
)
def test_row_count_mismatch(likelihood, n_y, match):
    X, _ = data(likelihood)
    _, Y = data(likelihood, n=n_y)
    with pytest.raises(InputShapeError, match=match):
        _fit(likelihood, X, Y)


def test_regression_y_1d_suggests_unsqueeze():
    X, Y = data("regression")
    with pytest.raises(InputShapeError, match=r"got \(10,\).*unsqueeze\(-1\)"):
        _fit("regression", X, Y[:, 0])


@pytest.mark.parametrize("shape", [(N, 1, 1), ()])
def test_regression_y_other_ndim(shape):
    X, _ = data("regression")
    Y = torch.zeros(shape, dtype=F64)
    with pytest.raises(InputShapeError, match=re.escape(f"got {shape}")):
        _fit("regression", X, Y)


def test_regression_y_columns_vs_network_outputs():
    X, Y = data("regression", k=2)
    with pytest.raises(InputShapeError, match=r"Y has 2 columns but the network has 1 outputs"):
        _fit("regression", X, Y)


def test_classification_labels_2d():
    X, Y = data("classification")
    with pytest.raises(InputShapeError, match=r"labels of shape \(n,\), got \(10, 1\)"):
        _fit("classification", X, Y.unsqueeze(-1))


def test_network_output_must_be_2d():
    X, Y = data("regression")
    with pytest.raises(InputShapeError, match=r"returned \(10,\)"):
        fit_laplace(VectorNet(), X, Y)


@pytest.mark.parametrize("likelihood", ["regression", "classification"])
@pytest.mark.parametrize("d_x", [1, D + 1])
def test_x_width_does_not_fit_first_layer(likelihood, d_x):
    """Not torch's raw ``mat1 and mat2 shapes cannot be multiplied``: expected and received sizes."""
    _, Y = data(likelihood)
    X, _ = data(likelihood, d=d_x)
    match = rf"X has {d_x} input features \(shape \({N}, {d_x}\)\) but the network's first layer expects {D}"
    with pytest.raises(InputShapeError, match=match):
        _fit(likelihood, X, Y)


def test_x_width_check_does_not_refuse_a_network_whose_first_linear_is_not_first_applied():
    """The size check only explains a failed forward pass: it never refuses a working network."""

    class Projected(nn.Module):
        def __init__(self):
            super().__init__()
            self.head = nn.Linear(4, 1)  # registered first, applied last
            self.body = nn.Linear(D, 4)

        def forward(self, X):
            return self.head(torch.tanh(self.body(X)))

    X, Y = data("regression")
    la = fit_laplace(Projected().double(), X, Y, structure=Full())
    assert torch.isfinite(la.log_marginal_likelihood())


def test_x_one_dimensional():
    X, Y = data("regression")
    with pytest.raises(InputShapeError, match=r"Expected X of shape \(n, d\), got \(10,\)"):
        _fit("regression", X[:, 0], Y)


@pytest.mark.parametrize("likelihood", ["regression", "classification"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_x(likelihood, bad):
    X, Y = data(likelihood)
    X[3, 1] = bad
    with pytest.raises(NonFiniteInputError, match=r"X contains 1 NaN/inf values \(shape \(10, 2\)\)"):
        _fit(likelihood, X, Y)


@pytest.mark.parametrize("bad", [float("inf"), float("nan")])
def test_non_finite_y(bad):
    X, Y = data("regression")
    Y[0, 0] = bad
    Y[5, 0] = bad
    with pytest.raises(NonFiniteInputError, match=r"Y contains 2 NaN/inf values"):
        _fit("regression", X, Y)


@pytest.mark.parametrize("likelihood", ["regression", "classification"])
def test_empty_x(likelihood):
    X = torch.zeros(0, D, dtype=F64)
    Y = torch.zeros(0, 1, dtype=F64) if likelihood == "regression" else torch.zeros(0, dtype=torch.long)
    with pytest.raises(EmptyDataError, match=r"X is empty \(shape \(0, 2\)\)"):
        _fit(likelihood, X, Y)


@pytest.mark.parametrize("likelihood", ["regression", "classification"])
def test_x_float32_with_float64_network(likelihood):
    X, Y = data(likelihood)
    with pytest.raises(
        InputDtypeError, match=r"X has dtype torch.float32 but the network's .* torch.float64"
    ):
        _fit(likelihood, X.float(), Y)


@pytest.mark.parametrize("dtype", [torch.int64, torch.bool])
def test_x_not_floating(dtype):
    X, Y = data("regression")
    with pytest.raises(InputDtypeError, match=re.escape(f"floating-point tensor, got dtype {dtype}")):
        _fit("regression", X.to(dtype), Y)


@pytest.mark.parametrize("dtype", [torch.float32, torch.int64])
def test_regression_y_dtype_mismatch(dtype):
    X, Y = data("regression")
    with pytest.raises(
        InputDtypeError, match=re.escape(f"Y has dtype {dtype}, expected the network's dtype")
    ):
        _fit("regression", X, Y.to(dtype))


@pytest.mark.parametrize("make_x", [lambda X: X.tolist(), lambda X: X.numpy()], ids=["list", "numpy"])
def test_x_not_a_tensor(make_x):
    X, Y = data("regression")
    bad = make_x(X)
    with pytest.raises(InputDtypeError, match=rf"X must be a torch.Tensor, got {type(bad).__name__}"):
        _fit("regression", bad, Y)


@pytest.mark.parametrize("likelihood", ["regression", "classification"])
def test_y_not_a_tensor(likelihood):
    X, Y = data(likelihood)
    with pytest.raises(InputDtypeError, match=r"Y must be a torch.Tensor, got list"):
        _fit(likelihood, X, Y.tolist())


def test_typed_errors_are_builtin_subclasses():
    """Generic ``except ValueError`` / ``except TypeError`` handlers keep working."""
    X, Y = data("regression")
    with pytest.raises(ValueError):
        _fit("regression", X, Y[:, 0])
    with pytest.raises(TypeError):
        _fit("regression", X.float(), Y)
    with pytest.raises(LaboError):
        _fit("regression", X[:0], Y[:0])


# ----------------------------------------------------------------------------------------
# Classification labels


@pytest.mark.parametrize(
    "value, match",
    [
        (-1, r"in \[0, 3\) for a network with 3 outputs; got values in \[-1, 2\]"),
        (K_CLS, r"in \[0, 3\) for a network with 3 outputs; got values in \[0, 3\]"),
        (K_CLS + 7, r"got values in \[0, 10\]"),
    ],
)
def test_labels_out_of_range(value, match):
    X, _ = data("classification")
    Y = torch.arange(N) % K_CLS
    Y[4] = value
    with pytest.raises(LabelError, match=match):
        _fit("classification", X, Y)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bool])
def test_labels_not_integer(dtype):
    X, _ = data("classification")
    Y = (torch.arange(N) % 2).to(dtype)
    with pytest.raises(LabelError, match=re.escape(f"integer tensor, got dtype {dtype}")):
        _fit("classification", X, Y)


@pytest.mark.parametrize("dtype", [torch.int32, torch.int64, torch.uint8])
def test_integer_labels_of_any_int_dtype_accepted(dtype):
    X, _ = data("classification")
    Y = (torch.arange(N) % K_CLS).to(dtype)
    la = _fit("classification", X, Y)
    assert torch.isfinite(la.log_marginal_likelihood())


# ----------------------------------------------------------------------------------------
# Hyperparameters


@pytest.mark.parametrize(
    "value, exc_match",
    [
        (0.0, r"prior_precision must be positive and finite, got 0.0"),
        (-2.0, r"prior_precision must be positive and finite, got -2.0"),
        (float("nan"), r"prior_precision must be positive and finite, got nan"),
        (float("inf"), r"prior_precision must be positive and finite, got inf"),
        (
            torch.tensor([1.0, 1.0, 0.0, 1.0, 1.0, 1.0], dtype=F64),
            r"positive and finite, got \[1.0, 1.0, 0.0",
        ),
        (torch.ones(5, dtype=F64), r"per tensor \(6,\), per weight \(105,\); got shape \(5,\)"),
        (torch.ones(2, 3, dtype=F64), r"got shape \(2, 3\)"),
    ],
    ids=["zero", "negative", "nan", "inf", "tensor-with-zero", "wrong-length", "2d"],
)
def test_bad_prior_precision(value, exc_match):
    X, Y = data("regression")
    with pytest.raises(HyperparameterError, match=exc_match):
        _fit("regression", X, Y, prior_precision=value)


@pytest.mark.parametrize("value", [0.0, -0.1, float("nan"), torch.ones(2, dtype=F64)])
def test_bad_noise_std(value):
    X, Y = data("regression")
    with pytest.raises(HyperparameterError, match=r"noise_std must be"):
        _fit("regression", X, Y, noise_std=value)


@pytest.mark.parametrize("attr", ["prior_precision", "noise_std"])
@pytest.mark.parametrize("value", [-1.0, 0.0, float("nan")])
def test_setting_bad_hyperparameter_after_fit(reg, attr, value):
    la, X, _ = reg
    before = getattr(la, attr).clone()
    with pytest.raises(HyperparameterError, match=rf"{attr} must be positive and finite"):
        setattr(la, attr, value)
    torch.testing.assert_close(getattr(la, attr), before, rtol=0, atol=0)  # unchanged
    la.predictive_variance(X)  # still usable


def test_bad_hyperparameter_override_in_log_marginal_likelihood(reg):
    la, _, _ = reg
    with pytest.raises(HyperparameterError, match=r"prior_precision"):
        la.log_marginal_likelihood(prior_precision=-1.0)
    with pytest.raises(HyperparameterError, match=r"noise_std"):
        la.log_marginal_likelihood(noise_std=torch.tensor(0.0, dtype=F64))


@pytest.mark.parametrize("structure", [Full(), Diagonal(), Kron(), Functional()], ids=repr)
@pytest.mark.parametrize("set_after_fit", [False, True], ids=["ctor", "setter"])
def test_float32_hyperparameter_tensors_are_cast(structure, set_after_fit):
    net = tiny_mlp()
    X, Y = data("regression")
    prior, noise = torch.linspace(0.5, 1.5, 6), torch.tensor(0.3)  # float32 (torch's default)
    if set_after_fit:
        la = fit_laplace(net, X, Y, structure=structure)
        la.prior_precision, la.noise_std = prior, noise
    else:
        la = fit_laplace(net, X, Y, structure=structure, prior_precision=prior, noise_std=noise)
    assert la.prior_precision.dtype == la.noise_std.dtype == F64
    assert la.predictive_variance(X).dtype == la.log_marginal_likelihood().dtype == F64


def test_wrong_length_prior_after_fit(reg):
    la, _, _ = reg
    with pytest.raises(HyperparameterError, match=r"got shape \(7,\)"):
        la.prior_precision = torch.ones(7, dtype=F64)


@pytest.mark.parametrize("n", [0, -3, 2.0, "5"])
def test_sample_weights_bad_count(reg, n):
    la, _, _ = reg
    with pytest.raises(HyperparameterError, match=re.escape(f"positive int, got {n!r}")):
        la.sample_weights(n)


@pytest.mark.parametrize("likelihood", ["poisson", "Regression", None])
def test_unknown_likelihood(likelihood):
    """A typed error that is still a ``ValueError``, naming the options and the value received."""
    X, Y = data("regression")
    with pytest.raises(
        LikelihoodError,
        match=rf"likelihood must be one of 'regression', 'classification', got {likelihood!r}",
    ) as info:
        _fit(likelihood, X, Y)
    assert isinstance(info.value, ValueError)


def test_noise_var_with_classification_is_a_likelihood_error():
    X, Y = data("classification")
    la = LaplaceApproximation(tiny_mlp(k=K_CLS), "classification")
    with pytest.raises(LikelihoodError, match=r"noise_var is for regression only, got 'classification'"):
        la.fit(X, Y, noise_var=torch.ones(N, K_CLS, dtype=F64))


def test_bad_weights_and_structure_types():
    net = tiny_mlp()
    with pytest.raises(TypeError, match=r"weights must be"):
        LaplaceApproximation(net, weights="last")
    with pytest.raises(TypeError, match=r"structure must be"):
        LaplaceApproximation(net, structure="kron")


# ----------------------------------------------------------------------------------------
# Weight subsets and structures


def _mask(net, **override):
    masks = {n: torch.ones_like(p, dtype=torch.bool) for n, p in net.named_parameters()}
    masks.update(override)
    return masks


@pytest.mark.parametrize(
    "make_masks, match",
    [
        (lambda net: {"9.weight": torch.ones(1, 8, dtype=torch.bool)}, r"unknown parameters \['9.weight'\]"),
        (lambda net: _mask(net, **{"4.weight": torch.ones(8, 1, dtype=torch.bool)}), r"has shape \(8, 1\)"),
        (lambda net: _mask(net, **{"4.bias": torch.ones(2, dtype=torch.bool)}), r"expected .* shape \(1,\)"),
        (
            lambda net: _mask(net, **{"0.weight": torch.ones(8, 2)}),
            r"must be a bool tensor, got torch.float32",
        ),
        (
            lambda net: _mask(net, **{"0.bias": torch.ones(8, dtype=torch.long)}),
            r"bool tensor, got torch.int64",
        ),
        (lambda net: _mask(net, **{"0.bias": [True] * 8}), r"must be a bool tensor, got list"),
        (
            lambda net: {n: torch.zeros_like(p, dtype=torch.bool) for n, p in net.named_parameters()},
            r"no weights",
        ),
        (lambda net: {}, r"non-empty dict"),
    ],
    ids=["unknown", "shape-transposed", "shape-bias", "float", "long", "list", "all-false", "empty"],
)
@pytest.mark.parametrize("structure", [Full(), Diagonal()], ids=repr)
def test_bad_weight_mask(make_masks, match, structure):
    net = tiny_mlp()
    X, Y = data("regression")
    with pytest.raises(WeightSubsetError, match=match):
        fit_laplace(net, X, Y, weights=WeightMask(make_masks(net)), structure=structure)


def test_weight_mask_partial_with_kron():
    net = tiny_mlp()
    X, Y = data("regression")
    m = torch.ones(8, 2, dtype=torch.bool)
    m[0, 0] = False
    with pytest.raises(StructureError, match=r"Kron\(\) needs whole parameter tensors.*'0.weight'"):
        fit_laplace(net, X, Y, weights=WeightMask({"0.weight": m}), structure=Kron())


def _whole(net, *names):
    params = dict(net.named_parameters())
    return WeightMask({n: torch.ones_like(params[n], dtype=torch.bool) for n in names})


def test_weight_mask_whole_tensors_with_kron_is_fine():
    """Whole tensors are fine for Kron: a full Linear layer is a K-FAC block, the rest is diagonal."""
    net = tiny_mlp()
    X, Y = data("regression")
    la = fit_laplace(net, X, Y, weights=_whole(net, "4.weight", "4.bias", "0.bias"), structure=Kron())
    assert la.n_weights == 17
    assert torch.isfinite(la.log_marginal_likelihood())


@pytest.mark.parametrize(
    "make_net, make_weights",
    [
        (tiny_mlp, lambda net: _whole(net, "4.weight", "0.bias")),  # no Linear has weight+bias selected
        (MatmulNet, lambda net: AllWeights()),  # no nn.Linear at all
    ],
    ids=["mask-without-block", "no-linear-network"],
)
def test_kron_without_kfac_block_is_diagonal(make_net, make_weights):
    """With no K-FAC block every selected weight is in the diagonal rest: Kron() == Diagonal()."""
    X, Y = data("regression")
    net = make_net()
    kron = fit_laplace(net, X, Y, weights=make_weights(net), structure=Kron())
    diag = fit_laplace(net, X, Y, weights=make_weights(net), structure=Diagonal())
    torch.testing.assert_close(kron.log_marginal_likelihood(), diag.log_marginal_likelihood())
    torch.testing.assert_close(kron.predictive_variance(X), diag.predictive_variance(X))


@pytest.mark.parametrize(
    "make_net, weights, match",
    [
        (MatmulNet, LastLayer(), r"LastLayer\(\): the network \(MatmulNet\) has no nn.Linear"),
        (tiny_mlp, LastLayer(name="nonexistent"), r"'nonexistent'.*no module of that name.*\['0', '1'"),
        (tiny_mlp, LastLayer(name="1"), r"LastLayer\(name='1'\): expected an nn.Linear, got Tanh"),
        (tiny_mlp, LastLayer(name=""), r"expected an nn.Linear, got Sequential"),
    ],
    ids=["no-linear", "unknown-name", "tanh", "root"],
)
def test_bad_last_layer(make_net, weights, match):
    X, Y = data("regression")
    with pytest.raises(WeightSubsetError, match=match):
        fit_laplace(make_net(), X, Y, weights=weights)


def test_all_weights_frozen_network():
    net = tiny_mlp().requires_grad_(False)
    with pytest.raises(WeightSubsetError, match=r"no parameter requiring grad"):
        LaplaceApproximation(net)


# ----------------------------------------------------------------------------------------
# Predictive inputs and unfitted posteriors


PREDICT = ["predictive", "predictive_variance"]


@pytest.mark.parametrize("method", PREDICT)
@pytest.mark.parametrize("shape", [(5, 3), (5, 1), (4, 5, 3), (2,)])
def test_predictive_wrong_shape(reg, method, shape):
    la, _, _ = reg
    X = torch.randn(shape, dtype=F64)
    with pytest.raises(InputShapeError, match=re.escape(f"got {shape}")):
        getattr(la, method)(X)


@pytest.mark.parametrize("method", PREDICT)
def test_predictive_non_finite(reg, method):
    la, X, _ = reg
    X = X.clone()
    X[2, 0] = float("nan")
    with pytest.raises(NonFiniteInputError, match=r"X contains 1 NaN/inf values \(shape \(10, 2\)\)"):
        getattr(la, method)(X)


@pytest.mark.parametrize("method", PREDICT)
def test_predictive_dtype_and_type(reg, method):
    la, X, _ = reg
    with pytest.raises(InputDtypeError, match=r"X has dtype torch.float32"):
        getattr(la, method)(X.float())
    with pytest.raises(InputDtypeError, match=r"X must be a torch.Tensor, got list"):
        getattr(la, method)(X.tolist())


@pytest.mark.parametrize("method", PREDICT)
def test_predictive_empty(reg, method):
    la, _, _ = reg
    with pytest.raises(EmptyDataError, match=r"shape \(0, 2\)"):
        getattr(la, method)(torch.zeros(0, D, dtype=F64))


def test_predictive_samples_bad_input(reg):
    la, X, _ = reg
    with pytest.raises(InputShapeError, match=r"got \(3, 4\)"):
        la.predictive_samples(torch.zeros(3, 4, dtype=F64), 2)
    with pytest.raises(HyperparameterError, match=r"positive int, got 0"):
        la.predictive_samples(X, 0)


@pytest.mark.parametrize(
    "call",
    [
        lambda la: la.predictive(torch.zeros(3, D, dtype=F64)),
        lambda la: la.predictive_variance(torch.zeros(3, D, dtype=F64)),
        lambda la: la.log_marginal_likelihood(),
        lambda la: la.sample_weights(2),
        lambda la: la.predictive_samples(torch.zeros(3, D, dtype=F64), 2),
    ],
    ids=[
        "predictive",
        "predictive_variance",
        "log_marginal_likelihood",
        "sample_weights",
        "predictive_samples",
    ],
)
@pytest.mark.parametrize("structure", [Full(), Diagonal(), Kron(), Functional()], ids=repr)
def test_unfitted(call, structure):
    la = LaplaceApproximation(tiny_mlp(), structure=structure)
    with pytest.raises(NotFittedError, match=r"call fit\(\) first"):
        call(la)


# ----------------------------------------------------------------------------------------
# Numerical trouble: the Cholesky jitter rule


def _rotation(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    Q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=F64))
    return Q


def _with_eigenvalues(evals, seed=0):
    Q = _rotation(len(evals), seed)
    H = Q @ torch.diag(torch.tensor(evals, dtype=F64)) @ Q.T
    return (H + H.T) / 2


def _rank_one_with_roundoff(n=4):
    v = torch.arange(1.0, n + 1, dtype=F64)
    return torch.outer(v, v) - 1e-14 * torch.eye(n, dtype=F64)


@pytest.mark.parametrize(
    "make_H",
    [
        lambda: torch.outer(torch.arange(1.0, 5.0, dtype=F64), torch.arange(1.0, 5.0, dtype=F64)),
        _rank_one_with_roundoff,
        lambda: _with_eigenvalues([2.0, 1.0, 0.5, -1e-12]),
        lambda: _with_eigenvalues([1.0, 1.0, 0.0, 0.0, 0.0]),
    ],
    ids=["rank-one", "rank-one-minus-roundoff", "neg-1e-12", "rank-two"],
)
def test_cholesky_singular_psd_warns_and_factorises(make_H):
    H = make_H()
    assert not bool(torch.linalg.cholesky_ex(H).info == 0)  # plain Cholesky really fails
    with pytest.warns(NumericalWarning, match=r"added jitter 1e-\d+ x mean diagonal"):
        L = robust_cholesky(H)
    assert torch.isfinite(L).all()
    torch.testing.assert_close(L @ L.T, H, rtol=0, atol=1e-4 * H.diagonal().abs().mean().item())


def test_cholesky_positive_definite_is_silent():
    H = _with_eigenvalues([3.0, 1.0, 0.1])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        L = robust_cholesky(H)
    torch.testing.assert_close(L, torch.linalg.cholesky(H), rtol=0, atol=0)


@pytest.mark.parametrize(
    "make_H, size",
    [
        (lambda: _with_eigenvalues([2.0, 1.0, -1.0]), 3),
        (lambda: -torch.eye(4, dtype=F64), 4),
        (lambda: torch.full((2, 2), float("nan"), dtype=F64), 2),
    ],
    ids=["eig-minus-one", "negative-definite", "nan"],
)
def test_cholesky_indefinite_raises(make_H, size):
    with pytest.raises(NumericalError, match=rf"Cholesky of the {size}x{size} posterior precision failed"):
        robust_cholesky(make_H())


# ----------------------------------------------------------------------------------------
# state_dict round trips


STRUCTURES = [Full(), Diagonal(), Kron(), Functional()]
WEIGHTS = [AllWeights(), LastLayer()]
LIKELIHOODS = ["regression", "classification"]


def _fitted_with_state(likelihood, weights, structure):
    net = tiny_mlp(k=n_outputs(likelihood), seed=0)
    X, Y = data(likelihood, n=12)
    la = fit_laplace(net, X, Y, likelihood=likelihood, weights=weights, structure=structure, noise_std=0.3)
    n_t = la.subset.n_tensors
    la.prior_precision = torch.linspace(0.4, 2.5, n_t, dtype=F64)
    return la, X


def _fresh(likelihood, weights, structure):
    """An unfitted posterior on a copy of the network with *different* random weights."""
    net = tiny_mlp(k=n_outputs(likelihood), seed=123)
    return LaplaceApproximation(copy.deepcopy(net), likelihood, weights, structure)


def _assert_same(la, la2, X):
    exact = {"rtol": 0, "atol": 1e-12}
    Xt = X[:5] + 0.1
    m1, c1 = la.predictive(Xt)
    m2, c2 = la2.predictive(Xt)
    torch.testing.assert_close(m2, m1, **exact)
    torch.testing.assert_close(c2, c1, **exact)
    torch.testing.assert_close(la2.predictive_variance(Xt), la.predictive_variance(Xt), **exact)
    torch.testing.assert_close(la2.log_marginal_likelihood(), la.log_marginal_likelihood(), **exact)
    torch.testing.assert_close(la2.prior_precision, la.prior_precision, **exact)
    torch.testing.assert_close(la2.noise_std, la.noise_std, **exact)
    assert la2.prior_precision.shape == la.prior_precision.shape
    g1, g2 = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    torch.testing.assert_close(la2.sample_weights(3, g2), la.sample_weights(3, g1), **exact)


ROUND_TRIP = pytest.mark.parametrize(
    "likelihood, weights, structure",
    [(lik, w, s) for lik in LIKELIHOODS for w in WEIGHTS for s in STRUCTURES],
    ids=lambda v: v[:5] if isinstance(v, str) else repr(v),
)


@ROUND_TRIP
def test_state_dict_round_trip(likelihood, weights, structure):
    la, X = _fitted_with_state(likelihood, weights, structure)
    state = la.state_dict()
    la2 = _fresh(likelihood, weights, structure)
    assert not torch.allclose(la2.network[0].weight, la.network[0].weight)
    la2.load_state_dict(state)
    _assert_same(la, la2, X)


@ROUND_TRIP
def test_state_dict_round_trip_through_torch_save(likelihood, weights, structure):
    la, X = _fitted_with_state(likelihood, weights, structure)
    buf = io.BytesIO()
    torch.save(la.state_dict(), buf)
    buf.seek(0)
    la2 = _fresh(likelihood, weights, structure)
    la2.load_state_dict(torch.load(buf, weights_only=True))
    _assert_same(la, la2, X)


def test_state_dict_is_a_copy_of_hyperparameters():
    """Changing the hyperparameters after saving does not alter the saved state."""
    la, X = _fitted_with_state("regression", AllWeights(), Full())
    state = copy.deepcopy(la.state_dict())
    lml = la.log_marginal_likelihood().detach().clone()
    la.prior_precision = 3.0
    la.noise_std = 1.7
    la2 = _fresh("regression", AllWeights(), Full())
    la2.load_state_dict(state)
    torch.testing.assert_close(la2.log_marginal_likelihood(), lml, rtol=0, atol=1e-12)
