import pytest
import torch
from botorch.models.transforms import Normalize, Standardize
from torch import nn

from labo.surrogates import FitOptions, LaplaceModel, fit_laplace_model

FAST = FitOptions(max_epochs_cold=300, max_epochs_warm=100, hyper_steps_cold=30, hyper_steps_warm=20)


def small_net(d, m, width=16, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(d, width), nn.Tanh(), nn.Linear(width, width), nn.Tanh(), nn.Linear(width, m)
    ).double()


def toy_data(n=20, d=3, m=1, seed=0, scale=5.0):
    g = torch.Generator().manual_seed(seed)
    X = torch.rand(n, d, generator=g, dtype=torch.float64) * 4 - 1  # not in the unit cube
    cols = [torch.sin(3 * X[:, :1]).sum(-1) + X[:, 1:].pow(2).sum(-1) * (k + 1) for k in range(m)]
    Y = scale * torch.stack(cols, -1) + 10.0
    return X, Y


def fitted_model(n=20, d=3, m=1, structure=None, transforms=True, **kw):
    X, Y = toy_data(n, d, m)
    extra = {}
    if transforms:
        bounds = torch.tensor([[-1.0] * d, [3.0] * d], dtype=torch.float64)
        extra = dict(input_transform=Normalize(d, bounds=bounds), outcome_transform=Standardize(m))
    if structure is not None:
        extra["structure"] = structure
    model = LaplaceModel(X, Y, network=small_net(d, m), **extra, **kw)
    return fit_laplace_model(model, FAST)


@pytest.fixture
def model_1():
    return fitted_model(m=1)


@pytest.fixture
def model_2():
    return fitted_model(m=2)
