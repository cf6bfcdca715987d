"""Posterior structures: the options ``Full()``, ``Diagonal()``, ``Kron()`` and their curvature modules.

A structure option builds a *curvature* module that stores the data-term GGN in
its own form (dense matrix, diagonal, eigendecomposed Kronecker factors; buffers,
so ``state_dict`` works). Given hyperparameters, the curvature yields a posterior
precision (:mod:`labo.laplace.structures.precisions`, where the operations and the exact
Kron prior rule are documented).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from labo.exceptions import NotFittedError, StructureError
from labo.laplace.structures.curvature import ggn, kfac_factors, kfac_layer_plan
from labo.laplace.structures.precisions import (
    DiagonalPrecision,
    FullPrecision,
    KronPrecision,
    clamped_eigh,
)
from labo.laplace.subsets import ResolvedSubset

# ----------------------------------------------------------------------------------------
# Curvature modules: store the data-term GGN (buffers, so state_dict works).


class Curvature(nn.Module):
    """Data-term curvature in one structure's form; ``compute`` fills it."""

    def __init__(self):
        super().__init__()
        self.register_buffer("fitted", torch.tensor(False))

    def check_fitted(self) -> None:
        if not bool(self.fitted):
            raise NotFittedError("The Laplace posterior has no curvature yet: call fit() first.")

    def compute(self, network, subset, likelihood, X, n_outputs, noise_var=None) -> None:  # pragma: no cover
        raise NotImplementedError

    def precision(
        self, prior: Tensor, scale: Tensor, prior_is_scalar: bool = False, prior_is_tied: bool = True
    ):
        raise NotImplementedError  # pragma: no cover

    def dense(self) -> Tensor:  # pragma: no cover
        raise NotImplementedError


class FullCurvature(Curvature):
    def __init__(self, n_weights: int):
        super().__init__()
        self.register_buffer("C", torch.zeros(n_weights, n_weights))
        self._eig: Tensor | None = None

    def compute(self, network, subset, likelihood, X, n_outputs, noise_var=None) -> None:
        self.C = ggn(network, subset, likelihood, X, n_outputs, noise_var=noise_var)
        self._eig = None
        self.fitted.fill_(True)

    def _load_from_state_dict(self, *args, **kwargs):
        self._eig = None
        super()._load_from_state_dict(*args, **kwargs)

    def eigenvalues(self) -> Tensor:
        """Eigenvalues ``(S,)`` of C clamped at 0, computed once per fit on first use."""
        if self._eig is None:
            self._eig = torch.linalg.eigvalsh(self.C).clamp_min(0.0)
        return self._eig

    def precision(
        self, prior: Tensor, scale: Tensor, prior_is_scalar: bool = False, prior_is_tied: bool = True
    ):
        self.check_fitted()
        return FullPrecision(self.C, prior, scale, self.eigenvalues if prior_is_scalar else None)

    def dense(self) -> Tensor:
        return self.C


class DiagonalCurvature(Curvature):
    def __init__(self, n_weights: int):
        super().__init__()
        self.register_buffer("c", torch.zeros(n_weights))

    def compute(self, network, subset, likelihood, X, n_outputs, noise_var=None) -> None:
        self.c = ggn(network, subset, likelihood, X, n_outputs, diagonal=True, noise_var=noise_var)
        self.fitted.fill_(True)

    def precision(
        self, prior: Tensor, scale: Tensor, prior_is_scalar: bool = False, prior_is_tied: bool = True
    ):
        self.check_fitted()
        return DiagonalPrecision(self.c, prior, scale)

    def dense(self) -> Tensor:
        return torch.diag(self.c)


