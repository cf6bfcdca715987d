"""Research methods ``laplace-lsavg`` (the lengthscale average at every number of rows) and
``laplace-lsavg-2d`` (for ``2d ≤ n < 30d`` rows), and the default's configuration
(``laplace-lsavg-2d20``: from 20 rows as well)."""

from __future__ import annotations

import torch

from labo.bench import runner
from labo.surrogates import FitOptions
from labo.surrogates.averaged_posterior import AveragedKernelPosterior
from labo.surrogates.kernel_posterior import KernelPosterior

D64 = torch.float64


def test_lsavg_is_the_default_fit_with_an_averaged_posterior_and_warm_starts():
    g = torch.Generator().manual_seed(0)
    X = torch.rand(15, 3, generator=g, dtype=D64)
    Y = torch.sin(3 * X).sum(-1, keepdim=True)
    model = runner.fit_model("laplace-lsavg", X, Y)
    default = runner.fit_model("laplace-kernel", X, Y)  # the MAP-II lengthscales alone
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


def test_lsavg_2d_averages_only_from_two_to_thirty_rows_per_input():
    g = torch.Generator().manual_seed(1)
    X = torch.rand(10, 6, generator=g, dtype=D64)
    Y = torch.sin(3 * X).sum(-1, keepdim=True)
    few = runner.fit_model("laplace-lsavg-2d", X, Y)  # 10 < 12 rows: the MAP-II lengthscales
    assert isinstance(few.kernel_posterior, KernelPosterior) and few.fit_info["lengthscale_samples"] == 0
    default = runner.fit_model("laplace-kernel", X, Y)
    Xs = torch.rand(3, 2, 6, dtype=D64)
    torch.testing.assert_close(few.posterior(Xs).mean, default.posterior(Xs).mean)
    X2 = torch.cat([X, torch.rand(2, 6, generator=g, dtype=D64)])
    Y2 = torch.sin(3 * X2).sum(-1, keepdim=True)
    enough = runner.fit_model("laplace-lsavg-2d", X2, Y2, previous=few)  # 12 rows: averaged
    assert isinstance(enough.kernel_posterior, AveragedKernelPosterior)
    assert enough.fit_info["lengthscale_samples"] == 16
    many_X = torch.rand(60, 2, generator=g, dtype=D64)  # 60 = 30 rows per input: the default again
    many_Y = torch.sin(3 * many_X).sum(-1, keepdim=True)
    many = runner.fit_model("laplace-lsavg-2d", many_X, many_Y)
    assert isinstance(many.kernel_posterior, KernelPosterior) and many.fit_info["lengthscale_samples"] == 0
    many_default = runner.fit_model("laplace-kernel", many_X, many_Y)
    Xs = torch.rand(3, 2, 2, dtype=D64)
    torch.testing.assert_close(many.posterior(Xs).mean, many_default.posterior(Xs).mean)
    torch.testing.assert_close(many.posterior(Xs).variance, many_default.posterior(Xs).variance)
    below = runner.fit_model("laplace-lsavg-2d", many_X[:59], many_Y[:59])
    assert isinstance(below.kernel_posterior, AveragedKernelPosterior)


def test_the_default_is_lsavg_2d20():
    """``laplace`` (``LaplaceModel`` with no options) is ``laplace-lsavg-2d20``: the same
    options, and the same posterior on the same data; below 20 rows it is the MAP-II
    posterior, where ``laplace-lsavg-2d`` already averages."""
    assert FitOptions() == runner.TABLE["laplace-lsavg-2d20"].fit and runner.TABLE["laplace"].fit is None
    g = torch.Generator().manual_seed(3)
    X = torch.rand(21, 3, generator=g, dtype=D64)
    Y = torch.sin(3 * X).sum(-1, keepdim=True)
    Xs = torch.rand(4, 2, 3, dtype=D64)
    default, named = runner.fit_model("laplace", X, Y), runner.fit_model("laplace-lsavg-2d20", X, Y)
    assert isinstance(default.kernel_posterior, AveragedKernelPosterior)
    torch.testing.assert_close(default.posterior(Xs).mean, named.posterior(Xs).mean, rtol=0, atol=0)
    torch.testing.assert_close(default.posterior(Xs).variance, named.posterior(Xs).variance, rtol=0, atol=0)
    few = runner.fit_model("laplace", X[:19], Y[:19])  # 19 rows: the MAP-II lengthscales
    assert isinstance(few.kernel_posterior, KernelPosterior) and few.fit_info["lengthscale_samples"] == 0
    map_ls = runner.fit_model("laplace-kernel", X[:19], Y[:19])
    torch.testing.assert_close(few.posterior(Xs).mean, map_ls.posterior(Xs).mean, rtol=0, atol=0)
    torch.testing.assert_close(few.posterior(Xs).variance, map_ls.posterior(Xs).variance, rtol=0, atol=0)
    early = runner.fit_model("laplace-lsavg-2d", X[:19], Y[:19])  # without the floor: averaged
    assert isinstance(early.kernel_posterior, AveragedKernelPosterior)
