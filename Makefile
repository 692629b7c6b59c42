# Quick start: `make demo` and `make test` on a fresh machine.
PYTHON ?= python3
VENV := .venv
PIP := $(VENV)/bin/python -m pip
TORCH_PIN := torch==2.13.0
DEMO_OUT ?= demo_output

.PHONY: demo test lint docs benchmarks clean

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip
	# torch first and pinned: a loose requirement would pull a multi-GB CUDA build
	$(PIP) install $(TORCH_PIN)

$(VENV)/.core: $(VENV)/bin/python pyproject.toml
	$(PIP) install $(TORCH_PIN) -e .
	touch $@

$(VENV)/.dev: $(VENV)/bin/python pyproject.toml
	$(PIP) install $(TORCH_PIN) -e ".[dev,pertpy,docs]"
	touch $(VENV)/.core $@

demo: $(VENV)/.core
	$(VENV)/bin/scmech demo --out $(DEMO_OUT) --overwrite

test: $(VENV)/.dev
	MPLBACKEND=agg $(VENV)/bin/python -m pytest -n 2 --dist loadgroup -q

lint: $(VENV)/.dev
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks

docs: $(VENV)/.dev
	$(VENV)/bin/sphinx-build -W --keep-going -b html docs docs/_build/html

benchmarks: $(VENV)/.dev
	$(VENV)/bin/python benchmarks/model_claims.py
	$(VENV)/bin/python benchmarks/paper_claim.py
	$(VENV)/bin/python benchmarks/accuracy.py

clean:
	rm -rf $(VENV) docs/_build $(DEMO_OUT)
