"""The BO loop through Ax: ``Surrogate(botorch_model_class=LaplaceModel)`` in an Ax ``Client``.

Ax picks the model class from a ``SurrogateSpec`` / ``ModelConfig``; importing
``labo.surrogates`` registers ``LaplaceModel`` with Ax's model-fitting
dispatcher (``labo/surrogates/ax_support.py``), so Ax fits it with
``fit_laplace_model`` instead of a GPyTorch marginal likelihood. Everything
else (Sobol initialisation, the acquisition function Ax chooses, the
transforms of the data) is Ax's default.

The loop minimises the Branin function over its usual box (minimum 0.3979),
with the generation strategy: ``--sobol`` Sobol trials, then BoTorch with the
Laplace surrogate. It prints each trial and checks at the end that the fitted
surrogate really was a ``LaplaceModel``. Replace ``LaplaceModel`` by
``SingleTaskGP`` in ``laplace_generation_strategy`` to get Ax's usual GP.

Ax builds a new surrogate for every trial, so each ``LaplaceModel`` is fitted
from scratch (a cold fit, about 2-3 s at these sizes): the warm start of the
plain BoTorch loop (``examples/botorch_loop.py``) is not available through Ax.

Needs ``ax-platform`` (in the ``dev`` extra of labo; it installs with the
torch pin of ``constraints.txt``).

Run: ``python examples/ax_loop.py`` (``--smoke`` for a 3-trial BoTorch phase).
"""

from __future__ import annotations

import argparse
import logging
import math

from ax.adapter.registry import Generators
from ax.api.client import Client
from ax.api.configs import RangeParameterConfig
from ax.generation_strategy.generation_node import GenerationStep
from ax.generation_strategy.generation_strategy import GenerationStrategy
from ax.generators.torch.botorch_modular.surrogate import SurrogateSpec
from ax.generators.torch.botorch_modular.utils import ModelConfig

from labo.surrogates import LaplaceModel  # importing labo.surrogates registers LaplaceModel with Ax


def branin(x1: float, x2: float) -> float:
    b, c, t = 5.1 / (4 * math.pi**2), 5 / math.pi, 1 / (8 * math.pi)
    return (x2 - b * x1**2 + c * x1 - 6) ** 2 + 10 * (1 - t) * math.cos(x1) + 10


def laplace_generation_strategy(n_sobol: int) -> GenerationStrategy:
    spec = SurrogateSpec(model_configs=[ModelConfig(botorch_model_class=LaplaceModel)])
    return GenerationStrategy(
        nodes=[
            GenerationStep(generator=Generators.SOBOL, num_trials=n_sobol),
            GenerationStep(
                generator=Generators.BOTORCH_MODULAR, num_trials=-1, generator_kwargs={"surrogate_spec": spec}
            ),
        ]
    )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="5 Sobol + 3 BoTorch trials (a CI check)")
    parser.add_argument("--sobol", type=int, default=None, help="number of Sobol trials")
    parser.add_argument("--trials", type=int, default=None, help="total number of trials")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--verbose", action="store_true", help="keep Ax's INFO log lines")
    args = parser.parse_args(argv)
    n_sobol = args.sobol or (5 if args.smoke else 8)
    n_trials = args.trials or (8 if args.smoke else 30)

    if not args.verbose:
        for name in [n for n in logging.root.manager.loggerDict if n.startswith("ax")]:
            logging.getLogger(name).setLevel(logging.WARNING)
    client = Client(random_seed=args.seed)
    client.configure_experiment(
        parameters=[
            RangeParameterConfig(name="x1", parameter_type="float", bounds=(-5.0, 10.0)),
            RangeParameterConfig(name="x2", parameter_type="float", bounds=(0.0, 15.0)),
        ]
    )
    client.configure_optimization(objective="-branin")  # Ax maximises "-branin", i.e. minimises branin
    client.set_generation_strategy(laplace_generation_strategy(n_sobol))

    best = math.inf
    for _ in range(n_trials):
        for index, params in client.get_next_trials(max_trials=1).items():
            value = branin(params["x1"], params["x2"])
            client.complete_trial(trial_index=index, raw_data={"branin": value})
            best = min(best, value)
            phase = "sobol" if index < n_sobol else "laplace"
            print(
                f"trial {index:2d} ({phase:7})  x1={params['x1']:7.3f}  x2={params['x2']:7.3f}  "
                f"branin={value:8.3f}  best={best:7.3f}"
            )
    # The generator of the current node holds the surrogate Ax fitted last.
    generator = client._generation_strategy.current_node.generator_specs[0].fitted_adapter.generator
    model = generator.surrogate.model
    print(f"surrogate used by Ax: {type(model).__name__} (fitted on {model.train_inputs[0].shape[0]} points)")
    print(f"best branin value {best:.4f} after {n_trials} trials (global minimum 0.3979)")
    if not isinstance(model, LaplaceModel):
        raise SystemExit("Ax did not use LaplaceModel")


if __name__ == "__main__":
    main()
