"""Research method ``laplace-lsavg``: the default with ``FitOptions(lengthscale_samples=16)``."""

from __future__ import annotations

import torch

from labo.bench import runner
from labo.surrogates.averaged_posterior import AveragedKernelPosterior
from labo.surrogates.kernel_posterior import KernelPosterior

D64 = torch.float64


def test_lsavg_is_the_default_fit_with_an_averaged_posterior_and_warm_starts():
    g = torch.Generator().manual_seed(0)
    X = torch.rand(15, 3, generator=g, dtype=D64)
    Y = torch.sin(3 * X).sum(-1, keepdim=True)
    model = runner.fit_model("laplace-lsavg", X, Y)
    default = runner.fit_model("laplace", X, Y)
    assert isinstance(model.kernel_posterior, AveragedKernelPosterior)
    assert model.kernel_posterior.num_members == 16 and model.fit_info["lengthscale_samples"] == 16
    assert isinstance(default.kernel_posterior, KernelPosterior)
    # the same MAP-II fit underneath: the average only changes the posterior
    assert model.fit_info["hyper_log_posterior"] == default.fit_info["hyper_log_posterior"]
    X2, Y2 = torch.cat([X, X[:2] * 0.5]), torch.cat([Y, Y[:2]])
    again = runner.fit_model("laplace-lsavg", X2, Y2, previous=model)
    assert again.fit_info["warm_start"] and isinstance(again.kernel_posterior, AveragedKernelPosterior)
    post = again.posterior(torch.rand(4, 2, 3, dtype=D64))
    assert post.mean.shape == (4, 2, 1) and torch.isfinite(post.mvn.covariance_matrix).all()
