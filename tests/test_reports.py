"""Reports people read: figures and report.md, the floors and efficiencies, `compare` (its regression
rules, refusals and exit codes), `check` against thresholds and `thresholds` deriving them.

The arithmetic is tested on synthetic tables written here, never on real timings, so a busy machine
cannot fail (or pass) these tests; one small real run checks that the report is drawn from real tables.
"""

from __future__ import annotations

import io
import json
import math
import os

import pandas as pd
import pytest

from framebench.core.flops import step_gemms
from framebench.errors import FrameBenchError
from framebench.reports.compare import version_notes
from framebench.reports.floors import MAX_CREDIBLE_EFFICIENCY, PROBE_DISAGREEMENT, load_with_floors
from framebench.reports.summary import BUSY_FRACTION, busy_warnings
from tests.conftest import cli, framebench
from tests.tables import BATCH, MACHINE, NODE, SAMPLES, gemm_rows, results_directory, run_config, run_row


def baseline_runs(numpy_s=(1.0, 1.01, 1.02), jax_s=(0.5, 0.505, 0.51), acc=0.95) -> list[dict]:
    """Three repeats of numpy and jax at these steady epoch seconds, each reaching `acc`."""
    jobs = [("numpy", r, t) for r, t in enumerate(numpy_s)] + [("jax", r, t) for r, t in enumerate(jax_s)]
    return [run_row(backend=b, repeat=r, epoch_s=t, final_test_acc=acc) for b, r, t in jobs]


def test_floors_and_efficiencies_are_derived_from_each_nodes_probes(tmp_path):
    """floor = fastest library's step time x steps per epoch; own floor = the backend's library's."""
    gemm = gemm_rows("numpy", 0.004) + gemm_rows("jax", 0.002) + gemm_rows("numpy", 0.0045, "end") + gemm_rows("jax", 0.0021, "end")
    runs = load_with_floors(results_directory(tmp_path / "r", baseline_runs(), gemm=gemm))["runs"].set_index(["backend", "repeat"])
    steps = SAMPLES / BATCH
    numpy_run = runs.loc[("numpy", 1)]
    assert numpy_run["floor_epoch_s"] == pytest.approx(0.002 * steps)  # the faster probe of the faster library
    assert numpy_run["own_floor_epoch_s"] == pytest.approx(0.004 * steps)
    assert numpy_run["efficiency"] == pytest.approx(0.2 / 1.01) and numpy_run["overhead_efficiency"] == pytest.approx(0.4 / 1.01)
    assert runs.loc[("jax", 0), "overhead_efficiency"] == pytest.approx(0.2 / 0.5)
    assert (runs["floor_note"] == "").all()


def test_disagreeing_probes_make_efficiencies_unreliable_not_wrong(tmp_path):
    slowed = PROBE_DISAGREEMENT * 1.1
    gemm = gemm_rows("numpy", 0.004) + gemm_rows("numpy", 0.004 * slowed, "end")
    runs = load_with_floors(results_directory(tmp_path / "r", baseline_runs(), gemm=gemm))["runs"]
    numpy_runs = runs[runs["backend"] == "numpy"]
    assert numpy_runs["efficiency"].isna().all() and numpy_runs["floor_epoch_s"].notna().all()
    assert numpy_runs["floor_note"].str.contains("disagree").all()
    result = cli("plot", str(tmp_path / "r"))
    assert result.returncode == 0 and "disagree" in (tmp_path / "r" / "report.md").read_text()


def test_a_disagreeing_own_floor_empties_only_the_overhead_efficiency(tmp_path):
    """jax sets the floor and its probes agree; numpy's own probes do not: its efficiency stands."""
    gemm = (
        gemm_rows("jax", 0.002)
        + gemm_rows("jax", 0.002, "end")
        + gemm_rows("numpy", 0.004)
        + gemm_rows("numpy", 0.004 * PROBE_DISAGREEMENT * 1.2, "end")
    )
    runs = load_with_floors(results_directory(tmp_path / "r", baseline_runs(), gemm=gemm))["runs"]
    numpy_runs, jax_runs = runs[runs["backend"] == "numpy"], runs[runs["backend"] == "jax"]
    assert numpy_runs["efficiency"].notna().all() and numpy_runs["overhead_efficiency"].isna().all()
    assert numpy_runs["floor_note"].str.startswith("unreliable own floor").all()
    assert jax_runs["overhead_efficiency"].notna().all() and (jax_runs["floor_note"] == "").all()


