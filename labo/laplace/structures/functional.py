"""Function-space (GP / NTK view) Laplace: the ``Functional()`` structure.

The linearised Laplace posterior with the exact GGN, ``H = s · RᵀR + Λ₀`` (``R`` the
GGN square root of ``curvature.ggn_sqrt``, ``N = n·K`` rows; ``s = 1/σ²`` for
regression), is a GP with kernel ``k(x, x') = J(x) Λ₀⁻¹ J(x')ᵀ``. All operations
are done with the ``N x N`` matrix ``M = R Λ₀⁻¹ Rᵀ + I/s`` instead of the ``S x S``
precision (Woodbury and Sylvester), so the cost is ``O(N³ + N² S)`` instead of
``O(S³)``: the right choice whenever ``N < S`` (few observations, big networks,
the usual BO regime). The results equal ``Full()`` exactly (tested to 1e-8):

* ``log det H = Σ log Λ₀ + log det(I + s R Λ₀⁻¹ Rᵀ)``
* ``J H⁻¹ J*ᵀ = J Λ₀⁻¹ J*ᵀ − J Λ₀⁻¹ Rᵀ M⁻¹ R Λ₀⁻¹ J*ᵀ``
* samples: ``δ = z₀ − Λ₀⁻¹ Rᵀ M⁻¹ (R z₀ + ε)``, ``z₀ ~ N(0, Λ₀⁻¹)``, ``ε ~ N(0, I/s)``
  (Matheron's rule), which has covariance ``H⁻¹``.

With a scalar prior the eigenvalues ``g`` of ``R Rᵀ`` are computed once, after
which ``log det H`` costs ``O(N)`` per hyperparameter step.

New observations extend ``R`` by rows and the Cholesky factor of ``M`` by a block
(``O(N² q)``: exact conditioning, see ``labo.laplace.structures.functional_update`` and
``labo.laplace.predictive.conditioning``). For large ``n``, ``Functional(context_points=M)`` uses
only ``M`` context points chosen greedily or at random (:func:`select_context`): an
approximation whose error against the exact posterior is reported in
``docs/benchmarks.md``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from labo.exceptions import HyperparameterError
from labo.laplace.linearization.linear_factors import (
    LayerFactors,
    factor_plan,
    kernel_diag_from_factors,
    kernel_from_factors,
    linear_factors,
    per_tensor_prior,
)
from labo.laplace.structures.curvature import ggn_sqrt, row_sqrt
from labo.laplace.structures.options import Curvature, Structure
from labo.laplace.structures.precisions import robust_cholesky
from labo.laplace.subsets import ResolvedSubset
from labo.laplace.validation import randn


class FunctionalPrecision:
    """``H = s · RᵀR + diag(prior)`` represented through ``N x N`` matrices."""

    def __init__(
        self,
        R: Tensor,
        prior: Tensor,
        scale: Tensor,
        eig: Tensor | None = None,
        train_factors: list[LayerFactors] | None = None,
        layer_priors=None,
    ):
        self.R, self.prior, self.scale, self._eig = R, prior, scale, eig
        self.dinv = 1.0 / prior
        self.B = R * self.dinv  # R Λ₀⁻¹, (N, S)
        N = R.shape[0]
        eye = torch.eye(N, dtype=R.dtype, device=R.device)
        # Jacobian-free path (see linear_factors): kernels from per-layer factors.
        self.train_factors = train_factors if layer_priors is not None else None
        self.layer_priors = layer_priors
        if self.train_factors is not None:
            self.M = (
                kernel_from_factors(train_factors, train_factors, layer_priors).reshape(N, N) + eye / scale
            )
        else:
            self.M = self.B @ R.T + eye / scale
        self._L: Tensor | None = None

    @property
    def supports_factors(self) -> bool:
        return self.train_factors is not None

    def _factor_cross(self, factors: list[LayerFactors]) -> Tensor:
        """``L⁻¹ K_XT``: ``(..., N, n·K)`` from the rows' factors."""
        Ktx = kernel_from_factors(factors, self.train_factors, self.layer_priors)
        n, K = Ktx.shape[-4], Ktx.shape[-3]
        Ktx = Ktx.reshape(*Ktx.shape[:-4], n * K, -1)
        flat = Ktx.reshape(-1, Ktx.shape[-1]).T
        W = torch.linalg.solve_triangular(self.L, flat, upper=False)
        return W.T.reshape(Ktx.shape).transpose(-1, -2)

    def quad_factors(self, factors: list[LayerFactors]) -> Tensor:
        """``J H⁻¹ Jᵀ`` ``(..., n·K, n·K)`` for rows given by factors ``(..., n, ...)``."""
        Kss = kernel_from_factors(factors, factors, self.layer_priors)
        n, K = Kss.shape[-4], Kss.shape[-3]
        Kss = Kss.reshape(*Kss.shape[:-4], n * K, n * K)
        W = self._factor_cross(factors)
        return Kss - W.transpose(-1, -2) @ W

    def quad_diag_factors(self, factors: list[LayerFactors]) -> Tensor:
        """Diagonal ``(..., n·K)`` of :meth:`quad_factors`."""
        kd = kernel_diag_from_factors(factors, self.layer_priors)
        kd = kd.reshape(*kd.shape[:-2], -1)
        return kd - self._factor_cross(factors).pow(2).sum(-2)

    @property
    def L(self) -> Tensor:
        if self._L is None:
            self._L = robust_cholesky(self.M)
        return self._L

    def logdet(self) -> Tensor:
        base = self.prior.log().sum()
        if self._eig is not None:  # constant prior: eigenvalues of R Rᵀ, O(N)
            return base + torch.log1p(self.scale * self._eig / self.prior[0]).sum()
        N = self.R.shape[0]
        return base + 2 * self.L.diagonal().log().sum() + N * torch.log(self.scale)

    def _cross(self, J: Tensor) -> Tensor:
        """``L⁻¹ R Λ₀⁻¹ Jᵀ`` for ``J`` of shape ``(..., n, S)`` -> ``(..., N, n)``."""
        C = J @ self.B.T  # (..., n, N)
        flat = C.reshape(-1, C.shape[-1]).T
        W = torch.linalg.solve_triangular(self.L, flat, upper=False)
        return W.T.reshape(C.shape).transpose(-1, -2)

    def quad(self, J: Tensor) -> Tensor:
        W = self._cross(J)
        return (J * self.dinv) @ J.transpose(-1, -2) - W.transpose(-1, -2) @ W

    def quad_diag(self, J: Tensor) -> Tensor:
        W = self._cross(J)
        return (J.pow(2) * self.dinv).sum(-1) - W.pow(2).sum(-2)

    def solve(self, V: Tensor) -> Tensor:
        DV = V * self.dinv.unsqueeze(-1)
        return DV - self.B.T @ torch.cholesky_solve(self.R @ DV, self.L)

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        S, N = self.R.shape[1], self.R.shape[0]
        kw = {"generator": generator, "dtype": self.R.dtype, "device": self.R.device}
        z0 = randn(S, n, **kw) * self.dinv.sqrt().unsqueeze(-1)
        eps = randn(N, n, **kw) / self.scale.sqrt()
        u = self.R @ z0 + eps
        return (z0 - self.B.T @ torch.cholesky_solve(u, self.L)).T

    def precision(self) -> Tensor:
        return self.scale * self.R.T @ self.R + torch.diag(self.prior)

    def covariance(self) -> Tensor:
        return torch.diag(self.dinv) - self.B.T @ torch.cholesky_solve(self.B, self.L)


