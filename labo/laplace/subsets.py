"""Which weights are Bayesian: all of them, the last layer, or a per-weight mask.

A subset *resolves* against a network into a :class:`ResolvedSubset`: an ordered
list of selected parameter tensors, each with the flat indices of its selected
entries (``None`` for the whole tensor). The selected weights form one flat
vector ``theta`` of length ``S``; :meth:`ResolvedSubset.functional` builds
``f(theta, X)`` in which only those ``S`` numbers are free, so Jacobians are
taken with respect to the selected weights only (never the full Jacobian
sliced afterwards).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.func import functional_call

from labo.exceptions import WeightSubsetError


@dataclass(frozen=True)
class SelectedParameter:
    """One parameter tensor taking part in a subset.

    Attributes:
        name: Name in ``network.named_parameters()``.
        shape: Shape of the parameter tensor.
        index: Flat indices (into ``param.flatten()``) of the selected entries,
            sorted; ``None`` when the whole tensor is selected.
        offset: Position of this parameter's first entry in ``theta``.
        size: Number of selected entries.
    """

    name: str
    shape: torch.Size
    index: Tensor | None
    offset: int
    size: int


class ResolvedSubset:
    """A weight subset bound to one network's parameter names and shapes."""

    def __init__(self, network: nn.Module, selected: list[SelectedParameter]):
        if not selected:
            raise WeightSubsetError("The weight subset selects no weights (expected at least one).")
        self.selected = selected
        self.n_weights = sum(s.size for s in selected)
        self._names = {s.name for s in selected}
        self._param_names = [n for n, _ in network.named_parameters()]

    @property
    def n_tensors(self) -> int:
        """Number of parameter tensors with at least one selected entry."""
        return len(self.selected)

    @property
    def sizes(self) -> list[int]:
        """Number of selected entries per selected parameter tensor."""
        return [s.size for s in self.selected]

    def is_whole(self, name: str) -> bool:
        """True when parameter ``name`` is selected in full."""
        return any(s.name == name and s.index is None for s in self.selected)

    def get_theta(self, network: nn.Module) -> Tensor:
        """The current values of the selected weights as one flat vector ``(S,)``."""
        return self.theta_from(dict(network.named_parameters()))

    def theta_from(self, params: Mapping[str, Tensor]) -> Tensor:
        """The selected entries of a ``{name: tensor}`` parameter dict as one flat vector ``(S,)``."""
        parts = []
        for s in self.selected:
            flat = params[s.name].detach().reshape(-1)
            parts.append(flat if s.index is None else flat[s.index])
        return torch.cat(parts)

    def parameters_from_theta(self, network: nn.Module, theta: Tensor) -> dict[str, Tensor]:
        """A full parameter dict in which the selected entries come from ``theta``.

        Unselected parameters (and unselected entries) are the network's current
        values, detached: gradients flow to ``theta`` only.
        """
        params = {n: p.detach() for n, p in network.named_parameters()}
        for s in self.selected:
            vals = theta[s.offset : s.offset + s.size]
            if s.index is None:
                params[s.name] = vals.reshape(s.shape)
            else:
                base = params[s.name].reshape(-1)
                params[s.name] = base.scatter(0, s.index, vals).reshape(s.shape)
        return params

    def full_vector(self, network: nn.Module, theta: Tensor) -> Tensor:
        """All network parameters as one flat vector, selected entries taken from ``theta``.

        ``theta`` may carry leading batch dimensions ``(..., S)``; the result is
        ``(..., P)``. Unselected weights keep their current values.
        """
        batch = theta.shape[:-1]
        pieces = []
        for _, p in network.named_parameters():
            pieces.append(p.detach().reshape(-1).expand(*batch, p.numel()).clone())
        by_name = dict(zip(self._param_names, pieces, strict=True))
        for s in self.selected:
            vals = theta[..., s.offset : s.offset + s.size]
            if s.index is None:
                by_name[s.name] = vals
            else:
                idx = s.index.expand(*batch, s.size)
                by_name[s.name] = by_name[s.name].scatter(-1, idx, vals)
        return torch.cat([by_name[n] for n in self._param_names], dim=-1)

    def functional(self, network: nn.Module) -> Callable[[Tensor, Tensor], Tensor]:
        """``f(theta, X)``: the network output with the selected weights set to ``theta``."""

        def f(theta: Tensor, X: Tensor) -> Tensor:
            return functional_call(network, self.parameters_from_theta(network, theta), (X,))

        return f

    def restrict(self, positions: Tensor) -> ResolvedSubset:
        """The sub-subset of the selected tensors whose first entry is among the flat
        ``positions`` (whole selected tensors), renumbered from 0."""
        keep, offset = [], 0
        pos = set(positions.tolist())
        for s in self.selected:
            if s.offset in pos:
                keep.append(SelectedParameter(s.name, s.shape, s.index, offset, s.size))
                offset += s.size
        # Built without __init__: there is no network at hand, the parameter names carry over.
        restricted = ResolvedSubset.__new__(ResolvedSubset)
        restricted.selected, restricted.n_weights = keep, offset
        restricted._names = {s.name for s in keep}
        restricted._param_names = self._param_names
        return restricted

    def expand_per_tensor(self, values: Tensor) -> Tensor:
        """Repeat one value per selected tensor ``(n_tensors,)`` into one per weight ``(S,)``."""
        counts = torch.tensor(self.sizes, device=values.device)
        return torch.repeat_interleave(values, counts)


