"""One shared test class for every posterior precision structure (linear_operator style).

A structure is tested by subclassing :class:`StructureTestCase` and building its
precision operator plus the dense matrix it stands for.
"""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from labo.laplace.structures.functional import FunctionalPrecision
from labo.laplace.structures.precisions import DiagonalPrecision, FullPrecision, KronPrecision


def _spd(n, seed, rank=None):
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(n, rank or n, generator=g, dtype=torch.float64)
    return A @ A.T


class StructureTestCase:
    S = 10

    def make(self):
        """Return ``(operator, dense H)``."""
        raise NotImplementedError

    def test_precision_and_covariance(self):
        op, H = self.make()
        torch.testing.assert_close(op.precision(), H)
        torch.testing.assert_close(op.covariance(), torch.linalg.inv(H))

    def test_logdet(self):
        op, H = self.make()
        torch.testing.assert_close(op.logdet(), torch.linalg.slogdet(H)[1])

    def test_solve(self):
        op, H = self.make()
        V = torch.randn(self.S, 3, dtype=torch.float64)
        torch.testing.assert_close(op.solve(V), torch.linalg.solve(H, V))

    @pytest.mark.parametrize("batch", [(), (2,), (2, 3)])
    def test_quad_and_diag(self, batch):
        op, H = self.make()
        J = torch.randn(*batch, 4, self.S, dtype=torch.float64)
        expected = J @ torch.linalg.inv(H) @ J.transpose(-1, -2)
        torch.testing.assert_close(op.quad(J), expected)
        torch.testing.assert_close(op.quad_diag(J), expected.diagonal(dim1=-2, dim2=-1))

    def test_sample_covariance(self):
        op, H = self.make()
        n = 40000
        draws = op.sample(n, torch.Generator().manual_seed(0))
        assert draws.shape == (n, self.S)
        emp = draws.T @ draws / n
        cov = torch.linalg.inv(H)
        # Monte-Carlo error of a covariance entry is ~ sqrt(S_ii S_jj / n)
        tol = 5 * torch.sqrt(cov.diagonal().outer(cov.diagonal()) / n)
        assert ((emp - cov).abs() <= tol).all()

    def test_sample_reproducible(self):
        op, _ = self.make()
        a = op.sample(3, torch.Generator().manual_seed(1))
        b = op.sample(3, torch.Generator().manual_seed(1))
        torch.testing.assert_close(a, b, rtol=0, atol=0)

    def test_gradients_wrt_hyperparameters(self):
        """logdet and quad are differentiable w.r.t. prior and scale (checked by gradcheck)."""
        J = torch.randn(3, self.S, dtype=torch.float64)

        def f(prior, scale):
            op, _ = self.make(prior, scale)
            return op.logdet(), op.quad(J)

        prior = (0.5 + torch.rand(self.S, dtype=torch.float64)).requires_grad_(True)
        scale = torch.tensor(1.3, dtype=torch.float64, requires_grad=True)
        assert torch.autograd.gradcheck(f, (prior, scale))


class TestFull(StructureTestCase):
    def make(self, prior=None, scale=None):
        C = _spd(self.S, 0, rank=4)  # rank-deficient data curvature, as a GGN usually is
        prior = torch.linspace(0.5, 2.0, self.S, dtype=torch.float64) if prior is None else prior
        scale = torch.tensor(2.0, dtype=torch.float64) if scale is None else scale
        return FullPrecision(C, prior, scale), scale * C + torch.diag(prior)

    def test_eigen_logdet_for_scalar_prior(self):
        C = _spd(self.S, 0, rank=4)
        prior = torch.full((self.S,), 0.7, dtype=torch.float64)
        scale = torch.tensor(2.0, dtype=torch.float64)
        op = FullPrecision(C, prior, scale, eig=torch.linalg.eigvalsh(C))
        torch.testing.assert_close(op.logdet(), torch.linalg.slogdet(scale * C + 0.7 * torch.eye(self.S))[1])


