"""Input gradients of a LaplaceModel: acquisition gradients checked, and Thompson sampling by gradient ascent.

Part 1. The default ``LaplaceModel``'s posterior is the exact GP of the kernel its
random Fourier features approximate (their infinite-width limit): mean
``k(x, X) α``, covariance ``k(x, x') − k(x, X) A⁻¹ k(X, x')``, both differentiable in
``x``, averaged over 16 lengthscale vectors drawn from their Laplace marginal once there
are 2d rows (the mean is the members' mean). (With ``FitOptions(posterior="features")``,
or another network, it is the linearised network: mean ``f(x; θ̂)``, covariance ``J(x) H⁻¹ J(x')ᵀ``.) Autograd
gradients w.r.t. ``X`` of the posterior mean and variance and of three acquisition
functions (analytic LogEI, UCB, and MC qLogNEI with q=2 and fixed quasi-MC base
samples) are compared with central finite differences in float64. The gradient of
the posterior mean is also compared with the closed-form gradient of the RBF kernel
mean, ``−Σ_i α_i k(x, x_i) (x − x_i) / ℓ²`` (the same function, so they must agree
to rounding).

Part 2. Deterministic posterior functions (``labo.acquisition.model_function_samples``;
for the default, Matheron's rule for one member of the lengthscale average each: a prior
function on the random features plus the exact kernel's update,
``f_s(x) = g_s(x) + k(x, X) A⁻¹ (Z − g_s(X) − ε_s)``), differentiable in ``x``. Their
gradient is checked against finite differences, each sample is maximised by multi-start
L-BFGS-B (``optimize_function_samples``) and compared with the best point of a dense
Sobol set, and a short Thompson-sampling loop (``thompson_candidates``) is run on the
objective: continuous Thompson sampling that a GP gets only through random-feature
approximations.

Run: ``python examples/input_gradients.py`` (``--smoke`` for a quick check).
"""

from __future__ import annotations

import argparse

import torch
from botorch.acquisition import LogExpectedImprovement, UpperConfidenceBound, qLogNoisyExpectedImprovement
from botorch.models.transforms import Normalize, Standardize
from botorch.sampling import SobolQMCNormalSampler
from botorch.utils.sampling import draw_sobol_samples

from labo.acquisition import model_function_samples, optimize_function_samples, thompson_candidates
from labo.surrogates import FitOptions, LaplaceModel, fit_laplace_model
from labo.surrogates.averaged_posterior import AveragedKernelPosterior

D = 4
BOUNDS = torch.stack([torch.zeros(D), torch.ones(D)]).double()


def objective(X: torch.Tensor) -> torch.Tensor:
    """A smooth 4-D test function with one broad maximum; ``n x 4`` -> ``n x 1``."""
    Z = 2 * X - 1
    return (torch.cos(2 * Z).sum(-1) - 0.5 * (Z - 0.3).pow(2).sum(-1)).unsqueeze(-1)


def central_differences(fn, X: torch.Tensor, h: float = 1e-6) -> torch.Tensor:
    """Gradient of ``sum(fn(X))`` by central differences, one input coordinate at a time."""
    grad = torch.zeros_like(X)
    flat, gflat = X.reshape(-1), grad.reshape(-1)
    with torch.no_grad():
        for i in range(flat.numel()):
            step = torch.zeros_like(flat)
            step[i] = h
            gflat[i] = (
                fn((flat + step).reshape(X.shape)).sum() - fn((flat - step).reshape(X.shape)).sum()
            ) / (2 * h)
    return grad


def autograd_gradient(fn, X: torch.Tensor) -> torch.Tensor:
    Xg = X.clone().requires_grad_(True)
    fn(Xg).sum().backward()
    return Xg.grad


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach(), b.detach()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))


def fit_model(X, Y, smoke: bool, previous=None) -> LaplaceModel:
    options = FitOptions(max_epochs_cold=400, hyper_steps_cold=30, rounds_cold=1) if smoke else None
    model = LaplaceModel(
        X, Y, input_transform=Normalize(D), outcome_transform=Standardize(1), warm_start=previous
    )
    return fit_laplace_model(model, options)


