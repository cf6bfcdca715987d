"""Subnetwork selection strategies: functions that choose which weights are Bayesian.

Each strategy looks at a (trained) network, and for some strategies at data, and
returns a :class:`~labo.laplace.subsets.WeightMask`; ``fit_laplace(...,
weights=mask, structure=Full())`` then puts a full covariance over the chosen
weights only (Daxberger et al. 2021, "Bayesian deep learning via subnetwork
inference"). Jacobians and curvature are taken w.r.t. the selected weights
only, so the posterior costs scale with their number S, not with P.

Every strategy has the signature ``strategy(network, X=None, Y=None, *,
**options)``: ``functools.partial(largest_variance, n_weights=1000)`` is a
callable ``(network, X, Y) -> WeightMask``, the form ``LaplaceModel(weights=...)``
accepts. Data-free strategies ignore ``X`` and ``Y``.

Counting. Strategies that rank or draw weights take exactly one of
``n_weights`` (an int in ``[1, P]``) or ``fraction`` (in ``(0, 1]``; ``S =
max(1, round(fraction · P))``), where P counts the parameters that require
grad (frozen parameters are never selected).

Ties. Ranking uses a stable sort: among equal scores the weight that comes
first in ``network.named_parameters()`` order (then row-major within the
tensor) is selected first, so the result is deterministic and has exactly
``n_weights`` entries.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from labo.exceptions import NonFiniteInputError, WeightSubsetError
from labo.laplace.laplace import fit_laplace
from labo.laplace.structures.options import Diagonal
from labo.laplace.subsets import AllWeights, LastLayer, WeightMask

WeightStrategy = Callable[[nn.Module, Tensor, Tensor], WeightMask]
"""A callable ``(network, X, Y) -> WeightMask`` (e.g. a ``functools.partial`` of a strategy)."""


def _trainable(network: nn.Module) -> dict[str, Tensor]:
    params = {n: p for n, p in network.named_parameters() if p.requires_grad}
    if not params:
        raise WeightSubsetError(
            f"The network ({type(network).__name__}) has no parameter requiring grad to select from."
        )
    return params


def resolve_count(n_weights: int | None, fraction: float | None, total: int, who: str) -> int:
    """The number of weights to select from ``n_weights`` / ``fraction`` (exactly one given).

    Raises:
        WeightSubsetError: Neither or both given, or a value out of range.
    """
    if (n_weights is None) == (fraction is None):
        raise WeightSubsetError(
            f"{who}: pass exactly one of n_weights= or fraction=, got n_weights={n_weights!r}, "
            f"fraction={fraction!r}."
        )
    if n_weights is not None:
        if isinstance(n_weights, bool) or not isinstance(n_weights, int) or not 1 <= n_weights <= total:
            raise WeightSubsetError(
                f"{who}: n_weights must be an int in [1, {total}] (the network's trainable "
                f"parameters), got {n_weights!r}."
            )
        return n_weights
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction <= 1:
        raise WeightSubsetError(f"{who}: fraction must be a number in (0, 1], got {fraction!r}.")
    return max(1, round(fraction * total))


def _mask_from_flat(params: dict[str, Tensor], flat: Tensor) -> WeightMask:
    """Split a flat bool vector over ``params`` (in order) into a WeightMask."""
    masks, i = {}, 0
    for name, p in params.items():
        part = flat[i : i + p.numel()]
        i += p.numel()
        if bool(part.any()):
            masks[name] = part.reshape(p.shape).to(p.device)
    return WeightMask(masks)


def top_weights(params: dict[str, Tensor], scores: Tensor, k: int) -> WeightMask:
    """The ``k`` weights with the largest ``scores`` (flat ``(P,)`` in ``params`` order).

    Ties go to the earlier position (stable sort); NaN scores raise.
    """
    if not bool(torch.isfinite(scores).all()):
        bad = int((~torch.isfinite(scores)).sum())
        raise NonFiniteInputError(f"Selection scores contain {bad} NaN/inf values (of {scores.numel()}).")
    order = torch.sort(scores.detach().cpu(), descending=True, stable=True).indices
    flat = torch.zeros(scores.numel(), dtype=torch.bool)
    flat[order[:k]] = True
    return _mask_from_flat(params, flat)


def largest_magnitude(
    network: nn.Module,
    X: Tensor | None = None,
    Y: Tensor | None = None,
    *,
    n_weights: int | None = None,
    fraction: float | None = None,
) -> WeightMask:
    """The weights of largest absolute value ``|θ̂_i|``.

    Args:
        network: The (trained) network.
        X: Unused (strategy signature).
        Y: Unused (strategy signature).
        n_weights: Number of weights S to select.
        fraction: Or the fraction of the trainable weights.

    Returns:
        A WeightMask with exactly S selected weights.
    """
    params = _trainable(network)
    scores = torch.cat([p.detach().reshape(-1).abs() for p in params.values()])
    k = resolve_count(n_weights, fraction, scores.numel(), "largest_magnitude")
    return top_weights(params, scores, k)


def diagonal_variances(
    network: nn.Module,
    X: Tensor,
    Y: Tensor,
    likelihood: str = "regression",
    prior_precision: float | Tensor = 1.0,
    noise_std: float | Tensor = 1.0,
) -> Tensor:
    """Marginal posterior variances ``(P,)`` of every trainable weight under a diagonal Laplace.

    ``1 / (c_i / σ² + λ_i)`` with ``c`` the exact GGN diagonal (``σ = 1`` for
    classification), in ``network.named_parameters()`` order.
    """
    la = fit_laplace(
        network,
        X,
        Y,
        likelihood=likelihood,
        weights=AllWeights(),
        structure=Diagonal(),
        prior_precision=prior_precision,
        noise_std=noise_std,
    )
    with torch.no_grad():
        return 1.0 / la.posterior_precision().h


def largest_variance(
    network: nn.Module,
    X: Tensor | None = None,
    Y: Tensor | None = None,
    *,
    n_weights: int | None = None,
    fraction: float | None = None,
    likelihood: str = "regression",
    prior_precision: float | Tensor = 1.0,
    noise_std: float | Tensor = 1.0,
) -> WeightMask:
    """The weights of largest marginal variance under a diagonal Laplace of all weights.

    The rule of Daxberger et al. (2021): fit ``Diagonal()`` over ``AllWeights()``
    at the network's current (MAP) weights and keep the S largest posterior
    variances. With a scalar prior this is the S smallest GGN diagonal entries.

    Args:
        network: The trained network, mapping ``n x d`` to ``n x K``.
        X: Training inputs ``n x d`` (required).
        Y: Targets ``n x K`` (regression) or labels ``(n,)`` (classification) (required).
        n_weights: Number of weights S to select.
        fraction: Or the fraction of the trainable weights.
        likelihood: ``"regression"`` or ``"classification"``.
        prior_precision: Prior precision of the diagonal Laplace (scalar, per tensor or per weight).
        noise_std: Noise standard deviation of the diagonal Laplace (regression).

    Returns:
        A WeightMask with exactly S selected weights.
    """
    if X is None or Y is None:
        raise WeightSubsetError(
            "largest_variance needs the training data: pass X (n x d) and Y, got "
            f"X={'None' if X is None else tuple(X.shape)}, Y={'None' if Y is None else tuple(Y.shape)}."
        )
    params = _trainable(network)
    k = resolve_count(n_weights, fraction, sum(p.numel() for p in params.values()), "largest_variance")
    scores = diagonal_variances(network, X, Y, likelihood, prior_precision, noise_std)
    return top_weights(params, scores, k)


def random_weights(
    network: nn.Module,
    X: Tensor | None = None,
    Y: Tensor | None = None,
    *,
    n_weights: int | None = None,
    fraction: float | None = None,
    generator: torch.Generator | None = None,
) -> WeightMask:
    """S weights drawn uniformly without replacement (a CPU ``generator`` makes it reproducible)."""
    params = _trainable(network)
    total = sum(p.numel() for p in params.values())
    k = resolve_count(n_weights, fraction, total, "random_weights")
    flat = torch.zeros(total, dtype=torch.bool)
    flat[torch.randperm(total, generator=generator)[:k]] = True
    return _mask_from_flat(params, flat)


def by_module(
    network: nn.Module,
    X: Tensor | None = None,
    Y: Tensor | None = None,
    *,
    names: list[str] | tuple[str, ...],
) -> WeightMask:
    """Every trainable weight of the named modules (recursively) or named parameters.

    Args:
        network: The network.
        X: Unused (strategy signature).
        Y: Unused (strategy signature).
        names: Module names (``network.named_modules()``, e.g. ``"0"`` or ``"head"``) or
            parameter names (``network.named_parameters()``, e.g. ``"0.bias"``).
    """
    if isinstance(names, str) or not isinstance(names, (list, tuple)) or not names:
        raise WeightSubsetError(f"by_module: names must be a non-empty list of names, got {names!r}.")
    params = _trainable(network)
    modules = dict(network.named_modules())
    chosen: set[str] = set()
    for name in names:
        if name in params:
            chosen.add(name)
        elif name in modules:
            prefix = f"{name}." if name else ""
            chosen.update(prefix + n for n, p in modules[name].named_parameters() if p.requires_grad)
        else:
            raise WeightSubsetError(
                f"by_module: {name!r} is neither a module nor a trainable parameter of the network; "
                f"modules are {sorted(n for n in modules if n)}, parameters are {list(params)}."
            )
    if not chosen:
        raise WeightSubsetError(f"by_module: the modules {list(names)} hold no trainable parameter.")
    return WeightMask({n: torch.ones_like(p, dtype=torch.bool) for n, p in params.items() if n in chosen})


def last_layer(
    network: nn.Module, X: Tensor | None = None, Y: Tensor | None = None, *, name: str | None = None
) -> WeightMask:
    """Weight and bias of the last ``nn.Linear`` (or of the Linear module ``name``), as a mask."""
    layer, _ = LastLayer(name).find(network)
    return by_module(network, names=[layer])


def union(*masks: WeightMask) -> WeightMask:
    """The weights selected by any of ``masks`` (element-wise OR per parameter).

    Raises:
        WeightSubsetError: No masks, a non-WeightMask argument, or two masks of
            different shapes for the same parameter.
    """
    if not masks:
        raise WeightSubsetError("union: expected at least one WeightMask, got none.")
    out: dict[str, Tensor] = {}
    for i, m in enumerate(masks):
        if not isinstance(m, WeightMask):
            raise WeightSubsetError(f"union: argument {i} must be a WeightMask, got {type(m).__name__}.")
        for name, mask in m.masks.items():
            if name in out:
                if out[name].shape != mask.shape:
                    raise WeightSubsetError(
                        f"union: masks for {name!r} have shapes {tuple(out[name].shape)} and "
                        f"{tuple(mask.shape)} (argument {i}); expected equal shapes."
                    )
                out[name] = out[name] | mask.to(out[name].device)
            else:
                out[name] = mask.clone()
    return WeightMask(out)


def placeholder_mask(network: nn.Module) -> WeightMask:
    """One weight (the first trainable entry): stands in for a strategy's mask before training."""
    name, p = next(iter(_trainable(network).items()))
    mask = torch.zeros_like(p, dtype=torch.bool)
    mask.view(-1)[0] = True
    return WeightMask({name: mask})


def union_of(*strategies: WeightStrategy) -> WeightStrategy:
    """A strategy selecting the union of what ``strategies`` select on the same network and data."""
    if not strategies or not all(callable(s) for s in strategies):
        raise WeightSubsetError(f"union_of: expected one or more callables, got {strategies!r}.")

    def combined(network: nn.Module, X: Tensor | None = None, Y: Tensor | None = None) -> WeightMask:
        return union(*(s(network, X, Y) for s in strategies))

    return combined


__all__ = [
    "WeightStrategy",
    "by_module",
    "diagonal_variances",
    "largest_magnitude",
    "largest_variance",
    "last_layer",
    "placeholder_mask",
    "random_weights",
    "resolve_count",
    "top_weights",
    "union",
    "union_of",
]
