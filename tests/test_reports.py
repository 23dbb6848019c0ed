"""Reports people read: figures and report.md, `compare` (with its regression rules and
environment checks), `check` against thresholds, and `thresholds` deriving them."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pandas as pd
import pytest

from bench.results import load_results
from tests.conftest import REPO


def framebench(*args):
    return subprocess.run([sys.executable, "-m", "bench", *args], cwd=REPO, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def measured(tmp_path_factory):
    """Two repeats of numpy and jax on digits: a real, small results directory."""
    parent = tmp_path_factory.mktemp("results")
    result = framebench("run", "--backends", "numpy,jax", "--dataset", "digits", "--epochs", "4", "--repeats", "2",
                        "--results-dir", str(parent), "--run-id", "base")
    assert result.returncode == 0, result.stderr
    return parent / "base"


def edited_copy(source, target, *, runs=None, env=None):
    shutil.copytree(source, target)
    if runs:
        table = pd.read_csv(target / "runs.csv")
        runs(table)
        table.to_csv(target / "runs.csv", index=False)
    if env:
        data = json.loads((target / "env.json").read_text())
        env(data)
        (target / "env.json").write_text(json.dumps(data))
    return target


def test_run_writes_figures_and_a_report_that_plot_redraws(measured):
    for name in ("loss.png", "accuracy.png", "epoch_time.png", "report.md"):
        assert (measured / name).stat().st_size > 1000
    (measured / "loss.png").unlink()
    assert framebench("plot", str(measured)).returncode == 0
    assert (measured / "loss.png").exists()
    report = (measured / "report.md").read_text()
    assert "| numpy | default | cpu | 2 |" in report and "![Steady-state epoch time per backend](epoch_time.png)" in report
    assert "speedup.png" not in report  # no GPU rows, no GPU-vs-CPU figure


def test_compare_identical_runs_finds_no_regression(measured, tmp_path):
    markdown = tmp_path / "compare.md"
    result = framebench("compare", str(measured), str(measured), "--markdown", str(markdown))
    assert result.returncode == 0, result.stdout
    assert "no regression" in result.stdout and "| numpy | default | cpu | digits | mlp |" in markdown.read_text()


def test_compare_flags_an_accuracy_drop(measured, tmp_path):
    def lower(table):
        table.loc[table["backend"] == "jax", "final_test_acc"] -= 0.02

    new = edited_copy(measured, tmp_path / "new", runs=lower)
    result = framebench("compare", str(measured), str(new))
    assert result.returncode == 1 and "REGRESSION: accuracy" in result.stdout and "1 regression(s)" in result.stdout


def test_compare_flags_time_only_beyond_tolerance_and_spread(measured, tmp_path):
    def slower(table):
        table["median_epoch_s"] *= 3

    def within_spread(table):
        table["median_epoch_s"] *= 1.05

    assert framebench("compare", str(measured), str(edited_copy(measured, tmp_path / "slow", runs=slower))).returncode == 1
    assert framebench("compare", str(measured), str(edited_copy(measured, tmp_path / "same", runs=within_spread))).returncode == 0


def test_compare_refuses_timings_across_machines_unless_allowed(measured, tmp_path):
    def other_machine(env):
        env["cpu"] = "Some Other CPU"

    def slower(table):
        table["median_epoch_s"] *= 3

    new = edited_copy(measured, tmp_path / "other", runs=slower, env=other_machine)
    refused = framebench("compare", str(measured), str(new))
    assert refused.returncode == 0 and "environment differs: cpu" in refused.stdout and "--allow-env-diff" in refused.stdout
    allowed = framebench("compare", str(measured), str(new), "--allow-env-diff")
    assert allowed.returncode == 1 and "REGRESSION: time" in allowed.stdout


def test_check_names_the_backend_the_figure_and_the_threshold(measured, tmp_path):
    derived = tmp_path / "thresholds.csv"
    assert framebench("thresholds", str(measured), "--margin", "0.01", "--output", str(derived)).returncode == 0
    table = pd.read_csv(derived, comment="#")
    runs = load_results(measured)["runs"]
    assert (table["min_test_acc"] - (runs.groupby("backend")["final_test_acc"].min().loc[table["backend"]].values - 0.01)).abs().max() < 1e-4
    assert framebench("check", str(measured), "--thresholds", str(derived)).returncode == 0
    table.loc[table["backend"] == "jax", "min_test_acc"] = 0.999
    table.to_csv(derived, index=False)
    result = framebench("check", str(measured), "--thresholds", str(derived))
    assert result.returncode == 1
    assert "FAIL: jax/default on cpu (mlp, digits, 4 epochs, repeat 1): test accuracy 0.9" in result.stdout
    assert "< threshold 0.9990" in result.stdout


def test_check_without_thresholds_file_is_a_one_line_error(measured, tmp_path):
    result = framebench("check", str(measured), "--thresholds", str(tmp_path / "none.csv"))
    assert result.returncode == 2 and result.stderr.startswith("error: no thresholds file")


def test_floors_and_efficiencies_come_from_gemms_timed_in_the_same_run(measured):
    tables = load_results(measured)
    gemm_table, runs = tables["gemm"], tables["runs"].set_index(["backend", "repeat"])
    assert {"numpy", "jax"} <= set(gemm_table["library"]) and set(gemm_table["threads"]) == {runs["threads"].iloc[0]}
    sizes, batch = (64, 512, 256, 10), 128
    expected_kinds = {"forward": 3, "weight_grad": 3, "input_grad": 2}
    numpy_rows = gemm_table[gemm_table["library"] == "numpy"]
    assert numpy_rows["kind"].value_counts().to_dict() == expected_kinds
    own = {f"{r.m}x{r.k}x{r.n}": r.seconds for r in numpy_rows.itertuples()}
    best = gemm_table.groupby(["m", "k", "n"])["seconds"].min()
    best = {f"{m}x{k}x{n}": s for (m, k, n), s in best.items()}
    from bench.gemm import floor_epoch_s

    run = runs.loc[("numpy", 0)]
    assert run["own_floor_epoch_s"] == pytest.approx(floor_epoch_s(own, sizes, batch, 1438))
    assert run["floor_epoch_s"] == pytest.approx(floor_epoch_s(best, sizes, batch, 1438))
    assert run["floor_epoch_s"] <= run["own_floor_epoch_s"]
    assert run["efficiency"] == pytest.approx(run["floor_epoch_s"] / run["median_epoch_s"])
    assert run["overhead_efficiency"] == pytest.approx(run["own_floor_epoch_s"] / run["median_epoch_s"])
    assert 0 < run["efficiency"] <= run["overhead_efficiency"] < 1.5


def test_epoch_flops_follow_the_stated_formula():
    from bench.gemm import epoch_flops

    # forward 2N(784*512 + 512*10), weight gradients the same, input gradient of layer 2 only: 2N*512*10
    assert epoch_flops((784, 512, 10), 100) == 2 * 100 * (2 * (784 * 512 + 512 * 10) + 512 * 10)
