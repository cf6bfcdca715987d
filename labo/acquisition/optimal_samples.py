"""Samples of the optimiser and optimum of a Laplace surrogate, for entropy-search methods.

BoTorch's ``get_optimal_samples`` draws GP sample paths (Matheron's rule), which
a ``LaplaceModel`` has no use for: the linearised Laplace posterior has its own
cheap function samples, ``f(x) + J(x)(θ_s − θ̂)`` with weights ``θ_s`` drawn from
the posterior; with the default exact kernel posterior (``FitOptions(posterior="kernel")``)
its Matheron samples (:class:`labo.surrogates.kernel_posterior.KernelFunctionSamples`).
Each sample is maximised over a shared Sobol candidate set (plus
the training inputs), which is what qJointEntropySearch and qPredictiveEntropySearch
need as ``optimal_inputs`` / ``optimal_outputs``.
"""

from __future__ import annotations

import torch
from botorch.utils.sampling import draw_sobol_samples
from torch import Tensor

from labo.acquisition.thompson import model_function_samples


def get_optimal_samples(
    model,
    bounds: Tensor,
    num_optima: int,
    num_candidates: int = 1024,
    maximize: bool = True,
    seed: int | None = None,
) -> tuple[Tensor, Tensor]:
    """Optimal inputs ``num_optima x d`` and outputs ``num_optima x 1`` of posterior samples.

    Args:
        model: A fitted single-output ``LaplaceModel``.
        bounds: ``2 x d`` box of the search space.
        num_optima: Number of posterior function samples (one optimum each).
        num_candidates: Size of the Sobol candidate set each sample is maximised on.
        maximize: Maximise (default) or minimise the samples.
        seed: Seed of the Sobol set and of the weight draws.
    """
    if model.num_outputs != 1:
        raise ValueError(f"get_optimal_samples needs a single-output model, got {model.num_outputs}.")
    cand = draw_sobol_samples(bounds=bounds, n=num_candidates, q=1, seed=seed).squeeze(-2).to(bounds)
    cand = torch.cat([cand, model.train_inputs[0].to(cand)])
    gen = None if seed is None else torch.Generator(device=cand.device).manual_seed(seed)
    with torch.no_grad():
        if getattr(model, "kernel_posterior", None) is not None:
            # the kernel's GP: Matheron samples (their draws use a CPU generator)
            cpu_gen = None if seed is None else torch.Generator().manual_seed(seed)
            y = model_function_samples(model, num_optima, cpu_gen)(cand)  # s x N x m
        else:
            X_tf = model.transform_inputs(cand)
            z = model.laplace.predictive_samples(X_tf, num_optima, gen, linearized=True)  # s x N x m
            y = model.y_mean + model.y_scale * z
            if hasattr(model, "outcome_transform"):
                y, _ = model.outcome_transform.untransform(y)
    y = y[..., 0]
    idx = y.argmax(-1) if maximize else y.argmin(-1)
    return cand[idx], y.gather(-1, idx.unsqueeze(-1))
