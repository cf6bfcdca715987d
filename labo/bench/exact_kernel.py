"""The exact GP of an rff ``LaplaceModel``'s kernel at its tuned hyperparameters.

Research method ``laplace-exact-kernel`` (:mod:`labo.bench.methods`): it measures in BO
what the default's finite feature set costs against the kernel those features
approximate, with the same hyperparameters, before the core has such a posterior.
"""

from __future__ import annotations

import torch
from botorch.models import SingleTaskGP
from botorch.models.transforms import Standardize
from gpytorch.constraints import GreaterThan
from gpytorch.kernels import ConstantKernel, MaternKernel, RBFKernel, ScaleKernel
from gpytorch.means import ConstantMean
from torch import Tensor

from labo.exceptions import BenchmarkError
from labo.surrogates import LaplaceModel
from labo.surrogates.networks import RFF_KERNELS, is_rff_network


def exact_kernel_gp(model: LaplaceModel, X: Tensor, Y: Tensor) -> SingleTaskGP:
    """The exact GP of the kernel that a fitted rff ``LaplaceModel``'s features approximate,
    at that model's tuned hyperparameters (research method ``laplace-exact-kernel``).

    In the model's z-space (its outcome transform, then its own standardisation
    ``z = (y − μ) / s``) the kernel-evidence fit assumes ``z ~ N(0, (k(X, X) + 1) / λ + σ² I)``
    with ``k`` the features' stationary kernel at their lengthscales; this is that GP,
    written in the outcome-transformed units: constant mean ``μ``, covariance
    ``s² (k + 1) / λ``, noise ``s² σ²``, nothing trained. The features' posterior is the
    finite-feature approximation of its posterior.

    Args:
        model: A fitted one-output ``LaplaceModel`` on random Fourier features, with an
            outcome transform that leaves ``Y``'s rows in place (``Standardize``).
        X: ``n x d`` its training inputs.
        Y: ``n x 1`` its training targets, untransformed.

    Raises:
        BenchmarkError: For a model of several outputs or without random Fourier features.
    """
    if Y.shape[-1] != 1 or not is_rff_network(model.network):
        raise BenchmarkError("exact_kernel_gp needs a one-output LaplaceModel on random Fourier features.")
    features, la = model.network[0], model.laplace
    d = X.shape[-1]
    nu = RFF_KERNELS[features.kernel]
    base = RBFKernel(ard_num_dims=d) if nu is None else MaternKernel(nu=nu, ard_num_dims=d)
    covar = ScaleKernel(base) + ConstantKernel()
    mean = ConstantMean()
    transform = Standardize(1)
    gp = SingleTaskGP(X, Y, covar_module=covar, mean_module=mean, outcome_transform=transform)
    gp.likelihood.noise_covar.register_constraint("raw_noise", GreaterThan(1e-12))
    s2 = float(model.y_scale.reshape(-1)[0]) ** 2
    amp = s2 / float(la.prior_precision.detach().mean())
    with torch.no_grad():
        base.lengthscale = features.log_lengthscale.detach().exp().reshape(1, d).to(X)
        covar.kernels[0].outputscale = torch.tensor(amp, dtype=X.dtype)
        covar.kernels[1].constant = torch.tensor(amp, dtype=X.dtype)
        mean.constant.fill_(float(model.y_mean.reshape(-1)[0]))
        gp.likelihood.noise = torch.tensor([s2 * float(la.noise_std.detach().mean()) ** 2], dtype=X.dtype)
    gp.eval()
    return gp