def test_an_efficiency_above_the_credible_limit_is_left_empty(tmp_path):
    """A floor probe slowed by other work makes a run look faster than the hardware: say so, report nothing."""
    too_fast = 0.004 * SAMPLES / BATCH / (MAX_CREDIBLE_EFFICIENCY * 1.5)
    gemm = gemm_rows("numpy", 0.004) + gemm_rows("numpy", 0.004, "end")
    runs = load_with_floors(results_directory(tmp_path / "r", [run_row(epoch_s=too_fast, final_test_acc=0.9)], gemm=gemm))["runs"]
    assert math.isnan(runs["efficiency"][0]) and "above" in runs["floor_note"][0]


def test_one_probe_is_noted(tmp_path):
    runs = load_with_floors(results_directory(tmp_path / "r", baseline_runs(), gemm=gemm_rows("numpy", 0.004)))["runs"]
    assert (runs[runs["backend"] == "numpy"]["floor_note"] == "one GEMM probe (no end probe)").all()


def compare(base, new, *args):
    return cli("compare", str(base), str(new), *args)


def test_compare_identical_runs_finds_no_regression(tmp_path):
    base = results_directory(tmp_path / "base", baseline_runs())
    markdown = tmp_path / "compare.md"
    result = compare(base, base, "--markdown", str(markdown))
    assert result.returncode == 0, result.stdout
    assert "no regression" in result.stdout and "| numpy | default | cpu | current | fp32 | digits | mlp |" in markdown.read_text()


def test_compare_flags_an_accuracy_drop_beyond_the_tolerance_only(tmp_path):
    base = results_directory(tmp_path / "base", baseline_runs(acc=0.95))
    assert compare(base, results_directory(tmp_path / "small", baseline_runs(acc=0.947))).returncode == 0
    result = compare(base, results_directory(tmp_path / "big", baseline_runs(acc=0.93)))
    assert result.returncode == 1 and "REGRESSION: accuracy" in result.stdout and "2 regression(s)" in result.stdout


def test_compare_reads_the_time_interval_against_the_tolerance(tmp_path):
    base = results_directory(tmp_path / "base", baseline_runs(numpy_s=(1.0, 1.1, 1.2)))
    slower = compare(base, results_directory(tmp_path / "slow", baseline_runs(numpy_s=(3.0, 3.3, 3.6))))
    assert slower.returncode == 1 and "REGRESSION: time" in slower.stdout and "1 regression(s)" in slower.stdout
    assert "×3.000 [" in slower.stdout  # the ratio of medians with its interval
    within_spread = compare(base, results_directory(tmp_path / "spread", baseline_runs(numpy_s=(1.15, 1.25, 1.4))))
    assert within_spread.returncode == 2, within_spread.stdout  # 14% slower, but the repeats overlap: not settled either way
    assert "inconclusive" in within_spread.stdout
    tight = results_directory(tmp_path / "tight", baseline_runs())
    within_tolerance = compare(tight, results_directory(tmp_path / "tol", baseline_runs(numpy_s=(1.05, 1.06, 1.07))))
    assert within_tolerance.returncode == 0 and "no change" in within_tolerance.stdout  # 5% slower: within 10%


def test_compare_one_repeat_is_named_and_cannot_regress(tmp_path):
    base = results_directory(tmp_path / "base", [run_row()])
    new = results_directory(tmp_path / "new", [run_row(epoch_s=3.0)])
    result = compare(base, new)
    assert result.returncode == 2 and "1 repeat: the spread between processes is unknown; use --repeats 3" in result.stdout


def test_compare_a_busy_new_is_not_verified_and_the_json_says_the_same(tmp_path):
    base = results_directory(tmp_path / "base", baseline_runs())
    runs = [{**r, "other_cpu_frac": 0.47} for r in baseline_runs(numpy_s=(3.0, 3.03, 3.06))]
    output = tmp_path / "compare.json"
    result = compare(base, results_directory(tmp_path / "new", runs), "--json", str(output))
    assert result.returncode == 2 and "not verified (busy: NEW's jobs shared the CPU with other processes, 47%)" in result.stdout
    document = json.loads(output.read_text())
    numpy_row = next(k for k in document["keys"] if k["backend"] == "numpy")
    assert document["exit_status"] == 2 and numpy_row["decision"]["kind"] == "NOT_VERIFIED" and numpy_row["time_ratio"] == 3.0
    assert numpy_row["decision"]["note"] == "busy: NEW's jobs shared the CPU with other processes, 47%"