CONTEXT_METHODS = ("greedy", "random")


def select_context(
    network: nn.Module,
    subset: ResolvedSubset,
    plan,
    X: Tensor,
    n_outputs: int,
    size: int,
    method: str = "greedy",
    seed: int = 0,
) -> Tensor:
    """Indices ``(size,)`` of the context points that stand in for all ``n`` rows of ``X``.

    * ``"random"``: a uniform subset without replacement (``seed``).
    * ``"greedy"``: pivoted Cholesky of the NTK Gram matrix ``k(x, x') = Σ_k J_k(x) J_k(x')ᵀ``
      (unit prior, outputs summed): each step takes the point whose kernel variance,
      conditioned on the points already chosen, is largest, i.e. the point the current
      context explains worst. Costs ``size`` kernel columns, ``O(size · n)`` memory;
      columns come from per-layer factors when the subset is whole Linear layers, else
      from the GGN square-root rows of all ``n`` points.
    """
    n = X.shape[0]
    if method == "random":
        g = torch.Generator(device="cpu").manual_seed(seed)
        return torch.randperm(n, generator=g)[:size].sort().values.to(X.device)
    res = linear_factors(network, plan, X) if plan is not None else None
    if res is not None:
        factors = res[1]
        ones = torch.ones((), dtype=X.dtype, device=X.device)
        priors = [(ones, ones if lf.has_bias else None) for lf in factors]
        diag = kernel_diag_from_factors(factors, priors).sum(-1)

        def column(i: int) -> Tensor:
            one = [LayerFactors(lf.name, lf.a[i : i + 1], lf.b[i : i + 1], lf.has_bias) for lf in factors]
            return kernel_from_factors(factors, one, priors).diagonal(dim1=-3, dim2=-1).sum((-1, -2))

    else:
        R = ggn_sqrt(network, subset, "regression", X, n_outputs).reshape(n, n_outputs, -1)
        diag = R.pow(2).sum((-1, -2))

        def column(i: int) -> Tensor:
            return torch.einsum("nks,ks->n", R, R[i])

    chosen = []
    Lrows = torch.zeros(size, n, dtype=X.dtype, device=X.device)
    d = diag.clone()
    for j in range(size):
        i = int(d.argmax())
        chosen.append(i)
        piv = d[i].clamp_min(1e-300).sqrt()
        Lrows[j] = (column(i) - Lrows[:j].T @ Lrows[:j, i]) / piv
        d = d - Lrows[j].pow(2)
        d[chosen] = -float("inf")
    return torch.tensor(sorted(chosen), device=X.device)


