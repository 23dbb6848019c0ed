"""A hostile backend, a hostile results directory, hostile names: what a backend prints never changes a
row, every signal and every way a job ends is recorded, and a results directory from someone else is
read and written safely. Each case failed before the harness guarded against it."""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import signal
import time

import numpy as np
import pandas as pd
import pytest

from framebench.cli import main
from framebench.core import registry
from framebench.core.config import Sweep
from framebench.core.harness import divergence
from framebench.driver import probe as gemm
from framebench.driver import session
from framebench.driver.node import decode_event
from framebench.driver.plan import new_config, recorded_jobs
from framebench.driver.request import RunRequest, plan_size
from framebench.reports.markdown import escape_markdown, to_markdown
from framebench.store import files as results
from framebench.store.events import MalformedEvent
from framebench.store.files import append_rows
from framebench.store.job import Job
from framebench.store.reader import latest_attempts, load_results, read_table
from tests.conftest import framebench
from tests.tables import finished_run
from tests.test_events import scripted_jobs
from tests.test_faults import alive, env_for, run_args, started, wait_for


def run_mode(tmp_path, mode: str, *args: str, extra_env: dict | None = None) -> pd.DataFrame:
    """`framebench run` of the fake backend in `mode`; its runs.csv."""
    result = framebench(
        *run_args(tmp_path, "--backends", "fake", "--epochs", "3", "--timeout", "30", "--run-id", "r", *args),
        env={**env_for(mode), **(extra_env or {})},
    )
    assert "Traceback" not in result.stderr, result.stderr
    return load_results(tmp_path / "r")


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["dots", "bytes", "close-stdout"])
def test_what_a_backend_prints_changes_no_row(tmp_path, mode):
    """Dots without a newline once swallowed the next event; invalid UTF-8 killed the reader (a
    `timeout` row); a closed stdout read as a worker killed for memory."""
    tables = run_mode(tmp_path, mode)
    assert tables["runs"][["status", "error", "epochs_done"]].values.tolist() == [["ok", "", 3]]
    assert tables["epochs"]["epoch"].tolist() == [1, 2, 3]


@pytest.mark.slow
def test_a_forged_event_line_is_only_log_text(tmp_path):
    tables = run_mode(tmp_path, "forge")
    runs = tables["runs"]
    assert runs[["status", "epochs_done"]].values.tolist() == [["failed", 1]] and "scripted failure" in runs["error"][0]
    assert '@framebench-event {"type": "end"' in next((tmp_path / "r" / "logs").iterdir()).read_text()


@pytest.mark.slow
def test_a_malformed_message_fails_its_job_and_the_matrix_goes_on(tmp_path):
    tables = run_mode(tmp_path, "malformed", "--backends", "fake,numpy")
    runs = tables["runs"].set_index("backend")
    assert runs.loc["fake", "status"] == "failed" and "malformed event" in runs.loc["fake", "error"]
    assert runs.loc["numpy", "status"] == "ok"


@pytest.mark.parametrize(
    "line", [b"{}\n", b"[1, 2]\n", b"not json\n", b"\xff\xfe\n", b'{"type": "epoch", "epoch": "one"}\n', b"[" * 100_000]
)
def test_every_malformed_channel_line_is_one_malformed_event(line):
    with pytest.raises(MalformedEvent):
        decode_event(line)


@pytest.mark.slow
def test_non_finite_predictions_are_diverged_not_ok(tmp_path):
    runs = run_mode(tmp_path, "nan-logits")["runs"]
    assert runs[["status", "epochs_done"]].values.tolist() == [["diverged", 1]] and "non-finite test-set predictions" in runs["error"][0]


def test_a_first_step_loss_of_zero_is_no_divergence():
    assert divergence(np.array([0.0, 0.5, 0.4]), 0.0, 1) is None
    assert "non-finite" in divergence(np.array([0.0, np.nan]), 0.0, 1)


