"""Pieces of ``LaplaceModel`` kept apart from its class: training-data checks
(including BoTorch's unit-cube warning), input and output-index checks, the built-in
networks with their default weights and structure, and the prior's centre.

Plain functions of explicit arguments; ``LaplaceModel`` (``labo.surrogates.model``)
calls them.
"""

from __future__ import annotations

import warnings

import torch
from botorch import settings
from botorch.exceptions.warnings import InputDataWarning
from torch import Tensor, nn

from labo.exceptions import (
    InputDtypeError,
    InputShapeError,
    NonFiniteInputError,
    WeightSubsetError,
)
from labo.laplace import AllWeights, Full, Kron, LaplaceApproximation, LastLayer, WeightMask
from labo.laplace.structures.functional import Functional, prefer_functional
from labo.laplace.structures.options import Structure
from labo.laplace.subnetworks import WeightStrategy, by_module, placeholder_mask
from labo.laplace.subsets import WeightSubset
from labo.laplace.validation import check_inputs
from labo.surrogates.networks import (
    RBF_BAYESIAN_LAYERS,
    default_network,
    is_rff_network,
    rbf_network,
    rff_network,
)

# Stands for "the caller did not say which input transform the model has": no scaling check.
_TRANSFORM_UNKNOWN = object()

# Where the weight prior can be centred (LaplaceModel's ``prior_mean`` argument).
PRIOR_MEANS = ("zero", "init")
# The built-in networks (LaplaceModel's ``network`` argument as a string).
NETWORKS = ("mlp", "rbf", "rff")

# Slack around [0, 1] before warning, as BoTorch's check_min_max_scaling allows.
UNIT_CUBE_ATOL = 1e-2


def check_training_data(
    train_X: Tensor,
    train_Y: Tensor,
    train_Yvar: Tensor | None,
    input_transform: nn.Module | None = _TRANSFORM_UNKNOWN,
) -> None:
    """Raise a typed error for bad training data; warn when the inputs are badly scaled.

    Args:
        train_X: ``n x d`` training inputs.
        train_Y: ``n x m`` training targets, of ``train_X``'s dtype.
        train_Yvar: ``None`` or ``n x m`` non-negative observation-noise variances.
        input_transform: The model's input transform. ``None`` (no transform) checks that
            ``train_X`` lies in the unit cube (see :func:`check_input_scaling`); a transform
            is trusted to scale the inputs; left out, the scaling is not checked.

    Raises:
        InputShapeError, InputDtypeError, NonFiniteInputError, EmptyDataError: Bad data,
            with a message naming the argument and what was received.
    """
    check_inputs(train_X, train_X.dtype if isinstance(train_X, Tensor) else torch.float64, "train_X")
    if train_X.dim() != 2:
        raise InputShapeError(
            f"Expected train_X of shape n x d, got {tuple(train_X.shape)} (batched models are not supported)."
        )
    if not isinstance(train_Y, Tensor):
        raise InputDtypeError(f"train_Y must be a torch.Tensor, got {type(train_Y).__name__}.")
    if train_Y.dim() != 2 or train_Y.shape[0] != train_X.shape[0]:
        raise InputShapeError(
            f"Expected train_Y of shape n x m with n = {train_X.shape[0]} (train_X has shape "
            f"{tuple(train_X.shape)}), got {tuple(train_Y.shape)}."
        )
    if train_Y.dtype != train_X.dtype:
        raise InputDtypeError(f"train_Y has dtype {train_Y.dtype} but train_X has {train_X.dtype}.")
    if not torch.isfinite(train_Y).all():
        raise NonFiniteInputError(f"train_Y contains {int((~torch.isfinite(train_Y)).sum())} NaN/inf values.")
    if train_Yvar is not None:
        if not isinstance(train_Yvar, Tensor) or train_Yvar.shape != train_Y.shape:
            raise InputShapeError(
                f"Expected train_Yvar with the shape of train_Y {tuple(train_Y.shape)}, "
                f"got {tuple(getattr(train_Yvar, 'shape', ()))}."
            )
        if not torch.isfinite(train_Yvar).all() or (train_Yvar < 0).any():
            raise NonFiniteInputError(
                f"train_Yvar must be finite and non-negative; min {float(train_Yvar.min()):.3g}."
            )
    if input_transform is None:
        check_input_scaling(train_X)


