"""`python tools/locks.py REPORT LOCK`: write a lock file from `pip install --dry-run --report`,
so requirements-gpu.lock is exactly what pip resolved against the registry (`make lock-gpu`)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

HEADER = """# The GPU environment `make install-gpu` builds: CUDA builds of TensorFlow (tensorflow[and-cuda], CUDA 12
# libraries), JAX (jax[cuda12]) and PyTorch (PyPI's torch==2.13.0, CUDA 13 libraries) in one environment.
# pip resolves the three together: their NVIDIA libraries are separate packages per CUDA major version
# (nvidia-*-cu12 beside nvidia-*), so they co-resolve; every job runs in its own process with one framework
# (Keras's tutorial variant on torch also imports TensorFlow, for its tf.data pipeline on the host).
# Resolved against PyPI, with this machine's pip settings ignored, by:
#   make lock-gpu   (pip --isolated install --dry-run --ignore-installed --report ... $(GPU_PINS))
"""


def lock_lines(report: dict) -> list[str]:
    return sorted((f"{item['metadata']['name']}=={item['metadata']['version']}" for item in report["install"]), key=str.lower)


def main() -> None:
    report_path, lock_path = sys.argv[1:3]
    Path(lock_path).write_text(HEADER + "\n".join(lock_lines(json.loads(Path(report_path).read_text()))) + "\n")


if __name__ == "__main__":
    main()
