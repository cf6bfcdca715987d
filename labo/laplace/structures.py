"""Posterior structures: the options ``Full()``, ``Diagonal()``, ``Kron()`` and their curvature modules.

A structure option builds a *curvature* module that stores the data-term GGN in
its own form (dense matrix, diagonal, eigendecomposed Kronecker factors; buffers,
so ``state_dict`` works). Given hyperparameters, the curvature yields a posterior
precision (:mod:`labo.laplace.precisions`, where the operations and the exact
Kron prior rule are documented).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from labo.exceptions import NotFittedError
from labo.laplace.curvature import ggn, kfac_factors, kfac_layer_plan
from labo.laplace.precisions import (
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
    def __init__(self, network: nn.Module, subset: ResolvedSubset):
        super().__init__()
        plan, rest_index = kfac_layer_plan(network, subset)
        self.layer_names = [name for name, _ in plan]
        self.n_weights = subset.n_weights
        modules = dict(network.named_modules())
        for i, (name, index) in enumerate(plan):
            out_f, in_f = modules[name].weight.shape
            in_f += modules[name].bias is not None
            self.register_buffer(f"index_{i}", index)
            self.register_buffer(f"QG_{i}", torch.zeros(out_f, out_f))
            self.register_buffer(f"lG_{i}", torch.zeros(out_f))
            self.register_buffer(f"QA_{i}", torch.zeros(in_f, in_f))
            self.register_buffer(f"lA_{i}", torch.zeros(in_f))
        self.register_buffer("rest_index", rest_index)
        self.register_buffer("rest_c", torch.zeros(rest_index.numel()))
        self._rest_subset = None
        if rest_index.numel():
            self._rest_subset = _restrict(subset, rest_index)

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
        if self._rest_subset is not None:
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
        return KronPrecision(self._blocks(), (self.rest_index, self.rest_c), prior, scale, self.n_weights)

    def dense(self) -> Tensor:
        """The K-FAC data curvature ``G ⊗ A`` per block (plus the diagonal rest), dense."""
        S = self.n_weights
        C = torch.zeros(S, S, dtype=self.rest_c.dtype, device=self.rest_c.device)
        C[self.rest_index, self.rest_index] = self.rest_c
        for index, QG, lG, QA, lA in self._blocks():
            Q = torch.kron(QG, QA)
            C[index.unsqueeze(-1), index] = (Q * torch.outer(lG, lA).reshape(-1)) @ Q.T
        return C


def _restrict(subset: ResolvedSubset, positions: Tensor) -> ResolvedSubset:
    """The sub-subset of whole selected tensors covering the given flat positions."""
    from labo.laplace.subsets import SelectedParameter

    keep, offset = [], 0
    pos = set(positions.tolist())
    for s in subset.selected:
        if s.offset in pos:
            keep.append(SelectedParameter(s.name, s.shape, s.index, offset, s.size))
            offset += s.size
    restricted = ResolvedSubset.__new__(ResolvedSubset)
    restricted.selected = keep
    restricted.n_weights = offset
    restricted._names = {s.name for s in keep}
    restricted._param_names = subset._param_names
    return restricted


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


class Kron(Structure):
    """K-FAC: per Linear layer ``G ⊗ A``, eigendecomposed (see the module docstring)."""

    def build(self, network: nn.Module, subset: ResolvedSubset) -> Curvature:
        return KronCurvature(network, subset)
