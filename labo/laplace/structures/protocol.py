"""The posterior-precision contract: what every ``H = scale · C + Λ₀`` operator offers.

A curvature module's ``precision(prior, scale)`` returns one of five classes:
``FullPrecision``, ``DiagonalPrecision`` and ``KronPrecision``
(:mod:`labo.laplace.structures.precisions`), ``FunctionalPrecision``
(:mod:`labo.laplace.structures.functional`, and its subclass ``ExtendedFunctionalPrecision``
after function-space conditioning) and
``WoodburyPrecision`` (:mod:`labo.laplace.predictive.conditioning`, any of the others after
weight-space conditioning). The predictives, the marginal likelihood and conditioning
use them through :class:`Precision` only.

Two abilities are optional and are dispatched on with ``isinstance``:

* :class:`LayerBindingPrecision` (``bind_layers``): Full, Diagonal. The precision needs
  the map from each Linear layer's ``[W, b]`` to positions in the weight vector before
  its Jacobian-free path can work; Kron and Functional carry that layout already.
* :class:`LayerTermsPrecision` (``layer_terms``): Diagonal, Kron. The covariance is a sum
  of per-layer terms ``(Pa, Pb, w)`` that ``labo.surrogates`` keeps unevaluated
  (:func:`labo.laplace.linearization.layer_quads.layer_quad`). Full, Functional and Woodbury couple
  the layers, so they have no such terms.

They are ``typing.Protocol`` classes (structural, ``@runtime_checkable``): the
precisions do not inherit from them, and ``isinstance`` checks that the members
exist, not their signatures; ``tests/laplace/test_precision_protocol.py`` checks
each class against them.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import torch
from torch import Tensor

if TYPE_CHECKING:
    from labo.laplace.linearization.linear_factors import LayerFactors


@runtime_checkable
class Precision(Protocol):
    """A posterior precision ``H`` (``S x S``, ``S`` selected weights) and its inverse.

    Every operation is differentiable w.r.t. the prior precision, the likelihood scale
    and its tensor arguments. Two of the six operations of the issue's list go by
    other names: the dense matrices are ``precision()`` (``H``) and ``covariance()``
    (``H⁻¹``), since a curvature module's ``dense()`` already means ``C``.

    ``WoodburyPrecision`` may be batched over its conditioning inputs (``*bc``); its
    ``quad``/``quad_diag``/``logdet`` then carry that batch, while ``solve``,
    ``sample``, ``precision`` and ``covariance`` need unbatched conditioning (the
    callers build it unbatched for those).

    Attributes:
        supports_factors: Whether :meth:`quad_factors` and :meth:`quad_diag_factors`
            apply (the Bayesian weights are whole Linear layers and, for Full and
            Diagonal, the layers were bound with ``bind_layers``). Callers check it
            before taking the Jacobian-free path.
    """

    supports_factors: bool

    def logdet(self) -> Tensor:
        """``log det H``: a scalar (``(*bc,)`` for batched Woodbury)."""
        ...

    def solve(self, V: Tensor) -> Tensor:
        """``H⁻¹ V`` for ``V`` of shape ``S x m``: ``S x m``."""
        ...

    def quad(self, J: Tensor) -> Tensor:
        """``J H⁻¹ Jᵀ`` for Jacobian rows ``J`` of shape ``... x N x S``: ``... x N x N``."""
        ...

    def quad_diag(self, J: Tensor) -> Tensor:
        """The diagonal of :meth:`quad`, ``... x N``, without forming ``N x N``."""
        ...

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """``n`` draws ``δ ~ N(0, H⁻¹)``: ``n x S``."""
        ...

    def precision(self) -> Tensor:
        """``H`` as a dense ``S x S`` matrix (tests and small ``S``)."""
        ...

    def covariance(self) -> Tensor:
        """``H⁻¹`` as a dense ``S x S`` matrix (tests and small ``S``)."""
        ...

    def quad_factors(self, factors: list[LayerFactors]) -> Tensor:
        """``J H⁻¹ Jᵀ`` ``... x n·K x n·K`` from per-layer factors of the rows, no Jacobian.

        Only when :attr:`supports_factors` is true.
        """
        ...

    def quad_diag_factors(self, factors: list[LayerFactors]) -> Tensor:
        """The diagonal ``... x n·K`` of :meth:`quad_factors`."""
        ...


@runtime_checkable
class LayerBindingPrecision(Protocol):
    """A precision that needs the weight layout of the Linear layers for its factor path."""

    def bind_layers(self, layer_index: list[Tensor]) -> Precision:
        """Store ``layer_index[l]`` (``out · (in + bias)``,): layer ``l``'s row-major ``[W, b]``
        as positions in the weight vector; sets ``supports_factors`` when the layers cover
        every selected weight. Returns the precision itself."""
        ...


@runtime_checkable
class LayerTermsPrecision(Protocol):
    """A precision whose ``J H⁻¹ Jᵀ`` is a sum over layers of closed-form terms."""

    def layer_terms(self, factors: list[LayerFactors]) -> Iterable[tuple[Tensor, Tensor, Tensor]]:
        """Per layer ``(Pa, Pb, w)``: rotated inputs ``... x n x in``, rotated output
        factors ``... x n x K x out`` (or a shared-rows marker), covariance weights
        ``out x in``; see :func:`labo.laplace.linearization.layer_quads.layer_quad`."""
        ...


__all__ = ["LayerBindingPrecision", "LayerTermsPrecision", "Precision"]
