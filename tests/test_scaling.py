"""Sweeps: planning and columns, and what a reader sees of them (framebench.reports.scaling): throughput,
the crossover table with its tie rule, half-of-best efficiency, parallel speed-up and scaling.png,
on synthetic tables (no timing is asserted); then one tiny real sweep on digits through the CLI."""

from __future__ import annotations

import pandas as pd
import pytest

from framebench.core.config import Sweep, TrainConfig, resolve
from framebench.driver.plan import Matrix, plan
from framebench.errors import FrameBenchError
from framebench.reports.floors import with_efficiencies
from framebench.reports.scaling import (
    crossover,
    half_efficiency,
    parallel_speedup,
    positions,
    report_section,
    scaling_figure,
    throughput,
)
from framebench.reports.summary import summary
from framebench.store.job import Job
from framebench.store.reader import load_results
from framebench.store.schema import columns
from tests import tables
from tests.conftest import framebench

BATCHES = ["16", "64", "256"]


def run_row(
    backend: str,
    value: str,
    repeat: int,
    samples_per_s: float,
    *,
    efficiency=float("nan"),
    field="batch_size",
    floor_samples_per_s=1e6,
    **fields,
) -> dict:
    """A runs.csv row of run "sweep" over `field` at `value` (an epoch is 1000 samples), with the floor
    columns the reports add to it (framebench.reports.floors), which framebench.reports.scaling reads."""
    sweep = {"run_id": "sweep", "sweep_field": field, "sweep_value": value, "samples_per_epoch": 1000, "samples_per_s": samples_per_s}
    row = tables.run_row(backend=backend, repeat=repeat, epoch_s=1000 / samples_per_s, **sweep, **fields)
    return row | {"floor_epoch_s": 1000 / floor_samples_per_s, "efficiency": efficiency}


def table_of(rows: list[dict], order: list[str] = BATCHES) -> pd.DataFrame:
    return throughput(pd.DataFrame(rows), order)


# --- planning and columns -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, message",
    [
        ("seed=1,2", "cannot vary 'seed'"),
        ("batch_size=16,16", "distinct values"),
        ("batch_size=", "distinct values"),
    ],
)
def test_sweep_parse_rejects_what_it_cannot_sweep(text, message):
    with pytest.raises(FrameBenchError, match=message):
        Sweep.parse(text)


def test_sweep_parse_keeps_the_written_order_and_splits_hidden_on_semicolons():
    assert Sweep.parse("batch-size=256, 16,64") == Sweep("batch_size", ("256", "16", "64"))
    assert Sweep.parse("hidden=512,256;1024,512;128") == Sweep("hidden", ("512,256", "1024,512", "128"))
    assert Sweep.parse(None) == Sweep() and Sweep().values == ("",)


def test_sweep_apply_sets_the_field_and_validates():
    model, train = resolve("scaling", {}, {})
    sweep = Sweep.parse("hidden=64;32,16")
    assert sweep.apply(model, train, 2, "32,16")[0].hidden == (32, 16)
    assert Sweep.parse("threads=1,2").apply(model, train, 2, "1") == (model, train, 1)
    assert Sweep.parse("lr=0.1").apply(model, train, 2, "0.1")[1].lr == 0.1
    with pytest.raises(FrameBenchError, match="not a valid value"):
        Sweep.parse("batch_size=big").apply(model, train, 2, "big")
    with pytest.raises(FrameBenchError, match="batch_size must be positive"):
        Sweep.parse("batch_size=0").apply(model, train, 2, "0")


def test_scaling_preset_has_a_fixed_number_of_steps_per_epoch():
    _, train = resolve("scaling", {}, {})
    assert train.sampling == "with_replacement" and train.steps_per_epoch > 0
    assert TrainConfig.__dataclass_fields__["steps_per_epoch"].default == 0  # the fixed steps are the preset's alone


def test_every_table_row_carries_its_sweep_value():
    for table in ("runs", "epochs", "steps", "gemm"):
        assert "sweep_value" in columns(table)
    assert "sweep_field" in columns("runs")