@pytest.mark.slow
def test_a_process_that_leaves_the_job_s_session_does_not_outlive_it(tmp_path):
    strays = tmp_path / "strays"
    strays.mkdir()
    try:
        runs = run_mode(tmp_path, "setsid", extra_env={"FAKE_STRAY_DIR": str(strays)})["runs"]
        assert runs["status"].tolist() == ["ok"]
        pids = [int(p.name) for p in strays.iterdir()]
        assert pids
        wait_for(lambda: not any(alive(pid) for pid in pids), "the stray process to be gone", timeout=10)
    finally:
        for pid in (int(p.name) for p in strays.iterdir()):
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGHUP, signal.SIGUSR1])
def test_a_closed_terminal_or_another_signal_stops_the_driver_like_sigint(tmp_path, signum):
    pids = tmp_path / "pids"
    pids.mkdir()
    with started(tmp_path, "--backends", "fake", "--epochs", "3", "--run-id", "r", mode="hang", pid_dir=pids) as process:
        process.send_signal(signum)
        _, err = process.communicate(timeout=60)
    assert process.returncode == 128 + signum and f"interrupted by {signum.name}" in err and "Traceback" not in err
    assert load_results(tmp_path / "r")["runs"]["status"].tolist() == ["interrupted"]


@pytest.fixture
def finished(tmp_path):
    """A finished run (written row by row: nothing trains), free to be damaged."""
    return finished_run(tmp_path / "r")


def command(capsys, *args: str) -> tuple[int, str, str]:
    """`framebench ARGS` in this process: (exit status, stdout, stderr); a traceback fails the test."""
    with pytest.raises(SystemExit) as exited:
        main(list(args))
    out, err = capsys.readouterr()
    return exited.value.code, out, err


def reader_commands(directory, tmp_path) -> list[list[str]]:
    return [
        ["plot", str(directory)],
        ["check", str(directory), "--allow-missing"],
        ["compare", str(directory), str(directory)],
        ["thresholds", str(directory), "--output", str(tmp_path / "t.csv")],
    ]


def test_every_reader_takes_nan_cells(finished, tmp_path, capsys):
    """NaN is an empty cell (not measured): an ok run without an accuracy or a time is a failure for the
    gates and a row without figures in the report, never a traceback."""
    for table, columns in {"runs": ["final_test_acc", "final_test_loss", "median_epoch_s"], "epochs": ["test_acc", "test_loss"]}.items():
        rows = read_table(finished, table)
        rows[columns] = np.nan
        rows.to_csv(finished / f"{table}.csv", index=False)
    expected = {"plot": (0, 0), "check": (1, 0), "compare": (1, 0), "thresholds": (2, 1)}  # (exit status, lines on stderr)
    for args in reader_commands(finished, tmp_path):
        status, out, err = command(capsys, *args)
        assert (status, len(err.splitlines())) == expected[args[0]], (args, err)
    assert "ok without accuracy or time" in command(capsys, "compare", str(finished), str(finished))[1]
    assert "did not finish ok with an accuracy" in command(capsys, "thresholds", str(finished))[2]


@pytest.mark.parametrize(
    "name, section, change, field",
    [
        ("config.json", None, {"from_the_future": 1}, "from_the_future"),
        ("config.json", None, {"sweep": None}, "sweep"),
        ("config.json", None, {"threads": "4"}, "threads"),
        ("config.json", None, {"matrices": [{"repeats": "2"}]}, "matrices[0].repeats"),
        ("config.json", None, {"matrices": [{"axes": {"seed": [0]}}]}, "matrices[0].axes.seed[0]"),
        ("config.json", "model", {"from_the_future": 1}, "model.from_the_future"),  # as a newer framebench would write
        ("config.json", "train", {"from_the_future": True}, "train.from_the_future"),
        ("config.json", "train", {"epochs": "2"}, "train.epochs"),
        ("config.json", "model", {"hidden": [512, "x"]}, "model.hidden[1]"),
        ("machine.json", None, {"nodes": None}, "nodes"),
        ("machine.json", None, {"nodes": {"box": None}}, "nodes.box"),
        ("machine.json", None, {"earlier": "x"}, "earlier"),
    ],
)
def test_metadata_of_the_wrong_shape_is_one_line_naming_the_field_in_every_command(
    finished, tmp_path, capsys, name, section, change, field
):
    path = finished / name
    data = json.loads(path.read_text())
    if section:
        data[section] = {**data[section], **change}
    path.write_text(json.dumps({**data, **(change if not section else {})}))
    for args in [*reader_commands(finished, tmp_path), ["run", "--resume", str(finished)]]:
        status, _, err = command(capsys, *args)
        assert status == 2 and len(err.splitlines()) == 1 and field in err, (args, err)


