"""Research method ``laplace-kernel-choice``: evidence-based choice between the RBF and the
Matérn-5/2 default, each fitted every iteration and warm-started from its own last fit."""

from __future__ import annotations

import torch

from labo.bench import runner
from labo.surrogates import LaplaceModel

D64 = torch.float64


def _data(n: int, d: int, seed: int, rough: bool):
    g = torch.Generator().manual_seed(seed)
    X = torch.rand(n, d, generator=g, dtype=D64)
    Y = (X - 0.5).abs().sum(-1, keepdim=True) if rough else torch.sin(2 * X).sum(-1, keepdim=True)
    return X, Y


def test_the_choice_is_the_member_with_the_larger_hyper_log_posterior():
    X, Y = _data(16, 3, seed=0, rough=False)
    chosen = runner.fit_model("laplace-kernel-choice", X, Y)
    fits = chosen.family_fits
    assert len(fits) == 2 and all(isinstance(f, LaplaceModel) for f in fits)
    assert not any(isinstance(m, LaplaceModel) for m in chosen.modules() if m is not chosen)
    kernels = [f.network[0].kernel for f in fits]
    assert kernels == ["rbf", "matern52"]
    scores = [f.fit_info["hyper_log_posterior"] for f in fits]
    assert chosen.fit_info["family_scores"] == scores
    assert chosen is fits[max(range(2), key=scores.__getitem__)]
    assert chosen.fit_info["family_choice"] == fits.index(chosen)
    # each member is the method of its own: the same fit as the single-kernel method
    alone = runner.fit_model("laplace-matern52-kernel", X, Y)
    assert alone.fit_info["hyper_log_posterior"] == scores[1]
    assert runner.fit_model("laplace", X, Y).fit_info["hyper_log_posterior"] == scores[0]


def test_each_member_warm_starts_from_its_own_previous_fit():
    X, Y = _data(14, 2, seed=1, rough=True)
    first = runner.fit_model("laplace-kernel-choice", X, Y)
    X2, Y2 = torch.cat([X, torch.rand(3, 2, dtype=D64)]), torch.cat([Y, Y[:3]])
    second = runner.fit_model("laplace-kernel-choice", X2, Y2, previous=first)
    for old, new in zip(first.family_fits, second.family_fits, strict=True):
        assert new.fit_info["warm_start"] and new.network[0].kernel == old.network[0].kernel
    assert not any(f.fit_info["warm_start"] for f in first.family_fits)
