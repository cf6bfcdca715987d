"""The differentiable Laplace core: posteriors over network weights, torch only.

Public API::

    from labo.laplace import fit_laplace, Full, Diagonal, Kron, Functional
    from labo.laplace import AllWeights, LastLayer, WeightMask
"""

from labo.laplace.laplace import LaplaceApproximation, fit_laplace
from labo.laplace.marglik import input_relevance_groups, log_marginal_likelihood, optimize_hyperparameters
from labo.laplace.predictive.conditioning import ConditionedLaplace, condition
from labo.laplace.predictive.function_samples import FunctionSamples, sample_functions
from labo.laplace.structures.functional import Functional
from labo.laplace.structures.options import Diagonal, Full, Kron, Structure
from labo.laplace.subnetworks import (
    WeightStrategy,
    by_module,
    largest_magnitude,
    largest_variance,
    last_layer,
    random_weights,
    union,
    union_of,
)
from labo.laplace.subsets import AllWeights, LastLayer, WeightMask, WeightSubset

__all__ = [
    "AllWeights",
    "ConditionedLaplace",
    "FunctionSamples",
    "Diagonal",
    "Full",
    "Functional",
    "Kron",
    "LaplaceApproximation",
    "LastLayer",
    "Structure",
    "WeightMask",
    "WeightStrategy",
    "WeightSubset",
    "by_module",
    "condition",
    "fit_laplace",
    "largest_magnitude",
    "largest_variance",
    "last_layer",
    "input_relevance_groups",
    "log_marginal_likelihood",
    "optimize_hyperparameters",
    "random_weights",
    "sample_functions",
    "union",
    "union_of",
]