class KronCurvature(Curvature):
    """K-FAC factors per Linear or Conv layer; the rest's GGN diagonal or, with ``full_rest``, its
    full block eigendecomposed (``rest_Q``, ``rest_l``)."""

    def __init__(self, network: nn.Module, subset: ResolvedSubset, full_rest: bool = False):
        super().__init__()
        plan, rest_index = kfac_layer_plan(network, subset)
        self.full_rest = bool(full_rest) and rest_index.numel() > 0
        self.layer_names = [name for name, _ in plan]
        self.n_weights = subset.n_weights
        modules = dict(network.named_modules())
        for i, (name, index) in enumerate(plan):
            out_f, in_f = modules[name].weight.shape[0], modules[name].weight[0].numel()
            in_f += modules[name].bias is not None
            self.register_buffer(f"index_{i}", index)
            self.register_buffer(f"QG_{i}", torch.zeros(out_f, out_f))
            self.register_buffer(f"lG_{i}", torch.zeros(out_f))
            self.register_buffer(f"QA_{i}", torch.zeros(in_f, in_f))
            self.register_buffer(f"lA_{i}", torch.zeros(in_f))
        self.register_buffer("rest_index", rest_index)
        R = rest_index.numel()
        self.register_buffer("rest_c", torch.zeros(0 if self.full_rest else R))
        self.register_buffer("rest_Q", torch.zeros((R, R) if self.full_rest else (0, 0)))
        self.register_buffer("rest_l", torch.zeros(R if self.full_rest else 0))
        self._rest_subset = None
        if rest_index.numel():
            self._rest_subset = subset.restrict(rest_index)

    def _blocks(self):
        return [
            tuple(getattr(self, f"{k}_{i}") for k in ("index", "QG", "lG", "QA", "lA"))
            for i in range(len(self.layer_names))
        ]

    def compute(self, network, subset, likelihood, X, n_outputs, noise_var=None) -> None:
        factors = kfac_factors(network, self.layer_names, likelihood, X, n_outputs, noise_var)
        for i, (A, G) in enumerate(factors):
            lA, QA = clamped_eigh(A, f"K-FAC factor A of layer {self.layer_names[i]!r}")
            lG, QG = clamped_eigh(G, f"K-FAC factor G of layer {self.layer_names[i]!r}")
            for k, v in (("QG", QG), ("lG", lG), ("QA", QA), ("lA", lA)):
                setattr(self, f"{k}_{i}", v)
        if self.full_rest:
            C = ggn(network, self._rest_subset, likelihood, X, n_outputs, noise_var=noise_var)
            self.rest_l, self.rest_Q = clamped_eigh(C, "the rest's GGN block")
        elif self._rest_subset is not None:
            self.rest_c = ggn(
                network, self._rest_subset, likelihood, X, n_outputs, diagonal=True, noise_var=noise_var
            )
        else:
            self.rest_c = self.rest_c.to(X)
        self.fitted.fill_(True)

    def precision(
        self, prior: Tensor, scale: Tensor, prior_is_scalar: bool = False, prior_is_tied: bool = True
    ):
        self.check_fitted()
        if self.full_rest:
            empty = self.rest_index[:0]
            block = (self.rest_index, self.rest_Q, self.rest_l)
            rest = (empty, self.rest_c)
        else:
            rest, block = (self.rest_index, self.rest_c), None
        return KronPrecision(self._blocks(), rest, prior, scale, self.n_weights, block, prior_is_scalar)

    def dense(self) -> Tensor:
        """The K-FAC data curvature ``G ⊗ A`` per block plus the rest (diagonal or full), dense."""
        S = self.n_weights
        C = torch.zeros(S, S, dtype=self.rest_c.dtype, device=self.rest_c.device)
        if self.full_rest:
            r = self.rest_index
            C[r.unsqueeze(-1), r] = (self.rest_Q * self.rest_l) @ self.rest_Q.T
        else:
            C[self.rest_index, self.rest_index] = self.rest_c
        for index, QG, lG, QA, lA in self._blocks():
            Q = torch.kron(QG, QA)
            C[index.unsqueeze(-1), index] = (Q * torch.outer(lG, lA).reshape(-1)) @ Q.T
        return C


# ----------------------------------------------------------------------------------------
# User-facing options.


class Structure:
    """Base class of structure options; :meth:`build` makes an empty curvature module."""

    def build(self, network: nn.Module, subset: ResolvedSubset) -> Curvature:  # pragma: no cover
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class Full(Structure):
    """Dense ``S x S`` posterior precision (exact GGN). Memory ``O(S²)``, factorisation ``O(S³)``."""

    def build(self, network: nn.Module, subset: ResolvedSubset) -> Curvature:
        return FullCurvature(subset.n_weights)


class Diagonal(Structure):
    """Diagonal of the exact GGN plus the prior. Memory ``O(S)``."""

    def build(self, network: nn.Module, subset: ResolvedSubset) -> Curvature:
        return DiagonalCurvature(subset.n_weights)


KRON_RESTS = ("diagonal", "full", "auto")


class Kron(Structure):
    """K-FAC: per Linear or Conv (1d, 2d) layer ``G ⊗ A``, eigendecomposed (see the module docstring).

    Args:
        rest: How the selected weights outside Linear and Conv layers (e.g. RBF centres) are
            treated: ``"diagonal"`` (default; their GGN diagonal), ``"full"`` (their full
            ``R x R`` GGN block, eigendecomposed on every fit: memory ``O(R²)``, time
            ``O(N R² + R³)``; it keeps the correlations between them, which the diagonal
            drops) or ``"auto"`` (full when ``R <= max_full_rest``, else diagonal).
        max_full_rest: The largest rest ``R`` taken as a full block. ``rest="full"`` with
            a larger rest raises a :class:`~labo.exceptions.StructureError`.
    """

    def __init__(self, rest: str = "diagonal", max_full_rest: int = 8192):
        if rest not in KRON_RESTS:
            raise StructureError(f"Kron(rest=...) must be one of {KRON_RESTS}, got {rest!r}.")
        if isinstance(max_full_rest, bool) or not isinstance(max_full_rest, int) or max_full_rest < 1:
            raise StructureError(f"Kron(max_full_rest=...) must be a positive int, got {max_full_rest!r}.")
        self.rest, self.max_full_rest = rest, max_full_rest

    def build(self, network: nn.Module, subset: ResolvedSubset) -> Curvature:
        full = self.rest != "diagonal"
        if full:
            R = kfac_layer_plan(network, subset)[1].numel()
            if R > self.max_full_rest:
                if self.rest == "full":
                    raise StructureError(
                        f"Kron(rest='full'): the rest has {R} weights, more than max_full_rest="
                        f"{self.max_full_rest} (its block would hold {R}² numbers); use rest='auto' "
                        "or 'diagonal', or raise max_full_rest."
                    )
                full = False
        return KronCurvature(network, subset, full_rest=full)

    def __repr__(self) -> str:
        if self.rest == "diagonal" and self.max_full_rest == 8192:
            return "Kron()"
        return f"Kron(rest={self.rest!r}, max_full_rest={self.max_full_rest})"
