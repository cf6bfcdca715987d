"""BoTorch surrogates backed by Laplace-approximated networks."""

from labo.surrogates.ax_support import register_with_ax
from labo.surrogates.fit import FitOptions, fit_laplace_model
from labo.surrogates.mll import LaplaceMarginalLogLikelihood
from labo.surrogates.model import LaplaceModel
from labo.surrogates.networks import default_network

register_with_ax()

__all__ = [
    "FitOptions",
    "LaplaceMarginalLogLikelihood",
    "LaplaceModel",
    "default_network",
    "fit_laplace_model",
]
