"""Bring your own network: a small residual 1-D convolutional surrogate, and which weights are Bayesian.

The inputs are 24 values read as a signal (say, a control profile over time);
the objective, unknown to the optimiser, rewards a strong smooth bump anywhere
in the profile, so it has the shift invariance a convolution with pooling is
built for. ``ConvSurrogate`` reshapes ``batch x 24`` inputs to one channel,
applies a convolution, a residual convolution block, average pooling and a
two-layer head. Any ``nn.Module`` mapping ``b x d`` to ``b x m`` works the same
way: pass it as ``network=`` to ``LaplaceModel``.

Four posteriors are compared (the other weights stay at their MAP values and are
trained as usual):

* ``LastLayer()``: the output layer only (found automatically: the last
  ``nn.Linear`` registered; ``LastLayer("head.2")`` names it explicitly);
* ``WeightMask``: the convolutions and the output layer, by boolean masks;
* ``AllWeights()`` (exact GGN, ``Functional()``, the default up to 250 rows);
* ``AllWeights()`` with ``Kron()``: K-FAC, where each convolution gets Kronecker
  factors too (``G ⊗ A`` with ``A`` over the patches of every position, KFAC-expand,
  computed by curvlinops; ``tests/examples/test_custom_network_kron.py`` checks them
  against a dense reference). The line after the table names the Kronecker blocks.

For each: the number of Bayesian weights S, the fit time, the held-out RMSE and
the held-out log likelihood of the predictive (mean and variance, noise
included), then one qLogNEI step with ``optimize_acqf``.

Run: ``python examples/custom_network.py`` (``--smoke`` for a quick check).
"""

from __future__ import annotations

import argparse
import math
import time

import torch
from botorch.acquisition import qLogNoisyExpectedImprovement
from botorch.models.transforms import Standardize
from botorch.optim import optimize_acqf
from torch import nn

from labo.laplace import AllWeights, Kron, LastLayer, WeightMask
from labo.surrogates import FitOptions, LaplaceModel, fit_laplace_model

D = 24


class ConvSurrogate(nn.Module):
    """``batch x D`` -> ``batch x 1``: conv, residual conv block, average pooling, MLP head."""

    def __init__(self, channels: int = 8, hidden: int = 16):
        super().__init__()
        self.stem = nn.Conv1d(1, channels, kernel_size=5, padding=2)
        self.block = nn.Conv1d(channels, channels, kernel_size=3, padding=1)
        self.head = nn.Sequential(nn.Linear(channels, hidden), nn.Tanh(), nn.Linear(hidden, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.stem(x.unsqueeze(-2)))  # b x C x D
        h = h + torch.tanh(self.block(h))  # residual block
        return self.head(h.mean(-1))  # b x 1


def objective(X: torch.Tensor) -> torch.Tensor:
    """Reward a strong, smooth bump anywhere in the profile; ``n x D`` -> ``n x 1``.

    A soft maximum over positions of the 5-point moving average, minus penalties on
    roughness and on the total mass: invariant to shifts of the profile, as a
    convolutional surrogate is.
    """
    smooth = nn.functional.avg_pool1d(X.unsqueeze(-2), 5, stride=1, padding=2, count_include_pad=False)
    bump = torch.logsumexp(8 * smooth.squeeze(-2), -1, keepdim=True) / 8
    rough = (X[..., 1:] - X[..., :-1]).pow(2).mean(-1, keepdim=True)
    return bump - 0.5 * rough - 0.5 * X.mean(-1, keepdim=True)


def conv_and_head_mask(net: ConvSurrogate) -> WeightMask:
    """Bayesian: both convolutions and the output layer (whole tensors here; masks may be any pattern)."""
    names = ("stem.weight", "stem.bias", "block.weight", "block.bias", "head.2.weight", "head.2.bias")
    params = dict(net.named_parameters())
    return WeightMask({n: torch.ones_like(params[n], dtype=torch.bool) for n in names})


def evaluate(model, X_test, Y_test):
    with torch.no_grad():
        post = model.posterior(X_test, observation_noise=True)
        mean, var = post.mean, post.variance
    rmse = float((mean - Y_test).pow(2).mean().sqrt())
    ll = float((-0.5 * (math.log(2 * math.pi) + var.log() + (Y_test - mean).pow(2) / var)).mean())
    return rmse, ll


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="short training (a CI check, not a result)")
    args = parser.parse_args(argv)
    n, n_test = (40, 100) if args.smoke else (120, 500)
    options = (
        FitOptions(max_epochs_cold=300, hyper_steps_cold=30, rounds_cold=1) if args.smoke else FitOptions()
    )
    g = torch.Generator().manual_seed(0)
    X = torch.rand(n, D, generator=g, dtype=torch.float64)
    X_test = torch.rand(n_test, D, generator=g, dtype=torch.float64)
    Y, Y_test = objective(X), objective(X_test)
    bounds = torch.stack([torch.zeros(D), torch.ones(D)]).double()
    print(f"ConvSurrogate on {D}-dimensional profiles, n={n} training, {n_test} held-out points")
    print(f"{'Bayesian weights':28} {'S':>5} {'of P':>5} {'fit s':>6} {'RMSE':>7} {'test ll':>8} "
          f"{'acq s':>6} {'f(candidate)':>12}")  # fmt: skip
    for label, make_weights, structure in (
        ("LastLayer()", lambda net: LastLayer(), None),
        ("WeightMask(convs + output)", conv_and_head_mask, None),
        ("AllWeights()", lambda net: AllWeights(), None),
        ("AllWeights(), Kron()", lambda net: AllWeights(), Kron()),
    ):
        torch.manual_seed(0)
        net = ConvSurrogate().double()
        model = LaplaceModel(
            X,
            Y,
            network=net,
            weights=make_weights(net),
            structure=structure,
            outcome_transform=Standardize(1),
        )
        t0 = time.perf_counter()
        fit_laplace_model(model, options)
        fit_s = time.perf_counter() - t0
        rmse, ll = evaluate(model, X_test, Y_test)
        t0 = time.perf_counter()
        acqf = qLogNoisyExpectedImprovement(model, X_baseline=X)
        cand, _ = optimize_acqf(acqf, bounds, q=1, num_restarts=2, raw_samples=32 if args.smoke else 256)
        acq_s = time.perf_counter() - t0
        P = sum(p.numel() for p in net.parameters())
        print(
            f"{label:28} {model.laplace.n_weights:5d} {P:5d} {fit_s:6.2f} {rmse:7.4f} {ll:8.3f} "
            f"{acq_s:6.2f} {float(objective(cand)):12.4f}"
        )
    curvature = model.laplace.curvature  # the Kron posterior of the last row
    blocks = [f"{name} ({type(dict(net.named_modules())[name]).__name__})" for name in curvature.layer_names]
    print(
        f"Kron() Kronecker blocks: {', '.join(blocks)}; weights outside them: {curvature.rest_index.numel()}"
    )
    ones = torch.ones(1, D, dtype=torch.float64)
    bump = torch.zeros(1, D, dtype=torch.float64)
    bump[0, 8:16] = 1.0
    print(
        f"best training value {float(Y.max()):.4f}; for scale: all ones {float(objective(ones)):.4f}, "
        f"a block of 8 ones {float(objective(bump)):.4f}"
    )


if __name__ == "__main__":
    main()
