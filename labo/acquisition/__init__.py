"""Laplace-specific helpers for BoTorch acquisition functions."""

from labo.acquisition.optimal_samples import get_optimal_samples

__all__ = ["get_optimal_samples"]
