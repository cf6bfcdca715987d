"""Input checks shared by the Laplace core: typed errors that say what was received."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from labo.exceptions import (
    EmptyDataError,
    HyperparameterError,
    InputDtypeError,
    InputShapeError,
    NonFiniteInputError,
)
from labo.laplace.linearization.jacobians import network_output


def check_inputs(X: Tensor, dtype: torch.dtype, name: str = "X") -> None:
    """``X`` must be a non-empty, finite, floating tensor of the network's dtype, ``(n, ...)``."""
    if not isinstance(X, Tensor):
        raise InputDtypeError(f"{name} must be a torch.Tensor, got {type(X).__name__}.")
    if not X.dtype.is_floating_point:
        raise InputDtypeError(f"{name} must be a floating-point tensor, got dtype {X.dtype}.")
    if X.dtype != dtype:
        raise InputDtypeError(
            f"{name} has dtype {X.dtype} but the network's parameters are {dtype}; "
            f"convert one of them (e.g. network.to({dtype}) or {name}.to({dtype}))."
        )
    if X.dim() < 2:
        raise InputShapeError(f"Expected {name} of shape (n, d), got {tuple(X.shape)}.")
    if X.shape[0] == 0 or X.numel() == 0:
        raise EmptyDataError(f"{name} is empty (shape {tuple(X.shape)}); expected at least one row.")
    if not torch.isfinite(X).all():
        bad = int((~torch.isfinite(X)).sum())
        raise NonFiniteInputError(f"{name} contains {bad} NaN/inf values (shape {tuple(X.shape)}).")


def checked_network_output(network: nn.Module, X: Tensor, name: str = "X") -> Tensor:
    """The network's output ``(n, K)`` for ``X``; a typed error if ``X`` does not fit its first layer.

    The forward pass runs first and only a failure is examined, so networks whose
    first registered ``nn.Linear`` is not the first one applied are never refused.

    Raises:
        InputShapeError: When the forward pass fails and ``X``'s last dimension differs
            from the ``in_features`` of the network's first ``nn.Linear`` layer.
    """
    try:
        return network_output(network, X)
    except RuntimeError as err:
        expected = _first_linear_in_features(network)
        if expected is None or X.shape[-1] == expected:
            raise
        raise InputShapeError(
            f"{name} has {X.shape[-1]} input features (shape {tuple(X.shape)}) but the network's first "
            f"layer expects {expected}; pass {name} of shape (n, {expected}) or rebuild the network "
            f"for d={X.shape[-1]}."
        ) from err


def _first_linear_in_features(network: nn.Module) -> int | None:
    """``in_features`` of the first registered layer if it is ``nn.Linear`` (None for Conv etc.)."""
    for module in network.modules():
        if isinstance(module, nn.Linear):
            return module.in_features
        if isinstance(module, (nn.modules.conv._ConvNd, nn.Embedding)):
            return None
    return None


def as_positive_tensor(
    value, name: str, allowed: dict[str, int], dtype: torch.dtype, device: torch.device
) -> Tensor:
    """Convert a float or tensor to a positive, finite tensor of an allowed length.

    Args:
        value: Float or tensor.
        name: Argument name for error messages.
        allowed: ``{description: length}`` of accepted 1-D lengths; a scalar is always accepted.
    """
    t = torch.as_tensor(value, dtype=dtype, device=device) if not isinstance(value, Tensor) else value
    t = t.to(dtype=dtype, device=device)  # keeps the autograd graph of a tensor that requires grad
    if t.dim() > 1 or (t.dim() == 1 and t.numel() not in (1, *allowed.values())):
        expected = ", ".join(f"{k} ({v},)" for k, v in allowed.items())
        raise HyperparameterError(
            f"{name} must be a scalar or a 1-D tensor of shape {expected}; got shape {tuple(t.shape)}."
        )
    if t.dim() == 1 and t.numel() == 1:
        t = t.reshape(())
    if not torch.isfinite(t).all() or not (t > 0).all():
        raise HyperparameterError(f"{name} must be positive and finite, got {t.detach().tolist()}.")
    return t


def as_weight_vector(value, name: str, n: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """A number or a ``()`` / ``(n,)`` finite tensor as a detached ``(n,)`` tensor (one per weight)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = torch.tensor(float(value))
    if not isinstance(value, Tensor) or value.shape not in ((), (n,)):
        got = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
        raise HyperparameterError(
            f"{name} must be a number or a tensor of shape () or ({n},) (one entry per selected "
            f"weight), got {got}."
        )
    if not torch.isfinite(value).all():
        raise HyperparameterError(f"{name} must be finite everywhere.")
    return value.detach().to(dtype=dtype, device=device).expand(n).clone()


def randn(*shape: int, generator: torch.Generator | None, dtype: torch.dtype, device) -> Tensor:
    """Standard normal draws on ``device``, taken from ``generator``'s own device.

    A CPU generator then gives the same numbers whatever the device of the
    posterior, and a CUDA generator works for CUDA posteriors.
    """
    source = generator.device if generator is not None else device
    return torch.randn(*shape, generator=generator, dtype=dtype, device=source).to(device)
