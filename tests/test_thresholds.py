"""Every backend trains real MNIST and Fashion-MNIST with the short `ci` preset and must meet the
checked-in accuracy thresholds (bench/thresholds.csv), checked by `framebench check` itself."""

from __future__ import annotations

import pytest

from framebench.core import registry
from framebench.reports.thresholds import DEFAULT_FILE, load_thresholds
from tests.conftest import framebench, printed_directory


@pytest.mark.parametrize("dataset", ["mnist", "fashion-mnist"])
def test_every_backend_meets_its_threshold(tmp_path, dataset):
    thresholds = load_thresholds(DEFAULT_FILE)
    listed = set(thresholds[(thresholds["preset"] == "ci") & (thresholds["dataset"] == dataset)]["backend"])
    backends = set(registry.backend_names())
    assert listed == backends, f"backends without a {dataset} threshold: {backends - listed}"
    run = framebench(
        "run", "--backends", "all", "--preset", "ci", "--dataset", dataset, "--results-dir", str(tmp_path), "--no-floors", timeout=1800
    )
    assert run.returncode == 0, run.stderr[-3000:]
    checked = framebench("check", printed_directory(run))
    assert checked.returncode == 0, checked.stdout
    assert "all runs meet their thresholds" in checked.stdout and "no threshold" not in checked.stdout
