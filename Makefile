# Two commands for a newcomer: `make demo` and `make test`.
# Both create the virtual environment in .venv on first use. torch is pinned by
# constraints.txt to the CPU build (an unpinned torch pulls several GB of CUDA).

PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed

.PHONY: demo test lint clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VENV)/bin/python -m pip install --quiet -c constraints.txt -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/labo demo

test: $(STAMP)
	$(VENV)/bin/python -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check labo tests examples benchmarks
	$(VENV)/bin/ruff format --check labo tests examples benchmarks

clean:
	rm -rf $(VENV)
