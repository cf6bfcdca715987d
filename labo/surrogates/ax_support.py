"""Registration of ``LaplaceModel`` with Ax's ``fit_botorch_model`` dispatcher.

Ax (``Surrogate(botorch_model_class=LaplaceModel)``) fits models through its
own dispatcher, keyed on the model class. :func:`register_with_ax` adds
``LaplaceModel`` to it (routing to :func:`fit_laplace_model`). It runs when
``labo.surrogates`` is imported if Ax is installed; without Ax it does nothing.
"""

from __future__ import annotations

import importlib.util


def register_with_ax() -> bool:
    """Register ``LaplaceModel`` with Ax; returns False when Ax is not installed."""
    if importlib.util.find_spec("ax") is None:
        return False
    from ax.generators.torch.botorch_modular.utils import fit_botorch_model

    from labo.surrogates.fit import fit_laplace_model
    from labo.surrogates.model import LaplaceModel

    @fit_botorch_model.register(LaplaceModel)
    def _fit_laplace_model_for_ax(model, mll_class=None, mll_options=None) -> None:
        # Ax passes its mll class (ExactMarginalLogLikelihood by default); the Laplace
        # fit uses its own marginal likelihood, so both are ignored.
        fit_laplace_model(model)

    return True