def check_input_scaling(train_X: Tensor, stacklevel: int = 4) -> None:
    """Warn, as BoTorch's models do, when inputs given without a transform leave the unit cube.

    LaplaceModel's default networks and priors assume inputs of order one: on inputs in,
    say, ``[100, 1000]`` the tanh units saturate and the fit can be worse than predicting
    the mean. Silenced, like BoTorch's
    own check, by ``with botorch.settings.validate_input_scaling(False):``.

    Args:
        train_X: ``n x d`` training inputs, as the network will see them.
        stacklevel: Passed to :func:`warnings.warn` (the default points at the line that
            built the model through ``LaplaceModel.__init__`` and :func:`check_training_data`).

    Warns:
        InputDataWarning: When some entry lies more than ``UNIT_CUBE_ATOL`` outside ``[0, 1]``;
            the message names the dimensions, their ranges and ``input_transform=Normalize(d)``.
    """
    if settings.validate_input_scaling.off():
        return
    with torch.no_grad():
        lo, hi = train_X.min(dim=0).values, train_X.max(dim=0).values
        off = ((lo < -UNIT_CUBE_ATOL) | (hi > 1 + UNIT_CUBE_ATOL)).nonzero().flatten().tolist()
    if not off:
        return
    d = train_X.shape[-1]
    shown = ", ".join(f"x{i} in [{float(lo[i]):.3g}, {float(hi[i]):.3g}]" for i in off[:3])
    more = f" and {len(off) - 3} more" if len(off) > 3 else ""
    warnings.warn(
        f"train_X is not contained in the unit cube ({shown}{more}) and the model has no input "
        f"transform; LaplaceModel's network expects inputs in [0, 1]^d and can fit worse than "
        f"the mean otherwise. Pass input_transform=Normalize(d={d}) (botorch.models.transforms) "
        f"or scale train_X to [0, 1].",
        InputDataWarning,
        stacklevel=stacklevel,
    )


def check_X(X: Tensor, d: int, dtype: torch.dtype, name: str = "X") -> None:
    """Raise a typed error unless ``X`` is a finite ``batch_shape x q x d`` tensor of ``dtype``."""
    if not isinstance(X, Tensor):
        raise InputDtypeError(f"{name} must be a torch.Tensor, got {type(X).__name__}.")
    if X.dim() < 2 or X.shape[-1] != d:
        raise InputShapeError(f"Expected {name} with shape batch_shape x q x {d}, got {tuple(X.shape)}.")
    if X.dtype != dtype:
        raise InputDtypeError(f"{name} has dtype {X.dtype} but the model was built with {dtype}.")
    if not torch.isfinite(X).all():
        raise NonFiniteInputError(f"{name} contains NaN/inf values (shape {tuple(X.shape)}).")


def subset_index(output_indices: list[int] | None, n: int) -> list[int]:
    """``output_indices`` of a model over ``n`` outputs, checked and made non-negative."""
    if output_indices is None:
        return list(range(n))
    bad = [i for i in output_indices if not isinstance(i, int) or not -n <= i < n]
    if bad or not output_indices:
        raise InputShapeError(f"output_indices must be ints in [0, {n}), got {output_indices!r}.")
    return [i % n for i in output_indices]


def output_index(output_indices, m: int, device: torch.device) -> Tensor:
    """A non-empty list of output indices among ``m`` as a tensor of non-negative indices."""
    idx = list(output_indices)
    bad = [i for i in idx if not isinstance(i, int) or not -m <= i < m]
    if bad or not idx:
        raise InputShapeError(
            f"output_indices must be a non-empty list of ints in [0, {m}), got {output_indices!r}."
        )
    return torch.tensor([i % m for i in idx], device=device)


