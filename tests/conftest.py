import pytest
import torch
from torch import nn


def mlp(sizes, seed=0, act=nn.Tanh):
    """A float64 MLP with the given layer sizes."""
    torch.manual_seed(seed)
    layers = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(act())
    return nn.Sequential(*layers).double()


def make_problem(likelihood, sizes, n=12, seed=0):
    """``(network, X, Y)`` for a tiny float64 problem."""
    net = mlp(sizes, seed)
    g = torch.Generator().manual_seed(seed + 1)
    X = torch.randn(n, sizes[0], generator=g, dtype=torch.float64)
    K = sizes[-1]
    if likelihood == "regression":
        Y = torch.randn(n, K, generator=g, dtype=torch.float64)
    else:
        Y = torch.randint(0, K, (n,), generator=g)
    return net, X, Y


@pytest.fixture
def problem():
    return make_problem
