"""SingleTaskGP with a polynomial trend added to its RBF kernel: a screen-only research variant.

``k(x, x') = k_RBF(x, x') + a uᵀu' + b (uᵀu')² + c Σ_i v_i v'_i`` with
``u = (x − ½) √(12 / d)`` (the unit cube centred and scaled so that E‖u‖² = 1 under the
uniform distribution) and ``v_i = d (u_i² − 1/d)`` (the centred diagonal squares). The
terms are a linear trend (``lin``), a full quadratic (``quad``: every product ``u_i u_j``)
and an axis-aligned quadratic (``dquad``); each scale gets a ``LogNormal(−1, 1.5)``
hyperprior and is tuned with the RBF's lengthscales and the noise by MAP-II
(``fit_gpytorch_mll``). The question it answers: does a bowl- or slope-shaped trend, fitted
on the evidence, help BO on problems with global structure (BBOB's ellipsoids, Rosenbrock,
Ackley's envelope) without sending proposals to the corners, where the trend's prior
variance is largest?

Variants (``surrogate_screen.py --variants``): ``gp-lin``, ``gp-quad`` (linear + full
quadratic), ``gp-dquad`` (linear + diagonal quadratic).
"""

from __future__ import annotations

import math

import torch
from gpytorch.constraints import Positive
from gpytorch.kernels import AdditiveKernel, Kernel
from gpytorch.priors import LogNormalPrior

TERMS = ("lin", "quad", "dquad")


class TrendKernel(Kernel):
    """The polynomial trend terms named in ``terms`` (see the module docstring)."""

    def __init__(self, d: int, terms: tuple[str, ...]) -> None:
        super().__init__()
        self.d, self.terms = d, terms
        for t in terms:
            self.register_parameter(f"raw_{t}", torch.nn.Parameter(torch.tensor(-1.0)))
            self.register_constraint(f"raw_{t}", Positive())
            self.register_prior(
                f"{t}_prior",
                LogNormalPrior(-1.0, 1.5),
                lambda m, t=t: m.scale(t),
                lambda m, v, t=t: m._set(t, v),
            )

    def scale(self, t: str) -> torch.Tensor:
        return getattr(self, f"raw_{t}_constraint").transform(getattr(self, f"raw_{t}"))

    def _set(self, t: str, value) -> None:
        value = torch.as_tensor(value).to(getattr(self, f"raw_{t}"))
        self.initialize(**{f"raw_{t}": getattr(self, f"raw_{t}_constraint").inverse_transform(value)})

    def forward(self, x1, x2, diag: bool = False, last_dim_is_batch: bool = False, **params):
        s = math.sqrt(12.0 / self.d)
        u1, u2 = (x1 - 0.5) * s, (x2 - 0.5) * s
        lin = u1 @ u2.transpose(-1, -2)
        K = torch.zeros_like(lin)
        if "lin" in self.terms:
            K = K + self.scale("lin") * lin
        if "quad" in self.terms:
            K = K + self.scale("quad") * lin.pow(2)
        if "dquad" in self.terms:
            v1, v2 = self.d * (u1.pow(2) - 1 / self.d), self.d * (u2.pow(2) - 1 / self.d)
            K = K + self.scale("dquad") * (v1 @ v2.transpose(-1, -2)) / self.d
        return K.diagonal(dim1=-2, dim2=-1) if diag else K


def fit_trend_gp(name: str, X: torch.Tensor, Y: torch.Tensor):
    """``gp-lin``, ``gp-quad`` or ``gp-dquad`` fitted to unit-cube ``X`` and ``Y`` (n x 1)."""
    from botorch.fit import fit_gpytorch_mll
    from botorch.models import SingleTaskGP
    from botorch.models.transforms import Standardize
    from botorch.models.utils.gpytorch_modules import get_covar_module_with_dim_scaled_prior
    from gpytorch.mlls import ExactMarginalLogLikelihood

    kind = name.split("-", 1)[1]
    terms = {"lin": ("lin",), "quad": ("lin", "quad"), "dquad": ("lin", "dquad")}[kind]
    d = X.shape[-1]
    covar = AdditiveKernel(get_covar_module_with_dim_scaled_prior(ard_num_dims=d), TrendKernel(d, terms))
    model = SingleTaskGP(X, Y, covar_module=covar, outcome_transform=Standardize(1)).to(X)
    fit_gpytorch_mll(ExactMarginalLogLikelihood(model.likelihood, model))
    return model
