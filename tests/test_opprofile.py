"""Where an epoch's time goes, op by op: the self-time arithmetic over a profiler's nested events, the
summary the precision study prints from profiles (on synthetic profiles written here, never on real
timings), the checks a profile file from elsewhere must pass, and one real profile per kind of backend
(one with a profiler, one that declares it has none) through `python -m framebench.driver.opprofile`."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from framebench.cli import main as framebench_main
from framebench.core.opprofile import Event, is_cast, op_times, self_times
from framebench.errors import FrameBenchError
from framebench.reports.opprofile import read_profiles, report_lines, summary_table, top_ops
from framebench.studies.precision import PROFILE_FILE, profile_section
from tests.conftest import REPO


def test_self_time_is_the_duration_less_the_events_nested_directly_inside():
    """A step (0-100) around a kernel (10-60) around a thunk (20-30), then another kernel (70-90)."""
    events = [Event("step", 0, 100), Event("kernel", 10, 50), Event("thunk", 20, 10), Event("kernel", 70, 20)]
    assert self_times(events) == {"step": (100 - 50 - 20, 1), "kernel": (50 - 10 + 20, 2), "thunk": (10, 1)}


def test_a_child_outlasting_its_parent_is_charged_to_it_only_while_inside():
    assert self_times([Event("parent", 0, 10), Event("async", 6, 10)]) == {"parent": (6, 1), "async": (10, 1)}
    assert self_times([]) == {}


def test_op_times_add_threads_up_by_name_largest_first_and_mark_casts():
    threads = [[Event("MatMul", 0, 3000), Event("Cast", 4000, 1000)], [Event("MatMul", 0, 2000)]]
    rows = op_times(threads, 1e-9)
    assert [(r.op, r.calls, r.cast) for r in rows] == [("MatMul", 2, False), ("Cast", 1, True)]
    assert rows[0].seconds == pytest.approx(5e-6) and rows[1].seconds == pytest.approx(1e-6)
    assert op_times(threads, 1e-9, cast=lambda name: name == "MatMul")[0].cast


def test_a_frame_that_only_waits_for_other_threads_is_left_out():
    waiting = [Event("ThunkExecutor::Execute (wait for completion)", 0, 100), Event("dot.9", 10, 20)]
    assert [(r.op, r.seconds) for r in op_times([waiting], 1.0)] == [("dot.9", 20.0)]


@pytest.mark.parametrize(
    "name, cast",
    [
        ("convert_bitcast_fusion", True),
        ("maximum_convert_fusion.1", True),
        ("wrapped_convert.6", True),
        ("gradient_tape/Cast_2/Cast:Cast", True),
        ("aten::_to_copy", True),
        ("broadcast_maximum_fusion", False),
        ("bitcast_fusion", False),
        ("aten::copy_", False),
        ("MatMul.14", False),
    ],
)
def test_a_cast_is_told_by_the_name_its_framework_gives_it(name, cast):
    assert is_cast(name) is cast


def profile(backend: str, precision: str, ops: list[tuple[str, float, int, bool]], steps: int = 10, **fields) -> dict:
    return {
        "backend": backend,
        "variant": "default",
        "precision": precision,
        "batch_size": 128,
        "steps": steps,
        "threads": 1,
        "status": "ok",
        "reason": "",
        "epoch_s": 2.0,
        "ops": [{"op": op, "seconds": seconds, "calls": calls, "cast": cast} for op, seconds, calls, cast in ops],
    } | fields


PROFILES = [
    profile("tf", "fp32", [("MatMul.8", 0.6, 10, False), ("fusion", 0.4, 10, False)]),
    profile("tf", "bf16", [("MatMul", 0.3, 30, False), ("Cast", 0.1, 50, True), ("Cast_1", 0.1, 20, True)]),
    profile("numpy", "fp32", [], status="unsupported", reason="NumpyClassifier has no per-op profiler"),
]


def test_the_summary_gives_each_profiles_op_time_casts_per_step_and_speedup_over_fp32():
    table = summary_table(PROFILES).set_index("precision")
    assert list(table["backend"]) == ["tf", "tf"]  # the profile that is not ok is not a row
    assert table.loc["fp32", "ops_s"] == pytest.approx(1.0) and table.loc["bf16", "ops_s"] == pytest.approx(0.5)
    assert table.loc["bf16", "ms_per_step"] == pytest.approx(50.0)
    assert table.loc["bf16", "ops_speedup"] == pytest.approx(2.0) and table["ops_speedup"].isna()["fp32"]
    assert table.loc["bf16", "casts_per_step"] == pytest.approx(7.0) and table.loc["fp32", "casts_per_step"] == 0
    assert table.loc["bf16", "cast_share"] == pytest.approx(0.4) and table.loc["fp32", "cast_share"] == 0


def test_top_ops_keep_the_files_order_and_the_largest_ops_of_each_profile():
    table = top_ops(PROFILES, n=2)
    assert list(zip(table["precision"], table["op"], strict=True)) == [
        ("fp32", "MatMul.8"),
        ("fp32", "fusion"),
        ("bf16", "MatMul"),
        ("bf16", "Cast"),
    ]
    bf16 = table[table["precision"] == "bf16"].set_index("op")
    assert bf16.loc["MatMul", "share"] == pytest.approx(0.6) and bf16.loc["Cast", "calls_per_step"] == pytest.approx(5.0)
    assert bf16.loc["MatMul", "ms_per_step"] == pytest.approx(30.0)


def test_the_report_escapes_names_and_says_what_was_not_profiled():
    hostile = [profile("tf", "fp32", [("a|b<script>", 1.0, 1, False)]), profile("x", "bf16", [], status="failed", reason="boom | `x`")]
    text = "\n".join(report_lines(hostile))
    assert "a\\|b&lt;script&gt;" in text and "<script>" not in text
    assert "- not profiled: x:default bf16: failed: boom \\| &#96;x&#96;" in text
    assert report_lines([]) == []


@pytest.mark.parametrize(
    "content, says",
    [
        ("not json", "cannot be read"),
        ('{"a": 1}', "is not a list of profiles"),
        ("[1]", "profile 0 is not an object"),
        (json.dumps([{**profile("tf", "fp32", []), "steps": "ten"}]), "field 'steps' is missing or not a int"),
        (json.dumps([{**profile("tf", "fp32", []), "ops": {}}]), "field 'ops' is not a list"),
        (json.dumps([profile("tf", "fp32", [("op", -1.0, 1, False)])]), "negative or non-finite"),
        (json.dumps([profile("tf", "fp32", [("op", 1.0, True, False)])]), "field 'calls' is missing or not a int"),
    ],
)
def test_a_profile_file_of_the_wrong_shape_is_one_line_naming_the_fix(tmp_path, content, says):
    path = tmp_path / "ops.json"
    path.write_text(content)
    with pytest.raises(FrameBenchError, match=says) as error:
        read_profiles(path)
    assert "\n" not in str(error.value)


def test_the_precision_study_prints_a_configurations_profile_or_says_it_is_missing(tmp_path):
    assert "No op profile" in profile_section(tmp_path)[0]
    (tmp_path / PROFILE_FILE).write_text(json.dumps(PROFILES))
    text = "\n".join(profile_section(tmp_path))
    assert "| tf | default | bf16 | 10 | 2 | 0.5 | 50 | 2 | 7 | 0.4 |" in text and "NumpyClassifier has no per-op profiler" in text


@pytest.mark.parametrize(
    "args, says",
    [
        (["--backends", "nope"], "unknown backend 'nope'"),
        (["--backends", ","], "--backends takes a comma list"),
        (["--backends", "tf", "--precision", "fp8"], "unknown precision 'fp8'"),
        (["--backends", "tf", "--threads", "0"], "--threads must be at least 1"),
    ],
)
def test_bad_profile_requests_are_one_line(capsys, args, says):
    with pytest.raises(SystemExit) as exit_status:
        framebench_main(["ops", *args])
    assert exit_status.value.code == 2
    err = capsys.readouterr().err
    assert says in err and err.count("\n") == 1


@pytest.mark.slow
def test_a_real_profile_per_backend_and_a_declared_lack_of_profiler(tmp_path):
    """torch's profile of a real epoch: aten ops whose self times fit in the epoch's wall time, and at
    bf16 autocast's conversions counted as casts; NumPy declares it has no profiler."""
    output = tmp_path / "ops.json"
    command = ["--backends", "torch,numpy", "--precision", "fp32,bf16", "--preset", "ci", "--dataset", "digits", "--output", str(output)]
    done = subprocess.run([sys.executable, "-m", "framebench", "ops", *command], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    found = {(p["backend"], p["precision"]): p for p in read_profiles(output)}
    assert found[("numpy", "fp32")]["status"] == "unsupported" and "has no per-op profiler" in found[("numpy", "fp32")]["reason"]
    assert found[("numpy", "bf16")]["status"] == "unsupported" and "NumPy has no 16-bit GEMM" in found[("numpy", "bf16")]["reason"]
    summary = summary_table(list(found.values())).set_index("precision")
    for precision in ("fp32", "bf16"):
        torch_profile = found[("torch", precision)]
        assert torch_profile["status"] == "ok" and torch_profile["steps"] > 0
        assert {"aten::addmm", "aten::mm"} <= {op["op"] for op in torch_profile["ops"]}
        assert 0 < summary.loc[precision, "ops_s"] <= torch_profile["epoch_s"]
    assert summary.loc["bf16", "casts_per_step"] > summary.loc["fp32", "casts_per_step"]
