"""Every Python snippet of README.md and docs/guide.md runs, as a reader would paste it.

The snippets of one section (a ``## `` heading) run in order in one fresh
interpreter, so a snippet may use the names of an earlier snippet of its own
section (README's Thompson-sampling lines continue its BoTorch snippet) and
nothing else: each section is self-contained. Only fenced ```` ```python ````
blocks run; shell blocks and indented formulas do not. One intra-op thread, as
for the examples.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = ("README.md", "docs/guide.md")


def python_sections(text: str) -> dict[str, str]:
    """``{section heading: its python snippets joined in order}`` for sections that have any."""
    sections: dict[str, list[str]] = {}
    heading = "(top)"
    for part in re.split(r"^(## .*)$", text, flags=re.MULTILINE):
        if part.startswith("## "):
            heading = part[3:].strip()
            continue
        blocks = re.findall(r"^```python\n(.*?)^```", part, flags=re.MULTILINE | re.DOTALL)
        if blocks:
            sections.setdefault(heading, []).extend(blocks)
    return {h: "\n".join(blocks) for h, blocks in sections.items()}


SNIPPETS = [(doc, h, code) for doc in DOCS for h, code in python_sections((ROOT / doc).read_text()).items()]


def test_the_snippets_are_found():
    found = {(doc, h) for doc, h, _ in SNIPPETS}
    assert ("README.md", "The Laplace core in a few lines") in found
    assert ("README.md", "With BoTorch: swap `SingleTaskGP` for `LaplaceModel`") in found
    assert ("docs/guide.md", "How hyperparameters are refit in a BO loop") in found
    botorch = dict(((doc, h), code) for doc, h, code in SNIPPETS)[
        ("README.md", "With BoTorch: swap `SingleTaskGP` for `LaplaceModel`")
    ]
    assert "fit_laplace_model(model)" in botorch and "thompson_candidates" in botorch


@pytest.mark.parametrize("doc, heading, code", SNIPPETS, ids=[f"{d}: {h}" for d, h, _ in SNIPPETS])
def test_snippet_runs(doc, heading, code, tmp_path):
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, f"{doc}, section {heading!r}:\n{code}\n{proc.stderr[-3000:]}"