@pytest.mark.parametrize("status", ["failed", "diverged", "timeout", "unavailable", "unsupported", "interrupted", "lost"])
def test_compare_a_run_that_did_not_finish_ok_in_new_is_a_regression(tmp_path, status):
    base = results_directory(tmp_path / "base", baseline_runs())
    runs = baseline_runs()
    runs[0] = {**runs[0], "status": status, "error": "it broke", "median_epoch_s": "", "final_test_acc": ""}
    result = compare(base, results_directory(tmp_path / "new", runs))
    assert result.returncode == 1 and f"REGRESSION: NEW {status}: it broke" in result.stdout


def test_compare_a_key_missing_in_new_is_a_regression(tmp_path):
    base = results_directory(tmp_path / "base", baseline_runs())
    result = compare(base, results_directory(tmp_path / "new", [r for r in baseline_runs() if r["backend"] == "numpy"]))
    assert result.returncode == 1 and "REGRESSION: missing in NEW" in result.stdout


def test_compare_against_a_base_that_verified_nothing_is_refused(tmp_path):
    failed = [{**r, "status": "failed", "error": "boom", "median_epoch_s": "", "final_test_acc": ""} for r in baseline_runs()]
    result = compare(results_directory(tmp_path / "base", failed), results_directory(tmp_path / "new", baseline_runs(acc=0.1)))
    assert result.returncode == 2 and "fixed (BASE failed: boom)" in result.stdout and "nothing was verified" in result.stdout


def test_compare_an_ok_row_without_figures_is_not_ok(tmp_path):
    base = results_directory(tmp_path / "base", baseline_runs())
    runs = baseline_runs()
    runs[1] = {**runs[1], "median_epoch_s": ""}
    result = compare(base, results_directory(tmp_path / "new", runs))
    assert result.returncode == 1 and "ok without accuracy or time" in result.stdout


def test_compare_refuses_timings_across_machines_unless_allowed(tmp_path):
    base = results_directory(tmp_path / "base", baseline_runs())
    other = {**NODE, "cpu": "Some Other CPU"}
    new = results_directory(tmp_path / "new", baseline_runs(numpy_s=(3.0, 3.3, 3.6)), machine={**MACHINE, "nodes": {"box": other}})
    refused = compare(base, new)
    assert refused.returncode == 2 and "not verified" in refused.stdout and "--allow-machine-diff" in refused.stdout
    assert compare(base, new, "--accuracy-only").returncode == 0
    allowed = compare(base, new, "--allow-machine-diff")
    assert allowed.returncode == 1 and "REGRESSION: time" in allowed.stdout


def test_compare_matches_timings_per_node(tmp_path):
    """Two nodes with different CPUs: each row's time is compared with BASE's on a node like its own."""
    fast, slow = {**NODE, "machine": "a", "cpu": "Fast"}, {**NODE, "machine": "b", "cpu": "Slow"}
    env = {**MACHINE, "nodes": {"a": fast, "b": slow}}

    def on(node: str, seconds: float) -> list[dict]:
        return [run_row(repeat=r, epoch_s=seconds * (1 + r / 100), final_test_acc=0.9, node=node) for r in range(2)]

    base = results_directory(tmp_path / "base", on("a", 1.0) + [{**r, "repeat": r["repeat"] + 2} for r in on("b", 3.0)], machine=env)
    swapped = results_directory(tmp_path / "new", on("b", 3.0) + [{**r, "repeat": r["repeat"] + 2} for r in on("a", 1.0)], machine=env)
    assert compare(base, swapped).returncode == 0  # the same machines at the same speed, only the job placement changed
    slower = results_directory(tmp_path / "slower", on("a", 2.0) + [{**r, "repeat": r["repeat"] + 2} for r in on("b", 3.0)], machine=env)
    assert compare(base, slower).returncode == 1


def test_compare_refuses_accuracy_across_training_configurations(tmp_path):
    base = results_directory(tmp_path / "base", baseline_runs())
    config = run_config()
    config["train"]["epochs"] = 10
    new = results_directory(tmp_path / "new", baseline_runs(acc=0.99), config=config)
    refused = compare(base, new)
    assert refused.returncode == 2 and "configuration differs: train" in refused.stdout and "--allow-config-diff" in refused.stdout
    assert compare(base, new, "--allow-config-diff").returncode == 0


