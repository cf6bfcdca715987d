"""SingleTaskGP with a first-order additive component added to its ARD RBF kernel: a
screen-only research variant.

``k(x, x') = k_RBF-ARD(x, x') + a · (1/d) Σ_i exp(−(x_i − x'_i)² / (2 ℓ_i²))`` (Duvenaud,
Nickisch and Rasmussen 2011's additive kernel of order one next to the full-order one).
Each one-dimensional lengthscale ``ℓ_i`` has the dimension-scaled prior at ``d = 1``
(``LogNormal(√2, √3)``), the scale ``a`` a ``LogNormal(−1, 1.5)`` hyperprior; everything is
tuned with the RBF's lengthscales and the noise by MAP-II (``fit_gpytorch_mll``). The
question: do problems with additive or nearly additive structure (Ackley's ripples,
Rosenbrock's chain, BBOB's separable functions, the few active inputs of an embedding)
gain when the evidence can put weight on a kernel that resolves each input on its own,
with 1-D lengthscales that a sum of ``d`` terms does not force to be long?

Variant (``surrogate_screen.py --variants``): ``gp-add``.
"""

from __future__ import annotations

import math

import torch
from gpytorch.constraints import Positive
from gpytorch.kernels import AdditiveKernel, Kernel
from gpytorch.priors import LogNormalPrior


class FirstOrderAdditiveKernel(Kernel):
    """``a · mean_i exp(−(x_i − x'_i)² / (2 ℓ_i²))`` with per-input ``ℓ_i``."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.d = d
        self.register_parameter("raw_scale", torch.nn.Parameter(torch.tensor(-1.0)))
        self.register_constraint("raw_scale", Positive())
        self.register_prior(
            "scale_prior", LogNormalPrior(-1.0, 1.5), lambda m: m.scale, lambda m, v: m._set("raw_scale", v)
        )
        self.register_parameter("raw_ls", torch.nn.Parameter(torch.full((d,), math.sqrt(2.0))))
        self.register_constraint("raw_ls", Positive())
        self.register_prior(
            "ls_prior",
            LogNormalPrior(math.sqrt(2.0), math.sqrt(3.0)),
            lambda m: m.ls,
            lambda m, v: m._set("raw_ls", v),
        )

    @property
    def scale(self) -> torch.Tensor:
        return self.raw_scale_constraint.transform(self.raw_scale)

    @property
    def ls(self) -> torch.Tensor:
        return self.raw_ls_constraint.transform(self.raw_ls)

    def _set(self, name: str, value) -> None:
        value = torch.as_tensor(value).to(getattr(self, name))
        self.initialize(**{name: getattr(self, f"{name}_constraint").inverse_transform(value)})

    def forward(self, x1, x2, diag: bool = False, last_dim_is_batch: bool = False, **params):
        a1, a2 = x1 / self.ls, x2 / self.ls
        if diag:
            return self.scale * torch.ones(x1.shape[:-1], dtype=x1.dtype, device=x1.device)
        sq = (a1.unsqueeze(-2) - a2.unsqueeze(-3)).pow(2)  # ... x n x m x d
        return self.scale * torch.exp(-0.5 * sq).mean(-1)


def fit_additive_gp(name: str, X: torch.Tensor, Y: torch.Tensor):
    """``gp-add`` fitted to unit-cube ``X`` and ``Y`` (n x 1)."""
    from botorch.fit import fit_gpytorch_mll
    from botorch.models import SingleTaskGP
    from botorch.models.transforms import Standardize
    from botorch.models.utils.gpytorch_modules import get_covar_module_with_dim_scaled_prior
    from gpytorch.mlls import ExactMarginalLogLikelihood

    d = X.shape[-1]
    covar = AdditiveKernel(
        get_covar_module_with_dim_scaled_prior(ard_num_dims=d), FirstOrderAdditiveKernel(d)
    )
    model = SingleTaskGP(X, Y, covar_module=covar, outcome_transform=Standardize(1)).to(X)
    fit_gpytorch_mll(ExactMarginalLogLikelihood(model.likelihood, model))
    return model