def test_jobs_interleave_repeat_by_repeat_value_by_value_backend_by_backend():
    model, train = resolve("scaling", {}, {})
    template = Job(run_id="r", dataset="digits", data_dir=None, preset="scaling", config={}, threads=2, target_acc=0.9)
    matrix = Matrix({"backend": ["numpy", "jax"], "variant": ["default"], "device": ["cpu"], "seed": ["5"]}, repeats=2)
    jobs = plan([matrix], template, Sweep.parse("batch_size=64,16"), model, train)
    assert [(j.repeat, j.sweep_value, j.backend) for j in jobs] == [
        (r, v, b) for r in (0, 1) for v in ("64", "16") for b in ("numpy", "jax")
    ]
    assert all(j.config["train"]["batch_size"] == int(j.sweep_value) and j.sweep_field == "batch_size" for j in jobs)
    assert {j.seed for j in jobs} == {"5"}  # every repeat and value reruns the seed
    threads = plan([matrix], template, Sweep.parse("threads=1,2"), model, train)
    assert [j.threads for j in threads if j.repeat == 0] == [1, 1, 2, 2]


def test_summary_and_floors_are_per_sweep_value():
    runs = pd.DataFrame(
        [
            run_row("numpy", value, 0, 100.0)
            | {"node": "n", "gemm_library": "numpy", "batch_size": int(value), "median_epoch_s": 2.0, "samples_per_epoch": 100 * int(value)}
            for value in ("16", "64")
        ]
    ).drop(columns=["floor_epoch_s", "efficiency"])
    gemm = pd.DataFrame(
        [row for value, step_s in (("16", 0.001), ("64", 0.002)) for row in tables.gemm_rows("numpy", step_s, node="n", sweep_value=value)]
    )
    runs = with_efficiencies(runs.reindex(columns=columns("runs")), gemm)
    floors = runs.set_index("sweep_value")["floor_epoch_s"]
    assert floors["16"] == pytest.approx(0.001 * 100) and floors["64"] == pytest.approx(0.002 * 100)  # step time x 100 steps
    assert list(summary(runs)["sweep_value"]) == ["16", "64"]


# --- what a reader sees -------------------------------------------------------------------------


def test_throughput_is_the_median_over_repeats_of_latest_ok_attempts_in_the_swept_order():
    rows = [
        run_row("numpy", "64", 0, 100.0),
        run_row("numpy", "64", 1, 300.0),
        run_row("numpy", "64", 2, 200.0),
        run_row("numpy", "16", 0, 50.0, attempt=1),
        run_row("numpy", "16", 0, 70.0, attempt=2),
        run_row("numpy", "256", 0, 999.0, status="failed"),
    ]
    table = table_of(rows)
    assert list(table["sweep_value"]) == ["16", "64"]  # swept order, not the order rows arrived; failed runs give no point
    point = table.set_index("sweep_value").loc["64"]
    assert (point["runs_ok"], point["samples_per_s"], point["slowest_samples_per_s"], point["fastest_samples_per_s"]) == (
        3,
        200.0,
        100.0,
        300.0,
    )
    assert table.set_index("sweep_value").loc["16", "samples_per_s"] == 70.0  # the retry supersedes the first attempt
    assert point["floor_samples_per_s"] == pytest.approx(1e6)  # samples per epoch over the floor's epoch time


