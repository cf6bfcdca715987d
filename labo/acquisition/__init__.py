"""Laplace-specific helpers for BoTorch acquisition functions."""

from labo.acquisition.optimal_samples import get_optimal_samples
from labo.acquisition.thompson import (
    ModelFunctionSamples,
    model_function_samples,
    optimize_function_samples,
    thompson_candidates,
)

__all__ = [
    "ModelFunctionSamples",
    "get_optimal_samples",
    "model_function_samples",
    "optimize_function_samples",
    "thompson_candidates",
]