@pytest.mark.parametrize("flag, value", [("--acc-tol", "-0.1"), ("--acc-tol", "nan"), ("--time-tol", "inf")])
def test_compare_tolerances_must_be_finite_and_not_negative(tmp_path, flag, value):
    base = results_directory(tmp_path / "base", baseline_runs())
    result = compare(base, base, flag, value)
    assert result.returncode == 2 and f"{flag} must be a finite number >= 0" in result.stderr


def thresholds_file(path, rows: list[tuple[str, float]]) -> str:
    table = pd.DataFrame(
        [
            {
                "preset": "mlp",
                "dataset": "digits",
                "precision": "fp32",
                "backend": b,
                "epochs": 3,
                "sweep_field": "",
                "sweep_value": "",
                "env": "current",
                "min_test_acc": t,
                "measured_min": t,
                "measured_runs": 3,
                "margin": 0.0,
            }
            for b, t in rows
        ]
    )
    table.to_csv(path, index=False)
    return str(path)


def test_check_passes_only_runs_it_verified(tmp_path):
    directory = results_directory(tmp_path / "r", baseline_runs(acc=0.95))
    good = thresholds_file(tmp_path / "good.csv", [("numpy", 0.9), ("jax", 0.9)])
    assert cli("check", str(directory), "--thresholds", good).returncode == 0
    partial = thresholds_file(tmp_path / "partial.csv", [("numpy", 0.9)])
    missing = cli("check", str(directory), "--thresholds", partial)
    assert missing.returncode == 1 and "jax/default on cpu (mlp, digits, fp32, 3 epochs, seed 0, repeat 1): no threshold" in missing.stdout
    assert cli("check", str(directory), "--thresholds", partial, "--allow-missing").returncode == 0
    strict = thresholds_file(tmp_path / "strict.csv", [("numpy", 0.9), ("jax", 0.999)])
    result = cli("check", str(directory), "--thresholds", strict)
    assert (
        result.returncode == 1
        and "FAIL: jax/default on cpu (mlp, digits, fp32, 3 epochs, seed 0, repeat 1): test accuracy 0.9500 < threshold 0.9990"
        in result.stdout
    )


def test_check_notes_an_unsupported_run_and_thresholds_leave_it_out(tmp_path):
    runs = baseline_runs()
    runs[2] = {**runs[2], "status": "unsupported", "error": "no bf16 here", "final_test_acc": None}
    directory = results_directory(tmp_path / "r", runs)
    result = cli("check", str(directory), "--thresholds", thresholds_file(tmp_path / "t.csv", [("numpy", 0.0), ("jax", 0.0)]))
    assert result.returncode == 0 and "unsupported (no bf16 here)" in result.stdout
    derived = cli("thresholds", str(directory))
    assert derived.returncode == 0 and "mlp,digits,3,,numpy,,current,fp32,0.94,0.95,2," in derived.stdout


@pytest.mark.parametrize("status", ["failed", "diverged", "timeout", "interrupted", "unavailable"])
def test_check_fails_a_run_that_did_not_finish_ok_whatever_the_thresholds(tmp_path, status):
    runs = baseline_runs()
    runs[2] = {**runs[2], "status": status, "error": "boom"}
    directory = results_directory(tmp_path / "r", runs)
    result = cli("check", str(directory), "--thresholds", thresholds_file(tmp_path / "t.csv", [("numpy", 0.0), ("jax", 0.0)]))
    assert result.returncode == 1 and f"run {status} (boom)" in result.stdout


@pytest.mark.parametrize(
    "row",
    [
        "jax,3,,,current,",
        "jax,3,,,current,nan",
        "jax,3,,,current,1.5",
        "jax,3,,,current,abc",
        "jax,five,,,current,0.9",
        "jax,2.5,,,current,0.9",
    ],
)
def test_an_empty_or_nonsense_threshold_is_an_error_when_read(tmp_path, row):
    directory = results_directory(tmp_path / "r", baseline_runs())
    path = tmp_path / "t.csv"
    thresholds_file(path, [("numpy", 0.9), ("jax", 0.9)])
    path.write_text(path.read_text().replace("jax,3,,,current,0.9", row))
    result = cli("check", str(directory), "--thresholds", str(path))
    assert result.returncode == 2 and "a threshold must be a number in [0, 1] and epochs a positive integer" in result.stderr


def test_check_without_thresholds_file_is_a_one_line_error(tmp_path):
    directory = results_directory(tmp_path / "r", baseline_runs())
    result = cli("check", str(directory), "--thresholds", str(tmp_path / "none.csv"))
    assert result.returncode == 2 and result.stderr.startswith("error: no thresholds file")