def test_crossover_names_the_leader_and_calls_overlapping_ranges_a_tie():
    rows = [run_row("numpy", "16", r, s) for r, s in ((0, 100.0), (1, 110.0))]
    rows += [run_row("torch", "16", r, s) for r, s in ((0, 90.0), (1, 105.0))]  # overlaps numpy's range: tie
    rows += [run_row("numpy", "64", r, s) for r, s in ((0, 200.0), (1, 210.0))]
    rows += [run_row("torch", "64", r, s) for r, s in ((0, 400.0), (1, 440.0))]  # clear lead
    rows += [run_row("jax", "256", 0, 500.0), run_row("numpy", "256", 0, 400.0)]  # a single repeat each
    table = crossover(table_of(rows)).set_index("sweep_value")
    assert (table.loc["16", "fastest"], table.loc["16", "runner_up"], table.loc["16", "verdict"]) == (
        "numpy/default",
        "torch/default",
        "tie",
    )
    assert table.loc["16", "lead"] == pytest.approx(105.0 / 97.5)
    assert (table.loc["64", "fastest"], table.loc["64", "verdict"]) == ("torch/default", "lead")
    assert table.loc["64", "lead"] == pytest.approx(420.0 / 205.0)
    assert table.loc["64", "its_slowest_repeat"] == 400.0 and table.loc["64", "its_fastest_repeat"] == 210.0
    assert table.loc["256", "verdict"] == "lead (1 repeat: no spread)"


def test_crossover_with_a_single_backend_has_no_runner_up():
    table = crossover(table_of([run_row("numpy", "16", 0, 100.0)]))
    assert table.iloc[0]["verdict"] == "only one ran" and table.iloc[0]["runner_up"] == "-"


def test_half_of_best_efficiency_is_the_first_value_reaching_it():
    rows = [run_row("numpy", v, 0, 1.0, efficiency=e) for v, e in zip(BATCHES, (0.1, 0.3, 0.5), strict=True)]
    rows += [run_row("jax", v, 0, 1.0, efficiency=e) for v, e in zip(BATCHES, (0.45, 0.8, 0.9), strict=True)]
    rows += [run_row("torch", v, 0, 1.0) for v in BATCHES]  # no floors: no efficiency, no row
    table = half_efficiency(table_of(rows), BATCHES).set_index("backend")
    assert (table.loc["numpy", "best_efficiency"], table.loc["numpy", "best_at"], table.loc["numpy", "half_of_best_at"]) == (
        0.5,
        "256",
        "64",
    )
    assert table.loc["jax", "half_of_best_at"] == "≤ 16"  # already above half at the smallest value swept
    assert "torch" not in table.index and set(table["values_measured"]) == {"3 of 3"}


def test_half_of_best_efficiency_claims_nothing_below_the_first_value_measured():
    rows = [run_row("numpy", "16", 0, 1.0), run_row("numpy", "64", 0, 1.0, efficiency=0.3), run_row("numpy", "256", 0, 1.0, efficiency=0.5)]
    row = half_efficiency(table_of(rows), BATCHES).iloc[0]
    assert (row["half_of_best_at"], row["values_measured"]) == ("≤ 64", "2 of 3")


def test_parallel_speedup_is_time_at_the_fewest_threads_over_time_at_n_beside_the_ideal():
    order = ["1", "2", "4"]
    rows = [run_row("numpy", v, 0, s, field="threads") for v, s in zip(order, (100.0, 180.0, 250.0), strict=True)]
    table = parallel_speedup(table_of(rows, order), order).set_index("threads")
    assert list(table["ideal"]) == [1.0, 2.0, 4.0]
    assert list(table["numpy (cpu)"]) == pytest.approx([1.0, 1.8, 2.5])


def test_positions_are_numbers_on_a_log_axis_or_the_order_swept():
    assert positions("batch_size", ["256", "16"]) == ([256.0, 16.0], True)
    assert positions("hidden", ["512,256", "1024"]) == ([768.0, 1024.0], True)  # a hidden value sits at its total width
    assert positions("hidden", ["512,256", "256,512"]) == ([0.0, 1.0], False)  # equal totals: evenly spaced instead
    assert positions("dropout", ["0.0", "0.5"]) == ([0.0, 1.0], False)  # zero has no place on a log axis


