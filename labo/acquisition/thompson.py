"""Continuous Thompson sampling with Laplace posterior function samples.

A ``LaplaceModel``'s linearised posterior has exact, cheap function samples
(``f(x) + J(x)(θ_s − θ̂)``, see :mod:`labo.laplace.predictive.function_samples`) that are
deterministic and differentiable in ``x``. Thompson sampling for a batch of ``q``
points draws ``q`` functions and maximises each one over the box with gradients:
a multi-start L-BFGS-B (BoTorch's ``gen_candidates_scipy``), started from the best
points of a shared Sobol set. All ``q`` functions and all restarts are optimised
together as one batched problem: the restarts are independent L-BFGS-B problems
(BoTorch's parallel mode) and within one restart the objective is the sum of the
``q`` functions, each of which depends on its own point only, so the joint
optimum is the per-function optimum. Each function then keeps its best restart.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from botorch.generation.gen import gen_candidates_scipy
from botorch.utils.sampling import draw_sobol_samples
from torch import Tensor

from labo.exceptions import HyperparameterError, InputShapeError, NotFittedError
from labo.laplace.predictive.function_samples import FunctionSamples, sample_functions
from labo.surrogates.averaged_posterior import AveragedKernelPosterior, MixtureFunctionSamples
from labo.surrogates.kernel_posterior import KernelFunctionSamples


class ModelFunctionSamples:
    """Posterior function samples of a ``LaplaceModel`` in its original spaces.

    Handles the model's input transform (applied to ``X``), its internal target
    standardisation and outcome transform (undone on the outputs) and output subsets.

    Args:
        model: A fitted ``LaplaceModel`` (possibly conditioned on unbatched observations).
        samples: Function samples of ``model.laplace`` (z-space, transformed inputs), or of
            its ``kernel_posterior`` (:class:`~labo.surrogates.kernel_posterior.KernelFunctionSamples`).
    """

    def __init__(self, model, samples: FunctionSamples):
        self.model = model
        self.samples = samples

    @property
    def num_samples(self) -> int:
        return self.samples.num_samples

    def _to_outcome_space(self, z: Tensor) -> Tensor:
        model = self.model
        y = model.y_mean + model.y_scale * z
        outcome_transform = getattr(model, "outcome_transform", None)
        if outcome_transform is not None:
            y, _ = outcome_transform.untransform(y)
        if model.output_subset is not None:
            y = y[..., model.output_subset]
        return y

    def __call__(self, X: Tensor) -> Tensor:
        """All functions at ``X`` (``batch_shape x n x d``, untransformed): ``s x batch_shape x n x m``."""
        self.model.check_X(X)
        self.model.eval()
        return self._to_outcome_space(self.samples(self.model.transform_inputs(X)))

    def paired(self, X: Tensor) -> Tensor:
        """Function ``i`` at ``X[i]``: ``s x batch_shape x n x d`` -> ``s x batch_shape x n x m``."""
        self.model.check_X(X)
        self.model.eval()
        return self._to_outcome_space(self.samples.paired(self.model.transform_inputs(X)))


def model_function_samples(
    model, num_samples: int, generator: torch.Generator | None = None
) -> ModelFunctionSamples:
    """Draw ``num_samples`` posterior functions of a fitted ``LaplaceModel``.

    Args:
        model: A fitted ``LaplaceModel``.
        num_samples: Number of functions.
        generator: Optional ``torch.Generator`` for reproducible draws.

    Returns:
        A :class:`ModelFunctionSamples` mapping untransformed ``batch_shape x n x d``
        inputs to ``num_samples x batch_shape x n x m`` outputs in the original scale.
    """
    if not getattr(model, "is_fitted", False):
        raise NotFittedError("model_function_samples needs a fitted LaplaceModel (fit_laplace_model).")
    if getattr(model, "conditioning", None) is not None:
        if model.batch_shape != torch.Size([]):
            raise NotImplementedError(
                f"Function samples of a batched conditioned (fantasy) LaplaceModel (batch_shape "
                f"{tuple(model.batch_shape)}) are not supported; condition on unbatched data."
            )
    kernel = getattr(model, "kernel_posterior", None)
    if kernel is not None:  # FitOptions(posterior="kernel"): pathwise samples of the kernel's GP
        post = kernel if model.conditioning is None else model.conditioned_laplace()
        # lengthscale_samples=S: each function is a pathwise sample of one member
        kind = MixtureFunctionSamples if isinstance(post, AveragedKernelPosterior) else KernelFunctionSamples
        return ModelFunctionSamples(model, kind(post, model.network[0], num_samples, generator))
    if getattr(model, "conditioning", None) is not None:
        # exact samples of the conditioned linearised posterior (e.g. with pending points)
        return ModelFunctionSamples(
            model, model.conditioned_laplace().sample_functions(num_samples, generator)
        )
    return ModelFunctionSamples(model, sample_functions(model.laplace, num_samples, generator))


def _check_bounds(bounds: Tensor, d: int) -> None:
    if not isinstance(bounds, Tensor) or bounds.shape != (2, d):
        raise InputShapeError(f"Expected bounds of shape 2 x {d}, got {tuple(getattr(bounds, 'shape', ()))}.")
    if not torch.isfinite(bounds).all() or not (bounds[0] < bounds[1]).all():
        raise InputShapeError(
            f"bounds must be finite with lower < upper in every dimension, got {bounds.tolist()}."
        )


def optimize_function_samples(
    samples,
    bounds: Tensor,
    objective: Callable[[Tensor], Tensor] | None = None,
    maximize: bool = True,
    num_restarts: int = 8,
    raw_samples: int = 256,
    seed: int | None = None,
    options: dict | None = None,
) -> tuple[Tensor, Tensor]:
    """Maximise (or minimise) each function sample over a box with multi-start L-BFGS-B.

    Args:
        samples: A :class:`ModelFunctionSamples` or :class:`FunctionSamples` of ``s`` functions,
            with ``paired`` evaluation (inputs ``s x ... x n x d`` -> ``s x ... x n x m``).
        bounds: ``2 x d`` box.
        objective: Maps outputs ``... x m`` to ``...``; default: the single output (m = 1).
        maximize: Maximise (default) or minimise the objective.
        num_restarts: L-BFGS-B starts per function (the best Sobol points of that function).
        raw_samples: Size of the shared Sobol set the starts are chosen from.
        seed: Seed of the Sobol set.
        options: Options for ``gen_candidates_scipy`` (e.g. ``{"maxiter": 200}``).

    Returns:
        ``(X_opt, values)``: the optimum of each function ``s x d`` and its objective ``s``.
    """
    d = bounds.shape[-1] if isinstance(bounds, Tensor) and bounds.dim() == 2 else -1
    _check_bounds(bounds, d)
    for name, v in (("num_restarts", num_restarts), ("raw_samples", raw_samples)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise HyperparameterError(f"{name} must be a positive int, got {v!r}.")
    num_restarts = min(num_restarts, raw_samples)
    s = samples.num_samples
    sign = 1.0 if maximize else -1.0

    def value(Y: Tensor) -> Tensor:
        if objective is not None:
            return sign * objective(Y)
        if Y.shape[-1] != 1:
            raise InputShapeError(
                f"The samples have {Y.shape[-1]} outputs; pass an objective mapping ... x m to ...."
            )
        return sign * Y[..., 0]

    raw = draw_sobol_samples(bounds=bounds, n=raw_samples, q=1, seed=seed).to(bounds)  # raw x 1 x d
    with torch.no_grad():
        raw_vals = value(samples(raw))[..., 0]  # s x raw
    best = raw_vals.topk(num_restarts, dim=-1).indices  # s x R
    init = raw[best.T, 0]  # R x s x d: restart r of function j at init[r, j]

    def acq(X: Tensor) -> Tensor:  # b x s x d -> b: sum over functions of each one's value
        vals = value(samples.paired(X.transpose(0, 1).unsqueeze(-2)))[..., 0]  # s x b
        return vals.sum(0)

    cands, _ = gen_candidates_scipy(
        init, acq, lower_bounds=bounds[0], upper_bounds=bounds[1], options=options or {}
    )
    cands = cands.detach()
    with torch.no_grad():
        vals = value(samples.paired(cands.transpose(0, 1).unsqueeze(-2)))[..., 0]  # s x R
    idx = vals.argmax(-1)
    X_opt = cands[idx, torch.arange(s)]
    return X_opt, sign * vals.gather(-1, idx.unsqueeze(-1)).squeeze(-1)


def thompson_candidates(
    model,
    bounds: Tensor,
    q: int = 1,
    objective: Callable[[Tensor], Tensor] | None = None,
    maximize: bool = True,
    num_restarts: int = 8,
    raw_samples: int = 256,
    generator: torch.Generator | None = None,
    options: dict | None = None,
) -> Tensor:
    """A batch of ``q`` Thompson-sampling candidates from a fitted ``LaplaceModel``.

    Draws ``q`` posterior functions and returns the optimiser of each (see
    :func:`optimize_function_samples`).

    Args:
        model: A fitted ``LaplaceModel``.
        bounds: ``2 x d`` search box (untransformed inputs).
        q: Number of candidates (one function sample each).
        objective: Maps outputs ``... x m`` to ``...``; required when ``m > 1``.
        maximize: Maximise (default) or minimise.
        num_restarts: L-BFGS-B starts per function.
        raw_samples: Size of the Sobol set the starts are chosen from.
        generator: ``torch.Generator`` for the function draws and the Sobol seed.
        options: Options for ``gen_candidates_scipy``.

    Returns:
        Candidates ``q x d`` inside ``bounds``.
    """
    _check_bounds(bounds, model.train_inputs[0].shape[-1])
    if isinstance(q, bool) or not isinstance(q, int) or q < 1:
        raise HyperparameterError(f"q must be a positive int, got {q!r}.")
    samples = model_function_samples(model, q, generator)
    gen_device = generator.device if generator is not None else "cpu"
    seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator, device=gen_device))
    X, _ = optimize_function_samples(
        samples, bounds, objective, maximize, num_restarts, raw_samples, seed, options
    )
    return X


__all__ = [
    "ModelFunctionSamples",
    "model_function_samples",
    "optimize_function_samples",
    "thompson_candidates",
]
