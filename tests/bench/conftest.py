import textwrap

import pytest

OBJECTIVES = '''
import math
import time


def sphere(x):
    """Maximum 0 at (0.3, ..., 0.3)."""
    return -sum((v - 0.3) ** 2 for v in x)


def slow_sphere(x):
    time.sleep(0.3)
    return -sum((v - 0.3) ** 2 for v in x)


CALLS = []


def interrupted_on_third_call(x):
    """Ctrl-C (KeyboardInterrupt) during its third call in this process, fine otherwise."""
    CALLS.append(x)
    if len(CALLS) == 3:
        raise KeyboardInterrupt
    return -sum((v - 0.3) ** 2 for v in x)


def flaky(x):
    """Raises left of 0.25, NaN between 0.25 and 0.5, fine elsewhere."""
    if x[0] < 0.25:
        raise RuntimeError("simulated crash")
    if x[0] < 0.5:
        return math.nan
    return -sum((v - 0.3) ** 2 for v in x)
'''


@pytest.fixture
def objectives(tmp_path, monkeypatch):
    """A module ``labo_test_objectives`` in tmp_path, importable (cwd and sys.path)."""
    (tmp_path / "labo_test_objectives.py").write_text(textwrap.dedent(OBJECTIVES))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    import importlib

    module = importlib.import_module("labo_test_objectives")
    yield module


@pytest.fixture
def fast_laplace(monkeypatch):
    """Short LaplaceModel fits inside the runner (the runner's logic, not the fit, is under test).

    A method's own options (e.g. ``laplace-lbfgs``'s optimizer) are kept; only the step
    budgets shrink. Each call's options are appended to the returned list.
    """
    from dataclasses import replace

    from labo.bench import runner
    from labo.surrogates import FitOptions, fit_laplace_model

    calls = []

    def fast(model, options=None):
        short = replace(
            options or FitOptions(),
            max_epochs_cold=150,
            max_epochs_warm=50,
            rounds_cold=1,
            hyper_steps_cold=20,
        )
        calls.append(short)
        return fit_laplace_model(model, short)

    monkeypatch.setattr(runner, "fit_laplace_model", fast)
    return calls
