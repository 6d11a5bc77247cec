# One command sets up and runs the main job (`make study`); one sets up and runs the tests (`make test`).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.setup-stamp
export RAY_USAGE_STATS_ENABLED := 0
export MPLBACKEND := Agg
export PYTHONUNBUFFERED := 1

.PHONY: setup test chaos study bench gpu-check positive-control clean

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

# On a GPU machine (its own python3 with torch; no venv): the CUDA tests, the single-run bench, the cohort bench
# at growing K in each way of running its steps (graph form replayed as CUDA graphs, the default; graph form as
# plain calls; eager) with GPU memory per member (6 timed epochs for the replays: the first structure and the
# first geometry epoch capture their graphs, the other four replay them), and one 100-epoch quality cohort of
# seeds 0-2 (meant to take about 5 minutes on one H100; not yet run).
GPU_PY ?= python3
gpu-check:
	$(GPU_PY) -m pytest -q -p no:cacheprovider tests/test_tvae_cuda.py tests/test_cohort.py -k "cuda"
	$(GPU_PY) -m tvae.bench --device cuda --epochs 6
	$(GPU_PY) -m tvae.bench --device cuda --epochs 6 --population 1,8,64,256,512 --single
	$(GPU_PY) -m tvae.bench --device cuda --epochs 2 --population 1,8,64 --no-cuda-graphs
	$(GPU_PY) -m tvae.bench --device cuda --epochs 2 --population 1,8 --cohort-steps eager
	rm -rf /tmp/gpu-quality && $(GPU_PY) -m tvae.train --device cuda --epochs 100 --seeds 0,1,2 --out /tmp/gpu-quality --quiet
	$(GPU_PY) -m tvae.cohort.quality /tmp/gpu-quality

# The modular-addition study known to grok (docs/positive-control.md), then its report.
positive-control: setup
	$(PY) -m study.run --space modular_addition --name positive-control --trials 8 --resume
	$(PY) -m analysis.report results/positive-control

clean:
	rm -rf $(VENV) .pytest_cache
