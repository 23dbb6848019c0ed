"""The NumPy backend learns real MNIST: preset seed002 for 2 epochs reaches >= 90% test accuracy."""

from __future__ import annotations

import subprocess
import sys

from bench.results import load_results
from tests.conftest import DATA_DIR, REPO


def test_numpy_seed002_reaches_ninety_percent_on_mnist(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "bench", "run", "--backends", "numpy", "--preset", "seed002", "--epochs", "2",
         "--data-dir", DATA_DIR, "--results-dir", str(tmp_path), "--no-floors"],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr
    runs = load_results(result.stdout.strip().splitlines()[-1])["runs"]
    assert runs["status"].tolist() == ["ok"] and runs["dataset"].tolist() == ["mnist"]
    assert runs["final_test_acc"][0] >= 0.90, runs.to_dict("records")
