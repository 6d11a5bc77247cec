# One command sets up and runs the main job (`make study`); one sets up and runs the tests (`make test`).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.setup-stamp
export RAY_USAGE_STATS_ENABLED := 0
export MPLBACKEND := Agg
export PYTHONUNBUFFERED := 1

.PHONY: setup test chaos study bench positive-control clean

setup: $(STAMP)

# CPU torch first, from the local wheel: a bare `torch` requirement would pull a multi-GB CUDA build.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

test: setup
	$(PY) -m pytest -m "not chaos or fast" -q

chaos: setup
	$(PY) -m pytest -m chaos -q

study: setup
	$(PY) -m study.run --space grokking --name grokking-demo --trials 8 --epochs 120 --concurrency 2 --resume

bench: setup
	$(PY) -m tvae.bench --threads 1

# The modular-addition study known to grok (docs/positive-control.md), then its report.
positive-control: setup
	$(PY) -m study.run --space modular_addition --name positive-control --trials 8 --resume
	$(PY) -m analysis.report results/positive-control

clean:
	rm -rf $(VENV) .pytest_cache
