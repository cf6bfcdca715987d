"""labo: Laplace-approximated neural networks as Bayesian-optimisation surrogates."""

__version__ = "0.1.0"