class TestDiagonal(StructureTestCase):
    def make(self, prior=None, scale=None):
        c = torch.rand(self.S, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
        prior = torch.linspace(0.5, 2.0, self.S, dtype=torch.float64) if prior is None else prior
        scale = torch.tensor(2.0, dtype=torch.float64) if scale is None else scale
        return DiagonalPrecision(c, prior, scale), torch.diag(scale * c + prior)


class TestKron(StructureTestCase):
    """Two Kronecker blocks (2x3 and 1x2, interleaved in the flat vector) plus a diagonal rest."""

    S = 2 * 3 + 1 * 2 + 2

    def make(self, prior=None, scale=None):
        perm = torch.randperm(self.S, generator=torch.Generator().manual_seed(4))
        idx1, idx2, rest = perm[:6], perm[6:8], perm[8:]
        G1, A1, G2, A2 = _spd(2, 5), _spd(3, 6, rank=2), _spd(1, 7), _spd(2, 8)
        blocks = []
        for idx, G, A in ((idx1, G1, A1), (idx2, G2, A2)):
            lG, QG = torch.linalg.eigh(G)
            lA, QA = torch.linalg.eigh(A)
            blocks.append((idx, QG, lG.clamp_min(0), QA, lA.clamp_min(0)))
        c = torch.tensor([0.3, 1.2], dtype=torch.float64)
        prior = torch.linspace(0.5, 2.0, self.S, dtype=torch.float64) if prior is None else prior
        scale = torch.tensor(2.0, dtype=torch.float64) if scale is None else scale
        op = KronPrecision(blocks, (rest, c), prior, scale, self.S)
        # dense definition with the documented prior rule d̃ = diag(Qᵀ D Q)
        H = torch.zeros(self.S, self.S, dtype=torch.float64)
        H[rest, rest] = scale * c + prior[rest]
        for idx, QG, lG, QA, lA in blocks:
            Q = torch.kron(QG, QA)
            d = torch.diagonal(Q.T @ torch.diag(prior[idx]) @ Q)
            H[idx.unsqueeze(-1), idx] = Q @ torch.diag(scale * torch.kron(lG, lA) + d) @ Q.T
        return op, H

    def test_constant_prior_is_exact(self):
        """With a prior constant within each block, H = scale · G ⊗ A + δ I exactly."""
        S = 6
        G, A = _spd(2, 5), _spd(3, 6, rank=2)
        lG, QG = torch.linalg.eigh(G)
        lA, QA = torch.linalg.eigh(A)
        prior = torch.full((S,), 0.9, dtype=torch.float64)
        scale = torch.tensor(1.7, dtype=torch.float64)
        empty = (torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.float64))
        op = KronPrecision([(torch.arange(S), QG, lG, QA, lA)], empty, prior, scale, S)
        exact = scale * torch.kron(G, A) + 0.9 * torch.eye(S)
        torch.testing.assert_close(op.precision(), exact)
        torch.testing.assert_close(op.logdet(), torch.linalg.slogdet(exact)[1])
        assert math.isfinite(float(op.logdet()))


class TestFunctional(StructureTestCase):
    """Function space: H = s RᵀR + diag(prior) with N = 4 < S rows (and N > S below)."""

    N = 4

    def make(self, prior=None, scale=None):
        R = torch.randn(self.N, self.S, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
        prior = torch.linspace(0.5, 2.0, self.S, dtype=torch.float64) if prior is None else prior
        scale = torch.tensor(2.0, dtype=torch.float64) if scale is None else scale
        return FunctionalPrecision(R, prior, scale), scale * R.T @ R + torch.diag(prior)

    def test_eigen_logdet_for_scalar_prior(self):
        R = torch.randn(self.N, self.S, dtype=torch.float64)
        prior = torch.full((self.S,), 0.7, dtype=torch.float64)
        scale = torch.tensor(2.0, dtype=torch.float64)
        op = FunctionalPrecision(R, prior, scale, eig=torch.linalg.eigvalsh(R @ R.T))
        torch.testing.assert_close(
            op.logdet(), torch.linalg.slogdet(scale * R.T @ R + 0.7 * torch.eye(self.S))[1]
        )


class TestFunctionalTall(TestFunctional):
    N = 15


@settings(max_examples=25, deadline=None)
@given(
    out1=st.integers(1, 4),
    in1=st.integers(1, 4),
    n_rest=st.integers(0, 3),
    seed=st.integers(0, 10_000),
)
def test_kron_random_block_layouts(out1, in1, n_rest, seed):
    """Property: for any block sizes and any interleaving, Kron ops equal their dense matrix."""
    g = torch.Generator().manual_seed(seed)
    S = out1 * in1 + n_rest
    perm = torch.randperm(S, generator=g)
    idx, rest = perm[: out1 * in1], perm[out1 * in1 :]
    G, A = _spd(out1, seed + 1), _spd(in1, seed + 2)
    lG, QG = torch.linalg.eigh(G)
    lA, QA = torch.linalg.eigh(A)
    prior = 0.2 + torch.rand(S, generator=g, dtype=torch.float64)
    c = torch.rand(n_rest, generator=g, dtype=torch.float64)
    scale = torch.tensor(1.5, dtype=torch.float64)
    op = KronPrecision([(idx, QG, lG.clamp_min(0), QA, lA.clamp_min(0))], (rest, c), prior, scale, S)
    H = op.precision()
    J = torch.randn(3, S, generator=g, dtype=torch.float64)
    torch.testing.assert_close(op.quad(J), J @ torch.linalg.solve(H, J.T))
    torch.testing.assert_close(op.logdet(), torch.linalg.slogdet(H)[1])
    V = torch.randn(S, 2, generator=g, dtype=torch.float64)
    torch.testing.assert_close(op.solve(V), torch.linalg.solve(H, V))