def test_scaling_figure_draws_throughput_floor_and_efficiency_log_log():
    rows = [
        run_row(b, v, r, s * (1 + r / 10), efficiency=s / 1e3)
        for b, f in (("numpy", 1.0), ("jax", 2.0))
        for v, s in zip(BATCHES, (100.0 * f, 300.0 * f, 600.0 * f), strict=True)
        for r in (0, 1)
    ]
    fig = scaling_figure(table_of(rows), "batch_size", BATCHES)
    left, right = fig.axes
    assert (left.get_xscale(), left.get_yscale(), right.get_xscale()) == ("log", "log", "log")
    assert [t.get_text() for t in left.get_xticklabels()] == BATCHES
    assert [line.get_label() for line in left.get_lines()] == ["numpy (cpu)", "jax (cpu)", "GEMM floor (cpu, fastest library)"]
    assert left.get_lines()[-1].get_linestyle() == "--"
    assert left.get_lines()[0].get_color() != left.get_lines()[1].get_color()  # each backend keeps its own colour
    assert list(right.get_lines()[0].get_ydata()) == pytest.approx([0.1, 0.3, 0.6]) and not right.texts


def test_scaling_figure_says_where_efficiencies_are_missing():
    rows = [run_row("numpy", "16", 0, 100.0), run_row("numpy", "64", 0, 300.0, efficiency=0.3)]
    right = scaling_figure(table_of(rows), "batch_size", BATCHES).axes[1]
    assert right.texts[0].get_text().startswith("no reliable efficiency at 16, 256\n")
    assert len(scaling_figure(table_of(rows[:1]), "batch_size", BATCHES).axes) == 1  # no efficiency at all: throughput only


def test_report_section_of_a_threads_sweep(tmp_path):
    order = ["1", "2"]
    speeds = {"numpy": (100.0, 150.0), "torch": (100.0, 120.5)}
    rows = [
        run_row(b, v, r, s, field="threads", efficiency=s / 300)
        for b in speeds
        for v, s in zip(order, speeds[b], strict=True)
        for r in (0, 1)
    ]
    tables = {"runs": pd.DataFrame(rows), "config": {"sweep": {"field": "threads", "values": order}}}
    text = "\n".join(report_section(tmp_path, tables))
    assert (tmp_path / "scaling.png").stat().st_size > 1000
    assert "![Throughput and efficiency against threads](scaling.png)" in text
    assert "| sweep_value | numpy (cpu) | torch (cpu) | GEMM floor (cpu) |\n|---|---|---|---|\n| 1 | 100 | 100 | 1000000 |" in text
    assert "| 1 | cpu | numpy/default | 100 | 100 | torch/default | 100 | 100 | 1 | tie |" in text
    assert "| 2 | cpu | numpy/default | 150 | 150 | torch/default | 120 | 120 | 1.245 | lead |" in text  # whole samples/s
    assert "| numpy | default | cpu | 0.5 | 2 | ≤ 1 |" in text
    assert "### Parallel speed-up" in text and "| 2 | 2 | 1.5 | 1.205 |" in text  # threads, ideal, each backend's


# --- a real sweep -------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_tiny_real_sweep_on_digits_writes_rows_per_value_and_the_report_section(tmp_path):
    result = framebench(
        "run",
        "--backends",
        "numpy",
        "--dataset",
        "digits",
        "--epochs",
        "2",
        "--sweep",
        "batch_size=32,64",
        "--no-floors",
        "--results-dir",
        str(tmp_path),
        "--run-id",
        "sweep",
    )
    assert result.returncode == 0, result.stderr
    tables = load_results(tmp_path / "sweep")
    runs, epochs = tables["runs"], tables["epochs"]
    assert list(zip(runs["sweep_field"], runs["sweep_value"], runs["batch_size"], runs["status"], strict=True)) == [
        ("batch_size", "32", 32, "ok"),
        ("batch_size", "64", 64, "ok"),
    ]
    assert epochs.groupby("sweep_value").size().to_dict() == {"32": 2, "64": 2}
    assert set(tables["steps"]["sweep_value"]) == {"32", "64"}
    report = (tmp_path / "sweep" / "report.md").read_text()
    assert "## Scaling over batch_size" in report and "(scaling.png)" in report and "| 32 | cpu | numpy/default |" in report
    assert "No efficiencies" in report  # --no-floors: nothing to divide by
    assert (tmp_path / "sweep" / "scaling.png").stat().st_size > 1000
