"""Every backend trains real MNIST and Fashion-MNIST with the short `ci` preset and must meet the
checked-in accuracy thresholds (bench/reports/thresholds.csv), checked by `framebench check` itself."""

from __future__ import annotations

import pandas as pd
import pytest

from framebench.core import registry
from framebench.reports.thresholds import DEFAULT_FILE, load_thresholds, thresholds_text
from tests.conftest import framebench, printed_directory


@pytest.mark.slow
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


def test_the_shipped_file_is_exactly_what_the_generator_writes():
    """No hand-written line: the header and table are what `framebench thresholds` writes for its own commands."""
    text = DEFAULT_FILE.read_text()
    comments = [line for line in text.splitlines() if line.startswith("#")]
    measured = [line.removeprefix("#   ") for line in comments if line.startswith("#   ")]
    (command,) = [line.removeprefix("# Derived by: ") for line in comments if line.startswith("# Derived by: ")]
    table = pd.read_csv(DEFAULT_FILE, comment="#", dtype={"sweep_field": str, "sweep_value": str}, keep_default_na=False)
    assert measured and "min_test_acc" in table
    assert thresholds_text(table, command, measured) == text
