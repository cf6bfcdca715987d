"""The ``Precision`` protocol (labo/laplace/structures/protocol.py), checked on every class.

Each posterior-precision class must satisfy the core protocol, exactly the right ones the
optional layer-factor protocols, and every operation must agree with the dense
``precision()`` / ``covariance()`` of the same object (one shared test over all classes,
small float64 problems).
"""

import pytest
import torch

from labo.laplace import Diagonal, Full, Functional, Kron, condition, fit_laplace
from labo.laplace.linearization.jacobians import output_and_jacobian
from labo.laplace.predictive.conditioning import WoodburyPrecision
from labo.laplace.predictive.glm import glm_factors, glm_layer_terms
from labo.laplace.structures.functional import FunctionalPrecision
from labo.laplace.structures.functional_update import ExtendedFunctionalPrecision
from labo.laplace.structures.precisions import DiagonalPrecision, FullPrecision, KronPrecision
from labo.laplace.structures.protocol import LayerBindingPrecision, LayerTermsPrecision, Precision
from tests.conftest import make_problem

# name -> (structure, conditioned?, class, binds layers?, has layer terms?)
CASES = {
    "full": (Full(), False, FullPrecision, True, False),
    "diagonal": (Diagonal(), False, DiagonalPrecision, True, True),
    "kron": (Kron(), False, KronPrecision, False, True),
    "functional": (Functional(), False, FunctionalPrecision, False, False),
    "woodbury": (Kron(), True, WoodburyPrecision, False, False),
    "extended-functional": (Functional(), True, ExtendedFunctionalPrecision, False, False),
}


def _posterior(name: str):
    structure, conditioned, *_ = CASES[name]
    net, X, Y = make_problem("regression", (2, 5, 2), n=10, seed=0)
    la = fit_laplace(net, X, Y, structure=structure, prior_precision=2.0, noise_std=0.5)
    g = torch.Generator().manual_seed(1)
    Xt = torch.randn(4, 2, generator=g, dtype=torch.float64)
    if not conditioned:
        return la, la.posterior_precision(), Xt
    Xc = torch.randn(3, 2, generator=g, dtype=torch.float64)
    Yc = torch.randn(3, 2, generator=g, dtype=torch.float64)
    return la, condition(la, Xc, Yc).precision, Xt


@pytest.mark.parametrize("name", list(CASES))
def test_class_satisfies_the_protocols(name):
    _, cls, binds, terms = CASES[name][1:]
    _, precision, _ = _posterior(name)
    assert type(precision) is cls
    assert isinstance(precision, Precision)
    assert isinstance(precision, LayerBindingPrecision) is binds
    assert isinstance(precision, LayerTermsPrecision) is terms


def test_protocol_rejects_an_object_missing_an_operation():
    class NoSample:
        supports_factors = False

        def logdet(self): ...
        def solve(self, V): ...
        def quad(self, J): ...
        def quad_diag(self, J): ...
        def precision(self): ...
        def covariance(self): ...
        def quad_factors(self, factors): ...
        def quad_diag_factors(self, factors): ...

    assert not isinstance(NoSample(), Precision)
    assert not isinstance(NoSample(), LayerBindingPrecision)
    assert not isinstance(NoSample(), LayerTermsPrecision)


@pytest.mark.parametrize("name", list(CASES))
def test_operations_agree_with_the_dense_matrices(name):
    la, precision, Xt = _posterior(name)
    H, Sigma = precision.precision(), precision.covariance()
    S = la.n_weights
    assert H.shape == Sigma.shape == (S, S)
    torch.testing.assert_close(H @ Sigma, torch.eye(S, dtype=H.dtype), atol=1e-8, rtol=0)
    torch.testing.assert_close(precision.logdet(), torch.linalg.slogdet(H)[1], atol=1e-8, rtol=1e-10)
    V = torch.randn(S, 3, generator=torch.Generator().manual_seed(2), dtype=H.dtype)
    torch.testing.assert_close(precision.solve(V), Sigma @ V, atol=1e-8, rtol=1e-8)
    _, J = output_and_jacobian(la.network, la.subset, Xt)
    J = J.reshape(-1, S)  # (n·K, S)
    quad = J @ Sigma @ J.T
    torch.testing.assert_close(precision.quad(J), quad, atol=1e-8, rtol=1e-8)
    torch.testing.assert_close(precision.quad_diag(J), quad.diagonal(), atol=1e-8, rtol=1e-8)
    if precision.supports_factors:
        fac = glm_factors(la, Xt, torch.Size([Xt.shape[0]]), precision)
        assert fac is not None
        torch.testing.assert_close(precision.quad_factors(fac[1]), quad, atol=1e-8, rtol=1e-8)
        torch.testing.assert_close(precision.quad_diag_factors(fac[1]), quad.diagonal(), atol=1e-8, rtol=1e-8)
    draws = precision.sample(40000, torch.Generator().manual_seed(3))
    assert draws.shape == (40000, S)
    emp = draws.T @ draws / draws.shape[0]
    assert float((emp - Sigma).norm() / Sigma.norm()) < 0.05


@pytest.mark.parametrize("name", ["full", "diagonal", "kron", "functional"])
def test_layer_terms_dispatch_follows_the_protocol(name):
    la, precision, Xt = _posterior(name)
    terms = glm_layer_terms(la, Xt)
    assert (terms is not None) is isinstance(precision, LayerTermsPrecision)
    assert isinstance(precision, LayerBindingPrecision) is (name in ("full", "diagonal"))
    if isinstance(precision, LayerBindingPrecision):  # bound by precision_at: every weight is in a layer
        assert precision.supports_factors