def build_network(
    network: nn.Module | str,
    weights: WeightSubset | WeightStrategy | None,
    train_X: Tensor,
    X_tf: Tensor,
    m: int,
) -> tuple[nn.Module, WeightSubset | WeightStrategy, bool]:
    """The network and its default Bayesian weights (``LaplaceModel``'s ``network`` argument).

    The built-in networks: ``"rff"`` (the default, :func:`labo.surrogates.networks.rff_network`:
    1024 random Fourier features with one learnable lengthscale per input, then a linear
    layer; its default ``weights`` are that last layer, and its lengthscales, prior
    precision and noise are tuned on the exact evidence, see
    ``labo.surrogates.feature_evidence``; the posterior is then the exact GP of the kernel
    the features approximate, ``labo.surrogates.kernel_posterior``: a GP's bounded
    variance away from the data),
    ``"mlp"`` (:func:`labo.surrogates.networks.default_network`, MLP d-64-64-m, tanh, every
    weight Bayesian; the default before the surrogate screen of docs/benchmarks.md) or
    ``"rbf"`` (:func:`labo.surrogates.networks.rbf_network`: 64 Gaussian RBF features around
    centres drawn from the inputs, then 64-64-m tanh; its default ``weights`` are the two
    linear layers).

    Args:
        network: An ``nn.Module`` or the name of a built-in network (``"rff"``, ``"mlp"``, ``"rbf"``).
        weights: The ``weights`` argument of ``LaplaceModel`` (``None``: the network's default).
        train_X: ``n x d`` raw training inputs (their dtype and device).
        X_tf: ``n x d`` transformed training inputs (the RBF centres are drawn from them).
        m: Number of outputs.

    Returns:
        ``(network, weights, evidence_fit)``: ``evidence_fit`` is True for a random-Fourier-feature
        network with its default weights (its last layer), fitted on its exact evidence.
    """
    if isinstance(network, str) and network not in NETWORKS:
        raise ValueError(f"network must be an nn.Module or one of {NETWORKS}, got {network!r}.")
    if network == "rff":
        network = rff_network(train_X.shape[-1], m, dtype=train_X.dtype, device=train_X.device)
    evidence_fit = is_rff_network(network) and weights is None
    if evidence_fit:
        weights = LastLayer()  # its default structure, Functional or Kron, is exact here
    if network == "rbf":
        network = rbf_network(X_tf, m)
        if weights is None:
            weights = by_module(network, names=list(RBF_BAYESIAN_LAYERS))
    elif network == "mlp":
        network = default_network(X_tf.shape[-1], m, dtype=train_X.dtype, device=train_X.device)
    return network, AllWeights() if weights is None else weights, evidence_fit


def posterior_options(
    network: nn.Module,
    weights: WeightSubset | WeightStrategy,
    structure: Structure | None,
    n_rows: int,
    functional_max_rows: int,
) -> tuple[WeightSubset, Structure, WeightStrategy | None, Structure]:
    """The weights and structure of a new model's posterior (``LaplaceModel``'s defaults).

    The default structure is ``Functional()`` (exact GGN, function space) while ``n·m``
    is below the number of Bayesian weights and at most ``functional_max_rows``, else
    ``Kron(rest="auto")`` (``labo.laplace.structures.functional.prefer_functional``). Past a few
    hundred points the function-space cross covariances (``O(n²)`` per candidate batch)
    make acquisition optimisation slower than Kron's ``O(S)`` per candidate row.
    ``rest="auto"`` keeps the Bayesian weights outside Linear layers (e.g. the RBF centres
    with ``weights=AllWeights()``) as one full GGN block up to 8192 of them; the default
    networks' default weights have none.

    Args:
        network: The model's network.
        weights: A weight subset, or a strategy picking one after MAP training.
        structure: The ``structure`` argument (``None``: the default).
        n_rows: ``n·m``, the number of training values.
        functional_max_rows: The most rows for which the default is ``Functional()``.

    Returns:
        ``(weights, structure, strategy, strategy_structure)``: with a strategy, one weight
        (``placeholder_mask``) and ``Full()`` stand in until the strategy picks the subset,
        whose posterior then gets ``strategy_structure``.
    """
    strategy = None if isinstance(weights, WeightSubset) else weights
    strategy_structure = structure or Full()
    if strategy is not None:
        if not callable(weights):
            raise WeightSubsetError(
                f"weights must be a WeightSubset or a strategy callable, got {weights!r}."
            )
        weights, structure = placeholder_mask(network), Full()
    if structure is None:
        n_weights = weights.resolve(network).n_weights
        functional = prefer_functional(n_rows, 1, n_weights, max_rows=functional_max_rows)
        structure = Functional() if functional else Kron(rest="auto")
    return weights, structure, strategy, strategy_structure