def test_a_renamed_directory_reads_its_rows_as_its_own(finished, tmp_path):
    append_rows(finished, "runs", [{**read_table(finished, "runs").iloc[0].to_dict(), "run_id": "elsewhere", "attempt": 2}])
    moved = finished.rename(tmp_path / "moved")
    runs = latest_attempts(load_results(moved)["runs"])
    attempts = runs.set_index(["backend", "repeat"])["attempt"].to_dict()
    assert set(runs["run_id"]) == {"moved"} and attempts == {("numpy", 0): 2, ("numpy", 1): 1, ("jax", 0): 1, ("jax", 1): 1}


HOSTILE = "<script>alert(1)</script> | a | b |\n`code`"


def test_text_from_results_is_inert_markdown(finished, tmp_path, capsys):
    row = {**read_table(finished, "runs").iloc[0].to_dict(), "status": "failed", "error": HOSTILE, "repeat": 5}
    append_rows(finished, "runs", [row])
    assert command(capsys, "plot", str(finished))[0] == 0
    report = (finished / "report.md").read_text()
    assert "<script>" not in report and "&lt;script&gt;" in report
    compared = tmp_path / "compare.md"
    command(capsys, "compare", str(finished), str(finished), "--markdown", str(compared))
    for text in (report, compared.read_text()):
        for table in re.findall(r"(?:^\|.*\n?)+", text, flags=re.MULTILINE):  # every table of the text, each its own cell count
            lines = table.splitlines()
            assert len({line.replace("\\|", "").count("|") for line in lines}) == 1, lines
    assert escape_markdown(HOSTILE) == "&lt;script&gt;alert(1)&lt;/script&gt; \\| a \\| b \\| &#96;code&#96;"
    assert to_markdown(pd.DataFrame({"a|b": [HOSTILE]})).count("<") == 0


def test_writing_a_results_directory_never_follows_a_symbolic_link(finished, tmp_path, capsys):
    target = tmp_path / "precious.txt"
    target.write_text("keep me")
    (finished / "report.md").symlink_to(target)
    (finished / "loss.png").symlink_to(target)
    assert command(capsys, "plot", str(finished))[0] == 0
    assert target.read_text() == "keep me" and not (finished / "report.md").is_symlink() and not (finished / "loss.png").is_symlink()
    (finished / ".lock").unlink(missing_ok=True)
    (finished / ".lock").symlink_to(target)
    status, _, err = command(capsys, "run", "--resume", str(finished))
    assert status == 2 and "symbolic link" in err and target.read_text() == "keep me"


@pytest.mark.parametrize("code", [errno.EPERM, errno.ENOTSUP, errno.EXDEV])
def test_a_filesystem_without_hard_links_still_gets_whole_tables(tmp_path, monkeypatch, code):
    def no_links(*_):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(os, "link", no_links)
    append_rows(tmp_path, "runs", [])
    assert read_table(tmp_path, "runs").empty and sorted(p.name for p in tmp_path.iterdir()) == ["runs.csv"]


def test_a_hostile_plugin_name_is_refused_where_it_is_parsed():
    for text in ("../../../x/pwned=tests.fake_backend:FakeClassifier", "ok:a/b=tests.fake_backend:FakeClassifier"):
        (entry,) = registry.plugin_entries(text)
        assert "becomes part of file names" in entry.error
    (entry,) = registry.plugin_entries("fake-2:v.1=tests.fake_backend:FakeClassifier")
    assert entry.error == ""


def probe_env(tmp_path, startup: str) -> dict:
    """The process variables of a probe whose interpreter runs `startup` first (a sitecustomize), as a
    framework's import would."""
    (tmp_path / "sitecustomize.py").write_text(startup)
    return {**os.environ, "PYTHONPATH": str(tmp_path)}


def test_a_gemm_probe_that_hangs_or_prints_nothing_is_one_skipped_line(monkeypatch, tmp_path):
    monkeypatch.setattr(gemm, "PROBE_TIMEOUT_S", 0.001)
    rows, skipped = gemm.probe(("numpy",), "cpu", 1, False, (4, 3, 2), 2, dict(os.environ))
    assert rows == [] and len(skipped) == 1 and "no answer within" in skipped[0]
    monkeypatch.setattr(gemm, "PROBE_TIMEOUT_S", 600.0)
    rows, skipped = gemm.probe(("numpy",), "cpu", 1, False, (4, 3, 2), 2, probe_env(tmp_path, "import os\nos._exit(0)\n"))
    assert rows == [] and skipped == ["numpy on cpu: the probe printed no timings"]