class FunctionalCurvature(Curvature):
    """Stores the GGN square root ``R`` (``N x S``); see the module docstring."""

    def __init__(
        self,
        n_weights: int,
        network: nn.Module | None = None,
        subset: ResolvedSubset | None = None,
        context: tuple[int, str, int] | None = None,
    ):
        super().__init__()
        self.context = context
        self.register_buffer("R", torch.zeros(0, n_weights))
        self.register_buffer("context_index", torch.zeros(0, dtype=torch.long))
        self._eig: Tensor | None = None
        self._subset = subset
        self.plan = None if network is None else factor_plan(network, subset)
        for i in range(len(self.plan or [])):
            self.register_buffer(f"fa_{i}", torch.zeros(0, 0))
            self.register_buffer(f"fb_{i}", torch.zeros(0, 0, 0))

    def compute(self, network, subset, likelihood, X, n_outputs, noise_var=None) -> None:
        index = torch.arange(X.shape[0], device=X.device)
        if self.context is not None and X.shape[0] > self.context[0]:
            size, method, seed = self.context
            index = select_context(network, subset, self.plan, X, n_outputs, size, method, seed)
            X = X[index]
            noise_var = None if noise_var is None else noise_var[index]
        self.context_index = index
        self.R = ggn_sqrt(network, subset, likelihood, X, n_outputs, noise_var)
        self._eig = None
        if self.plan is not None:
            res = linear_factors(network, self.plan, X)
            if res is None:
                self.plan = None
            else:
                F, factors = res
                M = row_sqrt(likelihood, F, noise_var)
                for i, lf in enumerate(factors):
                    b = lf.b if M is None else torch.einsum("nkj,nko->njo", M, lf.b)
                    setattr(self, f"fa_{i}", lf.a)
                    setattr(self, f"fb_{i}", b)
        self.fitted.fill_(True)

    def _train_factors(self) -> list[LayerFactors] | None:
        if self.plan is None:
            return None
        return [
            LayerFactors(name, getattr(self, f"fa_{i}"), getattr(self, f"fb_{i}"), has_bias)
            for i, (name, has_bias) in enumerate(self.plan)
        ]

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        for key in ["R", "context_index"] + [k for k in self._buffers if k.startswith(("fa_", "fb_"))]:
            if prefix + key in state_dict:
                setattr(self, key, torch.empty_like(state_dict[prefix + key]))
        self._eig = None
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def precision(
        self, prior: Tensor, scale: Tensor, prior_is_scalar: bool = False, prior_is_tied: bool = True
    ):
        """The posterior precision for a per-weight ``prior`` (expanded) and likelihood ``scale``.

        ``prior_is_tied``: the per-weight vector was expanded from a scalar or per-tensor
        prior. The layer-factor path reads one value per tensor, so for an untied
        per-weight prior that needs gradients it is skipped: its derivative would land
        on one entry per tensor.
        """
        self.check_fitted()
        eig = None
        if prior_is_scalar:
            if self._eig is None:
                self._eig = torch.linalg.eigvalsh(self.R @ self.R.T).clamp_min(0.0)
            eig = self._eig
        layer_priors = None
        if self.plan is not None and (prior_is_tied or not prior.requires_grad):
            layer_priors = per_tensor_prior(prior, self._subset, self.plan)
        return FunctionalPrecision(self.R, prior, scale, eig, self._train_factors(), layer_priors)

    def dense(self) -> Tensor:
        return self.R.T @ self.R


