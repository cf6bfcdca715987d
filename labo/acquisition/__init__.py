"""Laplace-specific helpers for BoTorch acquisition functions."""

from labo.acquisition.failures import (
    MIN_FAILURES_FOR_CLASSIFIER,
    SuccessWeighted,
    failure_rule,
    fit_success_model,
    log_probability_of_success,
    probability_of_success,
)
from labo.acquisition.optimal_samples import get_optimal_samples
from labo.acquisition.thompson import (
    ModelFunctionSamples,
    model_function_samples,
    optimize_function_samples,
    thompson_candidates,
)

__all__ = [
    "MIN_FAILURES_FOR_CLASSIFIER",
    "SuccessWeighted",
    "failure_rule",
    "fit_success_model",
    "log_probability_of_success",
    "probability_of_success",
    "ModelFunctionSamples",
    "get_optimal_samples",
    "model_function_samples",
    "optimize_function_samples",
    "thompson_candidates",
]