def strategy_posterior(
    strategy: WeightStrategy, la: LaplaceApproximation, X: Tensor, Z: Tensor, structure: Structure
) -> LaplaceApproximation:
    """A new (unfitted) posterior over the weights a strategy picks for ``la``'s trained network.

    The noise and a scalar prior precision carry over; a per-tensor or per-weight prior
    precision is replaced by its mean (the mask changes).

    Args:
        strategy: ``(network, X, Z) -> WeightMask``.
        la: The current posterior (its network is the trained one).
        X: ``n x d`` transformed training inputs.
        Z: ``n x m`` standardised training targets.
        structure: The new posterior's structure.
    """
    mask = strategy(la.network, X, Z)
    if not isinstance(mask, WeightMask):
        raise WeightSubsetError(
            f"The weight strategy {strategy!r} must return a WeightMask, got {type(mask).__name__}."
        )
    prior, noise = la.prior_precision.detach().mean(), la.noise_std.detach()
    return LaplaceApproximation(la.network, "regression", mask, structure, prior, noise)


def standardisation(Y: Tensor) -> tuple[Tensor, Tensor]:
    """``(mean, scale)`` of ``n x m`` targets, ``(m,)`` each, for ``z = (y − mean) / scale``.

    The network, its prior precision and the noise level then work on O(1) numbers
    whatever the scale of Y, with or without an outcome transform. A scale of one
    stands in for a single row or a (numerically) constant column.
    """
    mean = Y.mean(0)
    scale = Y.std(0) if Y.shape[0] > 1 else torch.ones_like(mean)
    return mean, torch.where(scale > 1e-8 * (1 + mean.abs()), scale, torch.ones_like(scale))


def flat_anchor(network: nn.Module, prior_mean: str) -> Tensor:
    """The prior's centre ``θ₀`` over all network parameters, flat: zeros, or the current
    weights for ``prior_mean="init"``."""
    if prior_mean not in PRIOR_MEANS:
        raise ValueError(f"prior_mean must be one of {PRIOR_MEANS}, got {prior_mean!r}.")
    with torch.no_grad():
        flat = torch.cat([p.reshape(-1) for p in network.parameters()])
        return flat.clone() if prior_mean == "init" else torch.zeros_like(flat)


def split_anchor(network: nn.Module, anchor: Tensor) -> dict[str, Tensor]:
    """A flat centre (:func:`flat_anchor`) as ``{parameter name: tensor}``."""
    out, start = {}, 0
    for name, p in network.named_parameters():
        out[name] = anchor[start : start + p.numel()].view_as(p)
        start += p.numel()
    return out


def with_own_transforms(state_dict: dict, own: dict) -> dict:
    """``state_dict`` with its input/outcome transform entries replaced by those of ``own``
    (a model keeps the transforms' statistics of its own training data)."""
    transforms = ("outcome_transform.", "input_transform.")
    state_dict = {k: v for k, v in state_dict.items() if not k.startswith(transforms)}
    state_dict.update({k: v for k, v in own.items() if k.startswith(transforms)})
    return state_dict


def copy_fit_state(model: nn.Module, other: nn.Module) -> None:
    """Copy ``other``'s network weights, prior centre, prior precisions and noise into
    ``model`` (two ``LaplaceModel`` s of one architecture; ``LaplaceModel.warm_start_from``)."""
    model.network.load_state_dict(other.network.state_dict())
    model.prior_mean = other.prior_mean
    model.network_anchor.copy_(other.network_anchor)
    model.laplace.prior_precision = other.laplace.prior_precision.detach().clone()
    if other.map_prior_precision is not None:
        model.map_prior_precision = other.map_prior_precision.detach().clone()
    model.laplace.noise_std = other.laplace.noise_std.detach().clone()
