"""LaplaceModel inside an Ax Client loop (Surrogate(botorch_model_class=LaplaceModel)).

Skipped when ax-platform is not installed (it is in the ``dev`` extra).
"""

import pytest

ax = pytest.importorskip("ax")

from ax.adapter.registry import Generators  # noqa: E402
from ax.api.client import Client  # noqa: E402
from ax.api.configs import RangeParameterConfig  # noqa: E402
from ax.generation_strategy.generation_node import GenerationStep  # noqa: E402
from ax.generation_strategy.generation_strategy import GenerationStrategy  # noqa: E402
from ax.generators.torch.botorch_modular.surrogate import SurrogateSpec  # noqa: E402
from ax.generators.torch.botorch_modular.utils import ModelConfig  # noqa: E402

from labo.surrogates import LaplaceModel  # noqa: E402


def branin_like(x1, x2):
    return (x2 - 0.13 * x1**2 + 1.6 * x1 - 6) ** 2 + 10 * (1 - 0.04) * __import__("math").cos(x1) + 10


@pytest.mark.slow
def test_ax_client_loop_with_laplace_model():
    client = Client()
    client.configure_experiment(
        parameters=[
            RangeParameterConfig(name="x1", parameter_type="float", bounds=(-5.0, 10.0)),
            RangeParameterConfig(name="x2", parameter_type="float", bounds=(0.0, 15.0)),
        ]
    )
    client.configure_optimization(objective="-f")
    spec = SurrogateSpec(model_configs=[ModelConfig(botorch_model_class=LaplaceModel)])
    gs = GenerationStrategy(
        nodes=[
            GenerationStep(generator=Generators.SOBOL, num_trials=5),
            GenerationStep(
                generator=Generators.BOTORCH_MODULAR,
                num_trials=-1,
                generator_kwargs={"surrogate_spec": spec},
            ),
        ]
    )
    client.set_generation_strategy(gs)
    for _ in range(8):
        for index, params in client.get_next_trials(max_trials=1).items():
            client.complete_trial(trial_index=index, raw_data={"f": branin_like(params["x1"], params["x2"])})
    trials = client._experiment.trials
    assert len(trials) == 8
    # the BoTorch step really used a LaplaceModel
    node = client._generation_strategy.current_node
    model = node.generator_specs[0].fitted_adapter.generator.surrogate.model
    assert isinstance(model, LaplaceModel)
    assert model.is_fitted and model.train_inputs[0].shape[0] == 7