def test_thresholds_are_the_lowest_accuracy_minus_the_margin(tmp_path):
    runs = baseline_runs()
    runs[1]["final_test_acc"] = 0.91
    directory = results_directory(tmp_path / "r", runs)
    output = tmp_path / "derived.csv"
    assert cli("thresholds", str(directory), "--margin", "0.01", "--output", str(output)).returncode == 0
    table = pd.read_csv(output, comment="#").set_index("backend")
    assert table.loc["numpy", "min_test_acc"] == pytest.approx(0.90) and table.loc["jax", "min_test_acc"] == pytest.approx(0.94)
    assert cli("check", str(directory), "--thresholds", str(output)).returncode == 0


def test_thresholds_without_output_print_and_leave_the_shipped_file_alone(tmp_path, monkeypatch):
    from framebench.reports import thresholds

    shipped = tmp_path / "shipped.csv"
    shipped.write_text("as shipped\n")
    monkeypatch.setattr(thresholds, "DEFAULT_FILE", shipped)
    result = cli("thresholds", str(results_directory(tmp_path / "r", baseline_runs())))
    assert result.returncode == 0, result.stderr
    assert shipped.read_text() == "as shipped\n"
    printed = pd.read_csv(io.StringIO(result.stdout), comment="#")
    assert sorted(printed["backend"]) == ["jax", "numpy"] and printed["min_test_acc"].notna().all()


def test_thresholds_refuse_an_ok_run_without_accuracy(tmp_path):
    runs = baseline_runs()
    runs[1]["final_test_acc"] = ""
    result = cli("thresholds", str(results_directory(tmp_path / "r", runs)), "--output", str(tmp_path / "t.csv"))
    assert result.returncode == 2 and "did not finish ok with an accuracy" in result.stderr and not (tmp_path / "t.csv").exists()


@pytest.mark.parametrize("margin", ["-0.01", "inf", "nan"])
def test_thresholds_margin_must_be_finite_and_not_negative(tmp_path, margin):
    directory = results_directory(tmp_path / "r", baseline_runs())
    result = cli("thresholds", str(directory), "--margin", margin, "--output", str(tmp_path / "t.csv"))
    assert result.returncode == 2 and "--margin must be a finite number >= 0" in result.stderr


@pytest.mark.slow
def test_perf_returns_the_worst_status_of_its_runs(tmp_path):
    """One preset whose only job fails: perf must say so in its exit status, and still write its report."""
    env = {**os.environ, "FRAMEBENCH_PLUGINS": "fake=tests.fake_backend:FakeClassifier", "FAKE_MODE": "raise"}
    result = framebench(
        "study", "perf", "--presets", "ci", "--backends", "fake", "--epochs", "2", "--repeats", "1", "--results-dir", str(tmp_path), env=env
    )
    assert result.returncode == 1, result.stderr
    assert "| ci | fake |" not in (tmp_path / "report.md").read_text()  # a failed run is no row of the speed table


def test_perf_takes_the_run_flags_and_runs_one_request_per_preset(tmp_path, monkeypatch):
    from framebench.studies import perf

    requests = []
    monkeypatch.setattr(perf, "run_matrix", lambda request, model, train: requests.append((request, train)) or 0)
    monkeypatch.setattr(perf, "write_perf_report", lambda folder, directories: folder / "report.md")
    flags = ["--timeout", "60", "--executor", "local", "--seed", "7", "--no-floors", "--schedule-timeout", "9"]
    result = cli("study", "perf", "--presets", "mlp", "--backends", "numpy,torch", "--epochs", "2", "--results-dir", str(tmp_path), *flags)
    assert result.returncode == 0, result.stderr
    assert [(r.preset, r.backends, r.run_id) for r, _ in requests] == [
        ("mlp", "numpy,torch", "mlp"),
        ("tutorial002", "numpy", "tutorial002"),
        ("tutorial004", "torch", "tutorial004"),
    ]
    request, train = requests[0]
    assert (request.timeout, request.executor, request.seeds, request.floors, request.schedule_timeout) == (60, "local", "7", False, 9)
    assert (request.variants, request.repeats, request.results_dir, train) == ("all", 2, str(tmp_path), {"epochs": 2})


