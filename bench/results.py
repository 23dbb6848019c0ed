"""Result tables: append-only CSVs written row by row as runs progress, plus their metadata.

A results directory holds runs.csv, epochs.csv, steps.csv, config.json and env.json. Rows are
appended (never rewritten) the moment they are measured, so a crash loses nothing already written.
"""

from __future__ import annotations

import csv
import importlib.metadata
import json
import os
import platform
import re
import shutil
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from bench.errors import FrameBenchError

RUN_KEYS = ["run_id", "backend", "variant", "device", "dataset", "preset", "repeat", "seed"]
RUNS_COLUMNS = RUN_KEYS + [
    "status", "error", "epochs_done", "setup_s", "first_epoch_s", "median_epoch_s", "total_train_s",
    "samples_per_s", "final_test_acc", "final_test_loss", "target_acc", "time_to_target_s", "floor_epoch_s",
    "efficiency", "own_floor_epoch_s", "overhead_efficiency", "peak_rss_mb", "peak_gpu_mb", "framework_version", "threads",
]
EPOCHS_COLUMNS = RUN_KEYS + ["epoch", "epoch_s", "train_loss", "test_loss", "test_acc", "eval_s"]
STEPS_COLUMNS = ["run_id", "backend", "variant", "device", "repeat", "epoch", "step", "loss"]
GEMM_COLUMNS = ["library", "device", "threads", "kind", "layer", "m", "k", "n", "seconds", "gflops"]
TABLES = {"runs": RUNS_COLUMNS, "epochs": EPOCHS_COLUMNS, "steps": STEPS_COLUMNS, "gemm": GEMM_COLUMNS}
LIBRARIES = ("numpy", "pandas", "scikit-learn", "threadpoolctl", "tensorflow", "tensorflow-cpu", "keras", "torch", "jax", "jaxlib")


def new_run_id() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")


def append_rows(directory: Path, table: str, rows: list[dict]) -> None:
    """Append `rows` to `table`.csv, writing the header only when the file is new."""
    path = directory / f"{table}.csv"
    is_new = not path.exists()
    with path.open("a", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=TABLES[table], extrasaction="raise")
        if is_new:
            writer.writeheader()
        writer.writerows(rows)
        handle.flush()
        os.fsync(handle.fileno())


def write_json(directory: Path, name: str, data: dict) -> None:
    """Write metadata once; a second run appending to the same directory keeps the first copy."""
    path = directory / name
    if not path.exists():
        path.write_text(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def load_results(directory: str | Path) -> dict[str, pd.DataFrame]:
    """Read a results directory back: {'runs', 'epochs', 'steps'} DataFrames plus 'config' and 'env' dicts."""
    directory = Path(directory)
    if not (directory / "runs.csv").exists():
        raise FrameBenchError(f"{directory} is not a results directory (no runs.csv); pass the folder `framebench run` printed")
    tables: dict = {}
    for table, columns in TABLES.items():
        path = directory / f"{table}.csv"
        tables[table] = pd.read_csv(path, keep_default_na=False, na_values=[""]) if path.exists() else pd.DataFrame(columns=columns)
    for name in ("config", "env"):
        path = directory / f"{name}.json"
        tables[name] = json.loads(path.read_text()) if path.exists() else {}
    return tables


def library_versions() -> dict[str, str]:
    versions = {}
    for library in LIBRARIES:
        try:
            versions[library] = importlib.metadata.version(library)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def gpu_info() -> list[dict]:
    """Name, driver and memory of each NVIDIA GPU nvidia-smi sees; empty without one."""
    if not shutil.which("nvidia-smi"):
        return []
    query = ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"]
    try:
        lines = subprocess.run(query, capture_output=True, text=True, timeout=20, check=True).stdout.strip().splitlines()
        banner = subprocess.run(["nvidia-smi"], capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    cuda = re.search(r"CUDA Version:\s*([\d.]+)", banner)
    return [
        {**dict(zip(("name", "driver", "memory"), (part.strip() for part in line.split(",")))), "cuda": cuda.group(1) if cuda else ""}
        for line in lines
    ]


KERNEL_ENV_VARS = ("OPENBLAS_CORETYPE", "MKL_CBWR", "MKL_ENABLE_INSTRUCTIONS", "DNNL_MAX_CPU_ISA", "TF_ENABLE_ONEDNN_OPTS", "XLA_FLAGS")


def kernel_settings() -> dict[str, str]:
    """Environment variables that choose which CPU kernels the libraries run (set ones only), and
    the instruction set NumPy's BLAS picked: on this project's machine OPENBLAS_CORETYPE=Haswell
    holds OpenBLAS to AVX2 kernels on an AVX-512 CPU, which costs NumPy 40% of its GEMM speed."""
    from threadpoolctl import threadpool_info

    settings = {name: os.environ[name] for name in KERNEL_ENV_VARS if name in os.environ}
    for pool in threadpool_info():
        if pool.get("user_api") == "blas":
            settings[f"blas:{pool['internal_api']}"] = f"{pool.get('version')} {pool.get('architecture')}"
    return settings


def git_commit() -> str:
    """HEAD of the framebench checkout, with '+dirty' when tracked files have uncommitted changes
    (untracked files do not count: the results directory being written is one)."""
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root, capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return commit + ("+dirty" if dirty.strip() else "")


def environment(threads: int) -> dict:
    return {
        "python": sys.version.split()[0],
        "libraries": library_versions(),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "threads": threads,
        "os": platform.platform(),
        "machine": platform.node(),
        "gpus": gpu_info(),
        "kernel_settings": kernel_settings(),
        "git_commit": git_commit(),
        "command": " ".join(sys.argv),
        "started_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