def gradient_check(model: LaplaceModel, X_train: torch.Tensor, Y_train: torch.Tensor) -> None:
    X = draw_sobol_samples(BOUNDS, n=3, q=1, seed=7).squeeze(-2).unsqueeze(-2)  # 3 x 1 x d
    X2 = draw_sobol_samples(BOUNDS, n=3, q=2, seed=8)  # 3 x 2 x d
    sampler = SobolQMCNormalSampler(torch.Size([128]), seed=0)  # fixed base samples: deterministic
    cases = {
        "posterior mean": (lambda x: model.posterior(x).mean, X),
        "posterior variance": (lambda x: model.posterior(x).variance, X),
        "LogEI (analytic)": (LogExpectedImprovement(model, best_f=Y_train.max()), X),
        "UCB, beta=2": (UpperConfidenceBound(model, beta=2.0), X),
        "qLogNEI, q=2 (MC)": (qLogNoisyExpectedImprovement(model, X_train, sampler=sampler), X2),
    }
    print("Part 1: gradients w.r.t. X, autograd vs central differences (h = 1e-6, float64)")
    print(f"{'quantity':22} {'shape of X':>12} {'max |grad|':>11} {'max rel. error':>15}")
    for name, (fn, Xc) in cases.items():
        auto = autograd_gradient(fn, Xc)
        fd = central_differences(fn, Xc)
        print(
            f"{name:22} {str(tuple(Xc.shape)):>12} {float(auto.abs().max()):11.4g} "
            f"{relative_error(auto, fd):15.2e}"
        )
    # The posterior mean is k(x, X) α (z-space, normalised inputs u): its gradient in closed form.
    # The default averages it over lengthscale draws (from 2d rows on): the members' mean.
    kp = model.kernel_posterior
    members = kp.members() if isinstance(kp, AveragedKernelPosterior) else [kp]
    with torch.no_grad():
        u = model.transform_inputs(X[:, 0])  # 3 x d
        grad_u = 0.0
        for p in members:
            diff = (u.unsqueeze(1) - p.X) * p.inv_lengthscale  # 3 x n x d, scaled
            k = torch.exp(-0.5 * diff.pow(2).sum(-1)) / p.prior_precision  # 3 x n (rbf; "+ 1" is constant)
            grad_u = grad_u - (p.alpha[0].unsqueeze(-1) * k.unsqueeze(-1) * diff * p.inv_lengthscale).sum(1)
        grad_u = grad_u / len(members)
        # back to Y's scale and X's coordinates (Normalize: u = (x − offset) / coefficient)
        closed = (
            grad_u * model.y_scale * model.outcome_transform.stdvs[0, 0] / model.input_transform.coefficient
        )
    mean_grad = autograd_gradient(lambda v: model.posterior(v).mean, X)[:, 0]
    print(
        "posterior-mean gradient vs the kernel mean's closed form: max rel. error "
        f"{relative_error(mean_grad, closed):.2e}"
    )


def thompson_sampling(model: LaplaceModel, X: torch.Tensor, Y: torch.Tensor, smoke: bool) -> None:
    gen = torch.Generator().manual_seed(0)
    samples = model_function_samples(model, 4, gen)
    x = draw_sobol_samples(BOUNDS, n=2, q=1, seed=3)  # 2 x 1 x d
    auto = autograd_gradient(samples, x)
    fd = central_differences(samples, x)
    print("\nPart 2: posterior function samples f_s(x) = g_s(x) + k(x, X) A⁻¹ (Z − g_s(X) − ε_s)")
    print(
        "gradient of 4 samples at 2 points: max rel. error vs central differences "
        f"{relative_error(auto, fd):.2e}"
    )
    raw = 256 if smoke else 1024
    X_opt, values = optimize_function_samples(samples, BOUNDS, num_restarts=4, raw_samples=raw, seed=1)
    dense = draw_sobol_samples(BOUNDS, n=4096 if smoke else 32768, q=1, seed=2).squeeze(-2)
    with torch.no_grad():
        dense_best = samples(dense)[..., 0].max(-1).values
    for s in range(samples.num_samples):
        print(
            f"  sample {s}: L-BFGS-B maximum {float(values[s]):8.4f} "
            f"at {[round(v, 3) for v in X_opt[s].tolist()]}"
            f"  | best of {len(dense)} Sobol points {float(dense_best[s]):8.4f}"
        )
    iterations = 2 if smoke else 10
    print(
        f"Thompson sampling loop, q=2, {iterations} iterations "
        "(objective maximum 3.856 at x = 0.530 in every coordinate)"
    )
    for it in range(iterations):
        cand = thompson_candidates(model, BOUNDS, q=2, num_restarts=4, raw_samples=raw, generator=gen)
        X, Y = torch.cat([X, cand]), torch.cat([Y, objective(cand)])
        model = fit_model(X, Y, smoke, previous=model)
        print(f"  iter {it + 1:2d}  n={len(X):3d}  best={float(Y.max()):.4f}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="short training and loops (a CI check)")
    args = parser.parse_args(argv)
    X = draw_sobol_samples(BOUNDS, n=20, q=1, seed=0).squeeze(-2)
    Y = objective(X)
    model = fit_model(X, Y, args.smoke)
    gradient_check(model, X, Y)
    thompson_sampling(model, X, Y, args.smoke)


if __name__ == "__main__":
    main()