def test_a_probe_hanging_on_import_holds_the_run_no_longer_than_its_timeout(tmp_path):
    """It held a --timeout 10 run 600 s per library, at the start and again at the end; a process it
    started holding its output held it longer still."""
    hang = "import os, time\nif os.fork() == 0:\n    time.sleep(600)\ntime.sleep(600)\n"
    started = time.monotonic()
    rows, skipped = gemm.probe(("numpy",), "cpu", 1, "fp32", (4, 3, 2), 2, probe_env(tmp_path, hang), timeout_s=2.0)
    assert rows == [] and skipped == ["numpy on cpu: no answer within 2 s, killed"] and time.monotonic() - started < 30
    jobs = recorded_jobs("r", {**new_config(RunRequest(threads=1), {}, {"epochs": 1}), "matrices": [
        {"axes": {"backend": ["numpy"], "variant": ["default"], "device": ["cpu"]}, "repeats": 1}
    ]})  # fmt: skip
    assert {request.timeout_s for request in session.probe_requests(jobs, 64, 10, False, 10.0)} == {10.0}


def test_precision_given_beside_a_precision_sweep_is_refused_and_a_swept_dimension_named_once(tmp_path, capsys):
    """--precision fp32 was dropped silently, and its jobs labelled "precision=bf16, precision=bf16"."""
    status, _, err = command(capsys, *run_args(tmp_path, "--precision", "fp32", "--sweep", "precision=fp32,bf16"))
    assert status == 2 and len(err.splitlines()) == 1 and "drop --precision" in err and list(tmp_path.iterdir()) == []
    job = Job(run_id="r", dataset="digits", data_dir=None, preset="mlp", config={}, threads=1, target_acc=0.9,
              point={"backend": "numpy", "precision": "bf16", "sweep_value": "bf16"}, sweep_field="precision")  # fmt: skip
    assert job.label == "numpy/default on cpu, precision=bf16, repeat 1"


@pytest.mark.parametrize("flag", ["--timeout", "--schedule-timeout"])
@pytest.mark.parametrize("value", ["1e300", "inf", "nan", "0", "-5"])
def test_an_absurd_wait_is_refused_before_anything_is_written(tmp_path, capsys, flag, value):
    """--timeout 1e300 once overflowed a clock after the tables existed."""
    status, _, err = command(capsys, *run_args(tmp_path, "--backends", "numpy", flag, value))
    assert status == 2 and len(err.splitlines()) == 1 and f"{flag} must be" in err and "(a week)" in err
    assert list(tmp_path.iterdir()) == []


def test_a_run_refused_before_training_leaves_nothing_behind(tmp_path, monkeypatch):
    monkeypatch.setattr(results.shutil, "disk_usage", lambda _: shutil._ntuple_diskusage(1, 1, 0))
    request = RunRequest(backends="numpy", dataset="digits", floors=False, results_dir=str(tmp_path), run_id="r")
    with pytest.raises(results.FrameBenchError, match="MB free"):
        session.run(request, {}, {"epochs": 1})
    assert list(tmp_path.iterdir()) == []


def test_an_absurd_plan_is_refused_in_one_line_before_it_is_built(tmp_path, capsys):
    status, _, err = command(capsys, *run_args(tmp_path, "--repeats", "1000000000"))
    assert status == 2 and len(err.splitlines()) == 1 and "--large-plan" in err and list(tmp_path.iterdir()) == []
    assert plan_size(RunRequest(backends="numpy", device="all", repeats=3), Sweep.parse("batch_size=32,64")) == 12


def test_a_signal_while_the_final_report_is_written_says_how_to_make_it(tmp_path, monkeypatch, capsys):
    def stopped_report(directory):
        os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr("framebench.reports.report.write_report", stopped_report)
    train = scripted_jobs(monkeypatch, tmp_path)  # a job that says it trained: nothing trains
    request = RunRequest(backends="numpy", dataset="digits", floors=False, results_dir=str(tmp_path), run_id="r", threads=1)
    assert session.run(request, {}, train) == 128 + signal.SIGTERM
    err = capsys.readouterr().err
    assert f"framebench plot {tmp_path / 'r'}" in err and load_results(tmp_path / "r")["runs"]["status"].tolist() == ["ok"]
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL


def test_compare_without_new_s_machine_record_names_it(finished, tmp_path, capsys):
    new = shutil.copytree(finished, tmp_path / "new")
    (new / "machine.json").unlink()
    status, out, _ = command(capsys, "compare", str(finished), str(new))
    assert status == 2 and "NEW has no machine record (machine.json)" in out and "no key ran ok" not in out