class Functional(Structure):
    """Function-space Laplace: exact GGN posterior computed with ``N = n·K`` sized matrices.

    Args:
        context_points: If set and the data have more rows, the curvature uses only this
            many context points (an approximation: the posterior of a subset of the data,
            ``O(M³ + M² S)`` instead of ``O(N³ + N² S)``; the likelihood term of the
            marginal likelihood still uses all data). Default: all data (exact).
        context: How the context points are chosen, ``"greedy"`` (pivoted Cholesky of
            the NTK Gram matrix, see :func:`select_context`) or ``"random"``.
        seed: Seed of the random selection.
    """

    def __init__(self, context_points: int | None = None, context: str = "greedy", seed: int = 0):
        if context_points is not None and (
            isinstance(context_points, bool) or not isinstance(context_points, int) or context_points < 1
        ):
            raise HyperparameterError(
                f"context_points must be a positive int or None, got {context_points!r}."
            )
        if context not in CONTEXT_METHODS:
            raise HyperparameterError(f"context must be one of {CONTEXT_METHODS}, got {context!r}.")
        self.context_points, self.context, self.seed = context_points, context, seed

    def build(self, network: nn.Module, subset: ResolvedSubset) -> Curvature:
        opts = None if self.context_points is None else (self.context_points, self.context, self.seed)
        return FunctionalCurvature(subset.n_weights, network, subset, opts)

    def __repr__(self) -> str:
        if self.context_points is None:
            return "Functional()"
        return f"Functional(context_points={self.context_points}, context={self.context!r})"


def prefer_functional(n_data: int, n_outputs: int, n_weights: int, max_rows: int = 2000) -> bool:
    """The automatic rule: function space when ``N = n·K`` is below ``S`` and ``max_rows``.

    Function space costs ``O(N³ + N² S)`` and stores ``N x S`` numbers; weight-space
    Kron costs ``O(n S)`` to fit but over-counts the Occam factor of the marginal
    likelihood when ``N ≪ S``. Past ``max_rows`` rows the ``N³`` term dominates a BO
    iteration, so Kron takes over.
    """
    N = n_data * n_outputs
    return N < n_weights and N <= max_rows
