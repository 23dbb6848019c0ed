"""The NumPy backend learns real MNIST: preset tutorial002 for 2 epochs reaches >= 90% test accuracy."""

from __future__ import annotations

import pytest

from framebench.store.reader import load_results
from tests.conftest import framebench, printed_directory


@pytest.mark.slow
def test_numpy_tutorial002_reaches_ninety_percent_on_mnist(tmp_path):
    result = framebench(
        "run", "--backends", "numpy", "--preset", "tutorial002", "--epochs", "2", "--results-dir", str(tmp_path), "--no-floors"
    )
    assert result.returncode == 0, result.stderr
    runs = load_results(printed_directory(result))["runs"]
    assert runs["status"].tolist() == ["ok"] and runs["dataset"].tolist() == ["mnist"]
    assert runs["final_test_acc"][0] >= 0.90, runs.to_dict("records")
