"""``LaplaceMarginalLogLikelihood``: a ``LaplaceModel``'s marginal likelihood as a GPyTorch mll.

Kept out of ``fit.py`` so that the model can import its fit (BoTorch's ``custom_fit``
hook) without an import cycle: this module needs the model class, the fit does not.
"""

from __future__ import annotations

from gpytorch.mlls import MarginalLogLikelihood
from torch import Tensor

from labo.surrogates.model import LaplaceModel


class LaplaceMarginalLogLikelihood(MarginalLogLikelihood):
    """The Laplace marginal likelihood of a ``LaplaceModel``, for ``fit_gpytorch_mll``.

    ``fit_gpytorch_mll(LaplaceMarginalLogLikelihood(model))`` dispatches (through
    BoTorch's ``custom_fit`` hook) to :func:`fit_laplace_model`. Calling the mll
    returns the log marginal likelihood per data point (as GPyTorch's mlls do).

    Args:
        likelihood_or_model: The model, or ``model.likelihood`` (GPyTorch/Ax style,
            then ``model`` is required).
        model: The ``LaplaceModel`` when the first argument is its likelihood.
    """

    def __init__(self, likelihood_or_model, model: LaplaceModel | None = None):
        if model is None:
            model = likelihood_or_model
        if not isinstance(model, LaplaceModel):
            raise TypeError(f"LaplaceMarginalLogLikelihood needs a LaplaceModel, got {type(model).__name__}.")
        super().__init__(model.likelihood, model)

    def forward(self, *args, **kwargs) -> Tensor:
        la = self.model.laplace
        return la.log_marginal_likelihood() / int(la.n_data)
