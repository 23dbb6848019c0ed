"""The machine a job ran on, as a results directory records it (machine.json: every node's Python,
libraries, CPU, cores, GPUs and kernel settings; the git commit and the command of each session):
what makes two timings comparable or not."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

from framebench.core.checkout import source_checkout
from framebench.store.metadata import node_records

LIBRARIES = ("numpy", "pandas", "scikit-learn", "threadpoolctl", "tensorflow", "tensorflow-cpu", "keras", "torch", "jax", "jaxlib", "ray")


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
        {
            **dict(zip(("name", "driver", "memory"), (part.strip() for part in line.split(",")), strict=False)),
            "cuda": cuda.group(1) if cuda else "",
        }
        for line in lines
    ]


KERNEL_ENV_VARS = ("OPENBLAS_CORETYPE", "MKL_CBWR", "MKL_ENABLE_INSTRUCTIONS", "DNNL_MAX_CPU_ISA", "TF_ENABLE_ONEDNN_OPTS", "XLA_FLAGS")


def kernel_settings() -> dict[str, str]:
    """Environment variables that choose which CPU kernels the libraries run (set ones only), and the
    instruction set NumPy's BLAS picked: OPENBLAS_CORETYPE, for one, can hold OpenBLAS to older
    kernels than the CPU has, which changes every GEMM floor."""
    from threadpoolctl import threadpool_info

    settings = {name: os.environ[name] for name in KERNEL_ENV_VARS if name in os.environ}
    for pool in threadpool_info():  # NumPy's own: whether SciPy's copy is loaded yet depends on what ran first
        if pool.get("user_api") == "blas" and "numpy" in Path(pool.get("filepath", "")).parent.name:
            settings[f"blas:{pool['internal_api']}"] = f"{pool.get('version')} {pool.get('architecture')}"
    return settings


def git_commit() -> str:
    """HEAD of the framebench checkout, with '+dirty' when tracked files have uncommitted changes
    (untracked files do not count: the results directory being written is one)."""
    root = source_checkout()
    if root is None:
        return "unknown (not an editable install)"
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=root, capture_output=True, text=True, check=True
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return commit + ("+dirty" if dirty.strip() else "")


def node_record(threads: int) -> dict:
    """What makes this machine's timings what they are; recorded per node in machine.json."""
    return {
        "python": sys.version.split()[0],
        "libraries": library_versions(),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "threads": threads,
        "os": platform.platform(),
        "machine": socket.gethostname(),
        "gpus": gpu_info(),
        "kernel_settings": kernel_settings(),
    }


def machine_record(threads: int, nodes: dict[str, dict], earlier: dict | None) -> dict:
    """machine.json: the driver's machine (where the tables were written) and every node's. Extending
    a directory (`earlier`, its machine record) keeps the nodes and commands recorded before: its earlier
    rows came from them."""
    session = {
        "git_commit": git_commit(),
        "command": " ".join(["framebench", *sys.argv[1:]]),
        "started_utc": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    if not earlier:
        return {**node_record(threads), **session, "nodes": nodes}
    sessions = earlier.get("earlier", []) + [{key: earlier.get(key) for key in session}]
    return {**node_record(threads), **session, "nodes": {**node_records(earlier), **nodes}, "earlier": sessions}
