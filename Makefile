PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DATA_DIR ?= $(if $(FRAMEBENCH_DATA_DIR),$(FRAMEBENCH_DATA_DIR),../shared/datasets)
export FRAMEBENCH_DATA_DIR := $(DATA_DIR)

.PHONY: install bench bench-gpu bench-steps bench-perf test clean

install:  ## create .venv with the pinned versions and framebench in editable mode
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements.lock
	$(BIN)/pip install --quiet --no-deps --no-build-isolation -e .

bench:  ## the default preset on every registered backend, on the CPU
	$(BIN)/framebench run --backends all --device cpu --preset mlp

bench-gpu:  ## the default preset on every backend, GPU and CPU side by side
	$(BIN)/framebench run --backends all --device cpu,gpu --preset mlp

test:  ## the test suite (needs the datasets: FRAMEBENCH_DATA_DIR or ../shared/datasets)
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache

BENCH_STEPS := $(BIN)/python -m pytest benchmarks -q --benchmark-only --benchmark-autosave --benchmark-columns=min,median,max,rounds

bench-steps:  ## pytest-benchmark micro-benchmarks (train step, prediction) per backend; saved for --benchmark-compare
	$(BENCH_STEPS) --benchmark-storage=.benchmarks/main
	KERAS_BACKEND=torch FRAMEBENCH_CONFORMANCE_ONLY=keras-torch $(BENCH_STEPS) --benchmark-storage=.benchmarks/keras-torch
	KERAS_BACKEND=jax FRAMEBENCH_CONFORMANCE_ONLY=keras-jax $(BENCH_STEPS) --benchmark-storage=.benchmarks/keras-jax

bench-perf:  ## the speed matrix (backends x variants on seed000, seed003, mlp) with floors and efficiencies
	$(BIN)/framebench perf --presets seed000,seed003,mlp --repeats 2 --epochs 3