class WeightSubset:
    """Base class of weight-subset options; :meth:`resolve` binds one to a network."""

    def resolve(self, network: nn.Module) -> ResolvedSubset:  # pragma: no cover - interface
        raise NotImplementedError


def _whole(network: nn.Module, names: list[str]) -> ResolvedSubset:
    params = dict(network.named_parameters())
    selected, offset = [], 0
    for name in names:
        p = params[name]
        selected.append(SelectedParameter(name, p.shape, None, offset, p.numel()))
        offset += p.numel()
    return ResolvedSubset(network, selected)


class AllWeights(WeightSubset):
    """Every parameter of the network that requires grad."""

    def resolve(self, network: nn.Module) -> ResolvedSubset:
        names = [n for n, p in network.named_parameters() if p.requires_grad]
        if not names:
            raise WeightSubsetError("AllWeights(): the network has no parameter requiring grad.")
        return _whole(network, names)

    def __repr__(self) -> str:
        return "AllWeights()"


class LastLayer(WeightSubset):
    """The weights (and bias) of one ``nn.Linear`` layer.

    Args:
        name: Module name (as in ``network.named_modules()``) of the layer. When
            omitted, the last ``nn.Linear`` in module registration order is used.
    """

    def __init__(self, name: str | None = None):
        self.name = name

    def find(self, network: nn.Module) -> tuple[str, nn.Linear]:
        """The ``(name, module)`` of the selected linear layer."""
        modules = dict(network.named_modules())
        if self.name is not None:
            if self.name not in modules:
                raise WeightSubsetError(
                    f"LastLayer(name={self.name!r}): no module of that name; "
                    f"modules are {sorted(n for n in modules if n)}."
                )
            module = modules[self.name]
            if not isinstance(module, nn.Linear):
                raise WeightSubsetError(
                    f"LastLayer(name={self.name!r}): expected an nn.Linear, got {type(module).__name__}."
                )
            return self.name, module
        linears = [(n, m) for n, m in network.named_modules() if isinstance(m, nn.Linear)]
        if not linears:
            raise WeightSubsetError(
                f"LastLayer(): the network ({type(network).__name__}) has no nn.Linear layer; "
                "pass LastLayer(name=...) naming a Linear module or use AllWeights()/WeightMask."
            )
        return linears[-1]

    def resolve(self, network: nn.Module) -> ResolvedSubset:
        name, module = self.find(network)
        prefix = f"{name}." if name else ""
        names = [prefix + n for n, _ in module.named_parameters()]
        return _whole(network, names)

    def __repr__(self) -> str:
        return f"LastLayer({self.name!r})" if self.name else "LastLayer()"


class WeightMask(WeightSubset):
    """Individual weights chosen by boolean masks.

    Args:
        masks: ``{parameter_name: bool tensor}``; each mask has the shape of its
            parameter. Parameters not named are not selected.
    """

    def __init__(self, masks: dict[str, Tensor]):
        if not isinstance(masks, dict) or not masks:
            raise WeightSubsetError(
                f"WeightMask expects a non-empty dict {{param_name: bool tensor}}, got {masks!r}."
            )
        self.masks = masks

    def resolve(self, network: nn.Module) -> ResolvedSubset:
        params = dict(network.named_parameters())
        unknown = sorted(set(self.masks) - set(params))
        if unknown:
            raise WeightSubsetError(
                f"WeightMask names unknown parameters {unknown}; the network's parameters are {list(params)}."
            )
        selected, offset = [], 0
        for name, p in params.items():  # network order, whatever the dict order
            if name not in self.masks:
                continue
            mask = self.masks[name]
            if not isinstance(mask, Tensor) or mask.dtype != torch.bool:
                raise WeightSubsetError(
                    f"WeightMask[{name!r}] must be a bool tensor, got "
                    f"{getattr(mask, 'dtype', type(mask).__name__)}."
                )
            if mask.shape != p.shape:
                raise WeightSubsetError(
                    f"WeightMask[{name!r}] has shape {tuple(mask.shape)}, expected the "
                    f"parameter's shape {tuple(p.shape)}."
                )
            n_sel = int(mask.sum())
            if n_sel == 0:
                continue
            index = None
            if n_sel < p.numel():
                index = mask.reshape(-1).nonzero().squeeze(-1).to(p.device)
            selected.append(SelectedParameter(name, p.shape, index, offset, n_sel))
            offset += n_sel
        return ResolvedSubset(network, selected)

    def __repr__(self) -> str:
        counts = {n: int(m.sum()) for n, m in self.masks.items()}
        return f"WeightMask({counts})"
