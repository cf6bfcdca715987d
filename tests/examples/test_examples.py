"""Every example runs with ``--smoke`` in a subprocess, exits 0 and prints what it promises.

The examples are user-facing scripts, so they are run the way a user runs them
(``python examples/NAME.py --smoke`` from the repository root), not imported.
Each check asserts on the printed output: the table headers and, where the
example computes something checkable, the value (finite-difference errors
small, the surrogate Ax used, the files written with ``--out``).

The subprocesses use one intra-op thread (``OMP_NUM_THREADS=1``, unless set
already): torch's default thread pool, competing with the test process and
other jobs on a small CI machine, makes these short runs several times slower.
The long-running examples are marked slow (they still run in CI).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"


def run_example(name: str, *args: str, timeout: int = 300) -> str:
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / f"{name}.py"), "--smoke", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, (
        f"{name} exited {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    )
    return proc.stdout


def floats_after(label: str, text: str) -> list[float]:
    return [float(v) for v in re.findall(re.escape(label) + r"\s*([-+0-9.eE]+)", text)]


def test_every_example_has_a_test_and_a_docstring():
    names = {p.stem for p in EXAMPLES.glob("*.py")}
    tested = {
        "quickstart",  # no --smoke: it is short already
        "botorch_loop",
        "ax_loop",
        "high_dimensional",
        "input_gradients",
        "constrained",
        "laplace_core",
        "custom_network",
    }
    assert names == tested
    for p in EXAMPLES.glob("*.py"):
        source = p.read_text()
        assert source.startswith('"""'), f"{p.name} has no module docstring"
        if p.stem != "quickstart":
            assert "--smoke" in source, f"{p.name} has no --smoke flag"


def test_quickstart():
    """The six posteriors print; inside the data [-1, 1] the band is narrower than outside it."""
    out = run_example("quickstart")
    assert "MAP network trained on n=60 points in [-1, 1]" in out and "true sin(3x)" in out
    rows = [line for line in out.splitlines() if line.startswith(("AllWeights()", "LastLayer()"))]
    assert len(rows) == 6
    for row in rows:
        widths = [float(v) for v in re.findall(r"±([0-9.]+)", row)]  # at x = -2, -1, 0, 0.5, 1, 2
        assert len(widths) == 6 and max(widths[2], widths[3]) < min(widths[0], widths[5])
    source = (EXAMPLES / "quickstart.py").read_text()
    assert "Run: ``make demo``" not in source and "examples/quickstart.py" in source


def test_laplace_core_writes_png_only_when_asked(tmp_path):
    out = run_example("laplace_core", "--out", str(tmp_path / "figs"))
    for structure in ("Full()", "Diagonal()", "Kron()", "Functional()"):
        assert f"AllWeights()           {structure}" in out
    assert "LastLayer()" in out and "WeightMask (top 10%)" in out
    # Full and Functional are the same exact-GGN posterior: identical tuned lml.
    rows = {line.split()[1]: line.split() for line in out.splitlines() if line.startswith("AllWeights()")}
    assert rows["Full()"][6] == rows["Functional()"][6]
    png = tmp_path / "figs" / "laplace_core.png"
    assert png.exists() and png.read_bytes()[:4] == b"\x89PNG"
    assert not list(EXAMPLES.glob("*.png"))


def test_custom_network():
    out = run_example("custom_network")
    assert "LastLayer()" in out and "WeightMask(convs + output)" in out and "AllWeights()" in out
    sizes = [
        int(line.split()[-7]) for line in out.splitlines() if line.startswith(("LastLayer", "Weight", "All"))
    ]
    assert sizes[0] < sizes[1] < sizes[2]  # S grows with the Bayesian subset


def test_input_gradients_match_finite_differences():
    out = run_example("input_gradients")
    errors = [float(line.split()[-1]) for line in out.splitlines() if "(3, " in line]
    assert len(errors) == 5 and max(errors) < 1e-5
    assert floats_after("the kernel mean's closed form: max rel. error", out)[0] < 1e-10
    assert floats_after("vs central differences", out)[0] < 1e-5
    assert "Thompson sampling loop" in out and "iter  2" in out


def test_constrained():
    out = run_example("constrained")
    assert "true constrained optimum" in out
    probs = floats_after("P(feasible)=", out)
    assert len(probs) == 2 and all(0.0 < p < 1.0 for p in probs)


@pytest.mark.slow
def test_botorch_loop():
    out = run_example("botorch_loop")
    assert re.search(r"laplace\s+iter\s+2", out) and re.search(r"gp\s+iter\s+2", out)
    assert "final best" in out


@pytest.mark.slow
def test_high_dimensional():
    out = run_example("high_dimensional")
    assert "LaplaceModel     60" in out and "SingleTaskGP     60" in out


@pytest.mark.slow
def test_ax_loop():
    pytest.importorskip("ax")
    out = run_example("ax_loop")
    assert "surrogate used by Ax: LaplaceModel (fitted on 7 points)" in out
    assert out.count("(laplace)") == 3
