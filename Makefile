PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
GPU_PINS := "tensorflow[and-cuda]==2.21.0" "jax[cuda12]==0.10.2" "torch==2.13.0" "keras==3.15.1" "ray==2.60.0" \
	"numpy==2.4.6" "pandas==3.1.1" "matplotlib==3.11.2" "scikit-learn==1.9.1" "threadpoolctl==3.8.0" \
	"pytest==9.2.0" "pytest-benchmark==5.3.1" "pytest-timeout==2.4.0" "pytest-xdist==3.8.0" "ruff==0.17.6"

.PHONY: install install-gpu lock-gpu data bench bench-gpu bench-steps bench-perf bench-scaling bench-history bench-gate bench-precision bench-versions bench-convergence lint test test-fast readme clean

install:  ## .venv with the pinned CPU versions (requirements.lock, torch's CPU build) + framebench, editable
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements.lock
	$(BIN)/pip install --quiet --no-deps -r requirements-torch-cpu.lock
	$(BIN)/pip install --quiet --no-deps --no-build-isolation -e .

install-gpu:  ## .venv with the CUDA builds of TensorFlow, JAX and PyTorch (requirements-gpu.lock; Linux x86_64, NVIDIA driver)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements-gpu.lock
	$(BIN)/pip install --quiet --no-deps --no-build-isolation -e .

lock-gpu:  ## re-resolve requirements-gpu.lock against PyPI (the three CUDA stacks must co-resolve) with local pip settings ignored
	$(BIN)/pip --isolated install --dry-run --ignore-installed --quiet --report gpu-resolution.json $(GPU_PINS)
	$(BIN)/python tools/locks.py gpu-resolution.json requirements-gpu.lock
	rm gpu-resolution.json

data:  ## MNIST and Fashion-MNIST verified where found ($$FRAMEBENCH_DATA_DIR, the cache), else downloaded into the cache ($$FRAMEBENCH_DATA_MIRROR first)
	$(BIN)/framebench data

bench: data  ## the default preset (mlp) on every registered backend, on the CPU
	$(BIN)/framebench run --backends all --device cpu --preset mlp

bench-gpu: data  ## a GPU machine's one prepared run (< 10 min): every default backend on the GPU at fp32, tf32, bf16 and fp16: results/gpu
	$(BIN)/framebench run --backends all --variants default --device gpu --precision fp32,tf32,bf16,fp16 --preset mlp --epochs 3 \
		--timeout 120 --results-dir results --run-id gpu

bench-perf: data  ## the speed study (every backend x variant on tutorial000, tutorial003, mlp) into results/perf/report.md
	$(BIN)/framebench study perf

bench-scaling: data  ## throughput and efficiency against batch size, every backend: results/scaling (rerun: finishes or redraws it; delete its tables for a fresh one)
	$(BIN)/framebench study scaling

bench-history: data  ## a small real history (8 runs; from h05 on one thread instead of two: the step), published to results/history/site + screenshot
	$(BIN)/framebench study history

bench-gate:  ## the gate measured, lockstep beside separate runs: false alarms (A/A quiet, busy, intermittent) and power (+2..20%): results/gate/report.md (hours; rerun resumes)
	$(BIN)/framebench study gate --rounds 60 --budget-min 900

bench-precision: data  ## fp32 against bf16 on every backend, one thread, at batch 128 (mlp), 1024 and 4096, each with its op profile: results/precision/report.md (rerun: finishes or redraws)
	$(BIN)/framebench study precision

bench-versions: data  ## one backend under two framework minors, interleaved: NumPy, JAX, TensorFlow (each against the lock) into results/versions
	$(BIN)/framebench study versions

bench-convergence: data  ## RCPs, MLPerf's convergence check of every backend and AlgoPerf profiles over ci (MNIST, Fashion-MNIST) and tutorial003, 10 seeds, and a mislearning backend: results/convergence (quiet machine: the profile in seconds)
	$(BIN)/framebench study convergence

BENCH_STEPS := $(BIN)/python -m pytest benchmarks -q --benchmark-only --benchmark-autosave --benchmark-columns=min,median,max,rounds

bench-steps: data  ## pytest-benchmark micro-benchmarks (train step, prediction) per backend; saved for --benchmark-compare
	$(BENCH_STEPS) --benchmark-storage=.benchmarks/main
	KERAS_BACKEND=torch $(BENCH_STEPS) -k keras-torch --benchmark-storage=.benchmarks/keras-torch
	KERAS_BACKEND=jax $(BENCH_STEPS) -k keras-jax --benchmark-storage=.benchmarks/keras-jax

lint:  ## ruff: lint and format check
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: test-fast  ## lint, the datasets, the fast tier (make test-fast), then the slow tier one test at a time: what CI runs
	$(BIN)/python -m pytest -q -m slow

test-fast: lint data  ## lint, the datasets (make data), then every test not marked slow, on up to 4 processes (pytest-xdist): the edit-test loop
	$(BIN)/python -m pytest -q -m "not slow" -n auto --maxprocesses 4

readme:  ## the generated tables: README.md's example results (from results/example), docs/backends.md's backends (from the registry)
	$(BIN)/framebench readme

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