@pytest.mark.parametrize("flag", ["--dataset", "--run-id", "--resume", "--sweep"])
def test_perf_refuses_the_run_flags_it_sets_per_preset(flag):
    result = cli("study", "perf", flag, "x")
    assert result.returncode == 2 and f"unrecognized arguments: {flag} x" in result.stderr


def test_the_perf_matrix_adds_each_tutorial_preset_for_its_own_backend():
    from framebench.studies.perf import perf_matrix

    assert perf_matrix("mlp,tutorial000", "numpy,tf") == [("mlp", "numpy,tf"), ("tutorial000", "numpy,tf"), ("tutorial002", "numpy")]
    assert perf_matrix("tutorial003", "jax") == [("tutorial003", "jax")]  # keras's tutorial preset only with keras
    with pytest.raises(FrameBenchError, match="--presets"):
        perf_matrix("nosuch", "numpy")


def test_busy_warnings_name_each_job_whose_machine_was_busy_in_its_latest_attempt():
    runs = [
        run_row(other_cpu_frac=BUSY_FRACTION + 0.01, node="n1"),
        run_row(repeat=1, other_cpu_frac=BUSY_FRACTION),
        run_row(backend="jax", other_cpu_frac=0.9, status="lost"),
        run_row(backend="jax", other_cpu_frac=0.0, attempt=2),
    ]
    used = f"{BUSY_FRACTION + 0.01:.0%}"
    assert busy_warnings(pd.DataFrame(runs)) == [
        f"numpy/default on cpu, repeat 1 (n1): machine busy, other processes used {used} of the CPUs; its times are suspect"
    ]


@pytest.fixture(scope="module")
def measured(tmp_path_factory):
    """Two repeats of numpy and jax on digits: a real, small results directory."""
    parent = tmp_path_factory.mktemp("results")
    result = framebench(
        "run",
        "--backends",
        "numpy,jax",
        "--dataset",
        "digits",
        "--epochs",
        "3",
        "--repeats",
        "2",
        "--results-dir",
        str(parent),
        "--run-id",
        "base",
    )
    assert result.returncode == 0, result.stderr
    return parent / "base"


@pytest.mark.slow
def test_run_writes_figures_and_a_report_that_plot_redraws(measured):
    for name in ("loss.png", "accuracy.png", "epoch_time.png", "report.md"):
        assert (measured / name).stat().st_size > 1000
    (measured / "loss.png").unlink()
    assert cli("plot", str(measured)).returncode == 0
    assert (measured / "loss.png").exists()
    report = (measured / "report.md").read_text()
    assert "| numpy | default | cpu | current | fp32 | 2 |" in report and "![Steady-state epoch time per backend](epoch_time.png)" in report
    assert "speedup.png" not in report  # no GPU rows, no GPU-vs-CPU figure
    tables = load_with_floors(measured)
    assert set(tables["gemm"]["probe"]) == {"start", "end"} and tables["runs"]["floor_epoch_s"].notna().all()


def test_step_flops_follow_the_stated_formula():
    # forward 2N(784*512 + 512*10), weight gradients the same, input gradient of layer 2 only: 2N*512*10
    assert sum(g.flops for g in step_gemms((784, 512, 10), 100)) == 2 * 100 * (2 * (784 * 512 + 512 * 10) + 512 * 10)


def test_the_perf_table_keeps_every_preset_of_a_backend(tmp_path):
    """Runs of the same backend and repeat in two presets' directories are two rows, not one."""
    from framebench.reports.summary import perf_table

    first = load_with_floors(results_directory(tmp_path / "a", baseline_runs()))["runs"]
    second = load_with_floors(
        results_directory(tmp_path / "b", [{**row, "run_id": "s", "preset": "tutorial000"} for row in baseline_runs()])
    )["runs"]
    table = perf_table(pd.concat([first, second], ignore_index=True))
    assert table[["preset", "backend"]].values.tolist() == [
        ["mlp", "numpy"],
        ["mlp", "jax"],
        ["tutorial000", "numpy"],
        ["tutorial000", "jax"],
    ]


def test_version_notes_pair_rows_at_the_same_point_and_leave_out_rows_without_a_version():
    base = pd.DataFrame(
        [
            run_row(framework_version="2.3"),
            run_row(precision="bf16"),
        ]
    )
    new = pd.DataFrame(
        [
            run_row(framework_version="2.4"),
            run_row(backend="jax", framework_version="0.9"),
        ]
    )
    base.loc[1, "framework_version"] = ""
    assert version_notes(base, new) == ["numpy: 2.3 -> 2.4"]
    assert version_notes(new, new) == []
