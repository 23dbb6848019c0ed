"""Every backend trains real MNIST and Fashion-MNIST with the short `ci` preset and must meet the
checked-in accuracy thresholds (bench/thresholds.csv), checked by `framebench check` itself."""

from __future__ import annotations

import subprocess
import sys

import pytest

from bench.thresholds import DEFAULT_FILE, load_thresholds
from tests.conftest import DATA_DIR, REPO


@pytest.mark.parametrize("dataset", ["mnist", "fashion-mnist"])
def test_every_backend_meets_its_threshold(tmp_path, dataset):
    thresholds = load_thresholds(DEFAULT_FILE)
    listed = set(thresholds[(thresholds["preset"] == "ci") & (thresholds["dataset"] == dataset)]["backend"])
    from impls import REGISTRY

    assert listed == set(REGISTRY), f"backends without a {dataset} threshold: {set(REGISTRY) - listed}"
    run = subprocess.run([sys.executable, "-m", "bench", "run", "--backends", "all", "--preset", "ci", "--dataset", dataset,
                          "--data-dir", DATA_DIR, "--results-dir", str(tmp_path), "--no-floors"], cwd=REPO, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]
    directory = run.stdout.strip().splitlines()[-1]
    checked = subprocess.run([sys.executable, "-m", "bench", "check", directory], cwd=REPO, capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout
    assert "all runs meet their thresholds" in checked.stdout and "no threshold" not in checked.stdout
