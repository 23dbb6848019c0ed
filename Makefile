PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
GPU_PINS := "tensorflow[and-cuda]==2.21.0" "jax[cuda12]==0.10.2" "torch==2.13.0" "keras==3.15.1" "ray==2.60.0" \
	"numpy==2.4.6" "pandas==3.1.1" "matplotlib==3.11.2" "scikit-learn==1.9.1" "threadpoolctl==3.8.0" \
	"pytest==9.2.0" "pytest-benchmark==5.3.1" "pytest-timeout==2.4.0" "ruff==0.17.6"

.PHONY: install install-gpu lock-gpu bench bench-gpu bench-steps bench-perf bench-scaling bench-versions lint test readme clean

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

bench:  ## the default preset (mlp) on every registered backend, on the CPU
	$(BIN)/framebench run --backends all --device cpu --preset mlp

bench-gpu:  ## the default preset on every backend, GPU and CPU side by side
	$(BIN)/framebench run --backends all --device cpu,gpu --preset mlp

bench-perf:  ## the speed study (every backend x variant on tutorial000, tutorial003, mlp) into results/perf/report.md
	$(BIN)/framebench perf --presets tutorial000,tutorial003,mlp --repeats 2 --epochs 3 --results-dir results/perf

bench-scaling:  ## throughput and efficiency against batch size, every backend: results/scaling (rerun: finishes or redraws it; delete its tables for a fresh one)
	$(BIN)/framebench run --preset scaling --backends all --variants default --sweep batch_size=16,64,256,1024,4096 --repeats 2 --results-dir results --run-id scaling

VERSIONS := $(BIN)/framebench run --preset ci --sampling with_replacement --steps-per-epoch 60 --epochs 3 --repeats 2 --no-floors --results-dir results --run-id versions --env base=

bench-versions:  ## one backend under two framework minors, interleaved: NumPy, JAX, TensorFlow (each against the lock) into results/versions
	rm -rf results/versions
	$(VERSIONS) --backends numpy --env numpy-2.3="numpy==2.3.5"
	$(VERSIONS) --backends jax,keras-jax --env jax-0.9="jax==0.9.2;jaxlib==0.9.2"
	$(VERSIONS) --backends tf,keras --env tf-2.20="tensorflow-cpu==2.20.0"

BENCH_STEPS := $(BIN)/python -m pytest benchmarks -q --benchmark-only --benchmark-autosave --benchmark-columns=min,median,max,rounds

bench-steps:  ## pytest-benchmark micro-benchmarks (train step, prediction) per backend; saved for --benchmark-compare
	$(BENCH_STEPS) --benchmark-storage=.benchmarks/main
	KERAS_BACKEND=torch $(BENCH_STEPS) -k keras-torch --benchmark-storage=.benchmarks/keras-torch
	KERAS_BACKEND=jax $(BENCH_STEPS) -k keras-jax --benchmark-storage=.benchmarks/keras-jax

lint:  ## ruff: lint and format check
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: lint  ## lint, then the test suite (needs MNIST and Fashion-MNIST: $$FRAMEBENCH_DATA_DIR, or the cache)
	$(BIN)/python -m pytest -q

readme:  ## README.md's example table, regenerated from results/example
	$(BIN)/framebench readme

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
