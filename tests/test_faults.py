"""Fault injection with real processes and real files: a signal or kill -9 to the driver or to a worker,
torn, empty and garbage tables, a results directory that is read-only or fills up, two writers at
once. Each case asserts the exit status, the one-line message, and that no earlier row changed."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pandas as pd
import pytest

from framebench.driver.recorder import STOP_SIGNALS, Interrupts, Stopped
from framebench.store.files import append_rows
from framebench.store.reader import load_results, read_table
from tests.conftest import REPO, cli, framebench
from tests.tables import epoch_rows, finished_run

PLUGIN = "fake=tests.fake_backend:FakeClassifier"


def env_for(mode: str, pid_dir: Path | None = None) -> dict:
    env = {**os.environ, "FRAMEBENCH_PLUGINS": PLUGIN, "FAKE_MODE": mode}
    if pid_dir:
        env["FAKE_PID_DIR"] = str(pid_dir)
    return env


def run_args(results: Path, *args: str) -> list[str]:
    return ["run", "--dataset", "digits", "--no-floors", "--results-dir", str(results), *args]


def run_fake(results: Path, *args: str) -> subprocess.CompletedProcess:
    """`framebench run` on digits with the fake plugin behaving well."""
    return framebench(*run_args(results, *args), env=env_for("ok"))


def wait_for(condition, what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def rows(path: Path) -> int:
    return max(len(path.read_text().splitlines()) - 1, 0) if path.exists() else 0


def alive(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "\nState:\tZ" not in status


@contextmanager
def started(results: Path, *args: str, mode: str, pid_dir: Path):
    """A `framebench run` in the background, its first fake worker past epoch 1 (hanging in epoch 2)."""
    process = subprocess.Popen(
        [sys.executable, "-m", "framebench", *run_args(results, *args)],
        cwd=REPO,
        env=env_for(mode, pid_dir),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(lambda: rows(results / "r" / "epochs.csv") >= 1, "epoch 1")
        yield process
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate()


def worker_pids(pid_dir: Path) -> list[int]:
    return [int(p.name) for p in pid_dir.iterdir()]


@pytest.mark.parametrize("signum, status", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
@pytest.mark.slow
def test_a_stopped_driver_kills_its_worker_records_the_job_and_can_resume(tmp_path, signum, status):
    pids = tmp_path / "pids"
    pids.mkdir()
    with started(tmp_path, "--backends", "fake,numpy", "--epochs", "3", "--run-id", "r", mode="hang", pid_dir=pids) as process:
        process.send_signal(signum)
        out, err = process.communicate(timeout=60)
    assert process.returncode == status, err
    assert f"interrupted by {signal.Signals(signum).name}" in err and f"framebench run --resume {tmp_path / 'r'}" in err
    assert "Traceback" not in err
    wait_for(lambda: not any(alive(pid) for pid in worker_pids(pids)), "the worker to be gone", timeout=10)
    tables = load_results(tmp_path / "r")
    runs = tables["runs"]
    assert runs[["backend", "status", "epochs_done"]].values.tolist() == [["fake", "interrupted", 1]]
    assert (tmp_path / "r" / "report.md").exists() and out.strip().splitlines()[-1] == str(tmp_path / "r")
    epochs_before = tables["epochs"]
    resumed = framebench("run", "--resume", str(tmp_path / "r"), env=env_for("ok"))
    assert resumed.returncode == 0, resumed.stderr
    after = load_results(tmp_path / "r")
    assert after["runs"]["status"].tolist() == ["interrupted", "ok", "ok"]
    assert after["runs"]["attempt"].tolist() == [1, 2, 1]
    pd.testing.assert_frame_equal(after["epochs"].iloc[: len(epochs_before)], epochs_before)
    again = framebench("run", "--resume", str(tmp_path / "r"), env=env_for("ok"))
    assert again.returncode == 0 and "0 to run" in again.stderr and len(load_results(tmp_path / "r")["runs"]) == 3


def test_a_signal_while_a_job_s_rows_are_written_is_raised_once_they_are_whole():
    """Otherwise a job could end with no runs.csv row (or two), or an epoch without its steps."""
    saved = {name: signal.getsignal(name) for name in STOP_SIGNALS}
    interrupts, written = Interrupts(), []
    try:
        with pytest.raises(Stopped) as stopped:
            with interrupts:
                interrupts.handle(signal.SIGTERM, None)
                written.append("row")
        assert written == ["row"] and stopped.value.signum == signal.SIGTERM
        with pytest.raises(Stopped):  # between writes it stops at once
            interrupts.handle(signal.SIGINT, None)
    finally:
        for name, handler in saved.items():
            signal.signal(name, handler)


@pytest.mark.slow
def test_kill_9_of_the_driver_leaves_no_worker_and_parseable_tables(tmp_path):
    pids = tmp_path / "pids"
    pids.mkdir()
    with started(tmp_path, "--backends", "fake,numpy", "--epochs", "3", "--run-id", "r", mode="hang", pid_dir=pids) as process:
        process.kill()
        process.communicate(timeout=30)
    wait_for(lambda: not any(alive(pid) for pid in worker_pids(pids)), "the orphaned worker to die", timeout=10)
    tables = load_results(tmp_path / "r")
    assert tables["runs"].empty and len(tables["epochs"]) == 1  # no row was finished; the measured epoch is kept
    resumed = framebench("run", "--resume", str(tmp_path / "r"), env=env_for("ok"))
    assert resumed.returncode == 0, resumed.stderr
    runs = load_results(tmp_path / "r")["runs"]
    superseded = [["fake", 1, "interrupted"], ["fake", 2, "ok"], ["numpy", 1, "ok"]]  # the killed attempt gets its row at resume
    assert runs[["backend", "attempt", "status"]].values.tolist() == superseded and "superseded" in runs["error"][0]
    after = load_results(tmp_path / "r")  # its next attempt never shares a number with the killed one's epochs and steps
    assert not after["epochs"].duplicated(["backend", "attempt", "epoch"]).any()
    assert not after["steps"].duplicated(["backend", "attempt", "epoch", "step"]).any()


@pytest.mark.slow
def test_kill_9_of_a_worker_is_a_failed_row_and_the_matrix_goes_on(tmp_path):
    pids = tmp_path / "pids"
    pids.mkdir()
    with started(tmp_path, "--backends", "fake,numpy", "--epochs", "3", "--run-id", "r", mode="hang", pid_dir=pids) as process:
        os.kill(worker_pids(pids)[0], signal.SIGKILL)
        process.communicate(timeout=120)
    assert process.returncode == 1
    runs = load_results(tmp_path / "r")["runs"].set_index("backend")
    assert runs.loc["fake", "status"] == "failed" and "worker died with SIGKILL" in runs.loc["fake", "error"]
    assert runs.loc["fake", "epochs_done"] == 1 and runs.loc["numpy", "status"] == "ok"


@pytest.mark.slow
def test_a_second_writer_is_refused_and_the_first_is_untouched(tmp_path):
    pids = tmp_path / "pids"
    pids.mkdir()
    with started(tmp_path, "--backends", "fake", "--epochs", "3", "--run-id", "r", mode="hang", pid_dir=pids) as process:
        epochs = (tmp_path / "r" / "epochs.csv").read_bytes()
        second = run_fake(tmp_path, "--backends", "fake", "--epochs", "3", "--run-id", "r")
        assert second.returncode == 2 and "is being written by framebench run pid" in second.stderr
        assert len(second.stderr.splitlines()) == 1
        assert (tmp_path / "r" / "epochs.csv").read_bytes() == epochs
        process.terminate()


@pytest.mark.slow
def test_appending_another_configuration_is_refused(tmp_path):
    first = run_fake(tmp_path, "--backends", "fake", "--epochs", "2", "--run-id", "r")
    assert first.returncode == 0, first.stderr
    runs = (tmp_path / "r" / "runs.csv").read_bytes()
    other = run_fake(tmp_path, "--backends", "fake", "--epochs", "3", "--run-id", "r")
    assert other.returncode == 2 and "holds another configuration (train differ)" in other.stderr and "--resume" in other.stderr
    seeds = run_fake(tmp_path, "--backends", "fake", "--epochs", "2", "--seed", "5", "--run-id", "r")  # a seed is one more point
    assert seeds.returncode == 0 and "1 job(s) already ok" in seeds.stderr
    same = run_fake(tmp_path, "--backends", "fake,numpy", "--epochs", "2", "--run-id", "r")
    assert same.returncode == 0 and "2 job(s) already ok" in same.stderr  # the same experiment grows by what is new
    assert (tmp_path / "r" / "runs.csv").read_bytes().startswith(runs) and rows(tmp_path / "r" / "runs.csv") == 3
    env = load_results(tmp_path / "r")["machine"]  # every command is on record: the earlier ones' rows came from their nodes
    commands = [e["command"] for e in env["earlier"]]
    assert commands[0] == env["command"].replace("fake,numpy", "fake") and "--seed 5" in commands[1] and len(commands) == 2
    assert "earlier into this directory" in (tmp_path / "r" / "report.md").read_text()
    plugin_gone = framebench("run", "--resume", str(tmp_path / "r"), env={**os.environ, "FRAMEBENCH_PLUGINS": ""})
    assert plugin_gone.returncode == 2 and "names backend(s) not registered here (fake)" in plugin_gone.stderr


@pytest.fixture(scope="module")
def finished_once(tmp_path_factory):
    """One real finished run of the fake backend, measured once for the tests that damage a copy of it."""
    parent = tmp_path_factory.mktemp("finished")
    result = run_fake(parent, "--backends", "fake", "--epochs", "2", "--repeats", "2", "--run-id", "r")
    assert result.returncode == 0, result.stderr
    return parent / "r"


@pytest.fixture
def finished(finished_once, tmp_path):
    """A copy of the finished run (under tmp_path/r) for one test to damage and append to."""
    return Path(shutil.copytree(finished_once, tmp_path / "r"))


@pytest.fixture
def synthetic(tmp_path):
    """A finished run written row by row (tests.tables: nothing trains) for one test to damage."""
    return finished_run(tmp_path / "r")


@pytest.mark.slow
def test_a_torn_last_row_is_ignored_when_read_and_cut_before_the_next_append(finished):
    runs = finished / "runs.csv"
    whole = runs.read_bytes()
    runs.write_bytes(whole + b"r,fake,default,cpu,digits,mlp,,,2,2,1,vm,vm,o")  # a writer killed mid-row
    # --accuracy-only: this run's own timings, taken on whatever machine runs the tests, are not what is tested
    for args in (["plot", str(finished)], ["compare", str(finished), str(finished), "--accuracy-only"]):
        result = cli(*args)
        assert result.returncode == 0 and "torn last row" in result.stderr, result.stderr
    appended = run_fake(finished.parent, "--backends", "fake,numpy", "--epochs", "2", "--repeats", "2", "--run-id", "r")
    assert appended.returncode == 0, appended.stderr
    text = runs.read_bytes()
    assert text.startswith(whole) and b",o\n" not in text and b",or," not in text
    table = load_results(finished)["runs"]
    assert len(table) == 4 and set(table["status"]) == {"ok"}


def test_a_table_cut_at_any_byte_reads_as_its_whole_rows_even_with_line_breaks_in_a_cell(tmp_path):
    """Rows are one line each (line breaks in text become spaces), so a kill at any byte leaves whole rows."""
    job = {"run_id": "r", "repeat": 0, "attempt": 1}
    rows = [{**job, "status": "ok"}, {**job, "status": "failed", "error": "line one\nline two\r\nthree"}]
    append_rows(tmp_path, "runs", rows)
    path = tmp_path / "runs.csv"
    whole = path.read_bytes()
    assert whole.count(b"\n") == 3 and read_table(tmp_path, "runs")["error"].tolist() == ["", "line one line two three"]
    header = whole.index(b"\n") + 1
    for size in range(header, len(whole) + 1):
        path.write_bytes(whole[:size])
        assert len(read_table(tmp_path, "runs")) == whole[:size].count(b"\n") - 1, size


def test_a_torn_row_longer_than_one_read_block_keeps_every_whole_row(tmp_path):
    epochs = epoch_rows(backend="fake")
    append_rows(tmp_path, "epochs", epochs[:2])
    path = tmp_path / "epochs.csv"
    whole = path.read_bytes()
    path.write_bytes(whole + b"r," + b"x" * 200_000)
    append_rows(tmp_path, "epochs", epochs[2:])
    assert path.read_bytes().startswith(whole) and read_table(tmp_path, "epochs")["epoch"].tolist() == [1, 2, 3]


@pytest.mark.slow
def test_an_empty_steps_table_gets_its_header_back(finished):
    (finished / "steps.csv").write_bytes(b"")
    assert load_results(finished)["steps"].empty
    appended = run_fake(finished.parent, "--backends", "fake,numpy", "--epochs", "2", "--repeats", "2", "--run-id", "r")
    assert appended.returncode == 0, appended.stderr
    steps = load_results(finished)["steps"]
    assert (finished / "steps.csv").read_text().startswith("run_id,seed,backend,variant") and set(steps["backend"]) == {"numpy"}


@pytest.mark.parametrize(
    "content, message",
    [
        (b"\x00\x01\x02garbage\xff\xfe\n", "is not a framebench table"),
        (b"a,b,c\n1,2,3\n", "is not a framebench table"),
        (b"\x00\xff garbage without a single newline", "is not a framebench table (no header line)"),
    ],
)
@pytest.mark.parametrize("args", [["plot"], ["compare", "BASE"], ["check"], ["thresholds"]])
def test_garbage_tables_are_one_line_errors_in_every_command(synthetic, content, message, args):
    (synthetic / "runs.csv").write_bytes(content)
    argv = [a.replace("BASE", str(synthetic)) for a in args] + [str(synthetic)]
    result = cli(*argv)
    assert result.returncode == 2 and result.stderr.startswith("error: ") and message in result.stderr
    assert len(result.stderr.splitlines()) == 1


@pytest.mark.parametrize("content", [b"", None])
def test_empty_or_header_only_runs_say_so(synthetic, content):
    runs = synthetic / "runs.csv"
    runs.write_bytes(content if content is not None else runs.read_bytes().splitlines(keepends=True)[0])
    assert cli("plot", str(synthetic)).returncode == 0
    for args in (["check", str(synthetic)], ["thresholds", str(synthetic), "--output", str(synthetic / "t.csv")]):
        result = cli(*args)
        assert result.returncode == 2 and "runs" in result.stderr and len(result.stderr.splitlines()) == 1
    compared = cli("compare", str(synthetic), str(synthetic))
    assert compared.returncode == 2 and "nothing" in (compared.stdout + compared.stderr)


def test_a_directory_without_config_is_one_line(synthetic):
    (synthetic / "config.json").unlink()
    for args in (["plot", str(synthetic)], ["check", str(synthetic)], ["compare", str(synthetic), str(synthetic)]):
        result = cli(*args)
        assert result.returncode == 2 and "not a results directory (no config.json)" in result.stderr


def test_an_unwritable_output_path_is_one_line(synthetic, tmp_path):
    result = cli("compare", str(synthetic), str(synthetic), "--markdown", str(tmp_path / "missing" / "x.md"))
    assert result.returncode == 2 and "cannot write --markdown" in result.stderr
    result = cli("thresholds", str(synthetic), "--output", str(tmp_path / "missing" / "t.csv"))
    assert result.returncode == 2 and "cannot write --output" in result.stderr


@contextmanager
def mounted_tmpfs(path: Path, *options: str):
    """A real small (or read-only) filesystem; skipped where this process may not mount one."""
    path.mkdir()
    mount = subprocess.run(["mount", "-t", "tmpfs", "-o", ",".join(options), "tmpfs", str(path)], capture_output=True, text=True)
    if mount.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({mount.stderr.strip()}): needs root")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


@pytest.mark.slow
def test_a_read_only_results_dir_is_one_line_before_training(tmp_path):
    with mounted_tmpfs(tmp_path / "ro", "ro", "size=1m") as readonly:
        result = run_fake(readonly, "--backends", "fake")
    assert result.returncode == 2 and "cannot write results under" in result.stderr and "Read-only" in result.stderr
    assert len(result.stderr.splitlines()) == 1


@pytest.mark.slow
def test_a_results_dir_too_small_for_the_matrix_is_refused_before_training(tmp_path):
    with mounted_tmpfs(tmp_path / "small", "size=256k") as small:
        result = run_fake(small, "--backends", "fake", "--epochs", "20", "--batch-size", "1", "--run-id", "r")
        assert result.returncode == 2 and "MB free but this matrix writes about" in result.stderr
        assert not (small / "r" / "epochs.csv").exists() or rows(small / "r" / "epochs.csv") == 0


@pytest.mark.slow
def test_a_disk_that_fills_up_mid_run_is_one_error_and_every_table_stays_whole(tmp_path):
    pids = tmp_path / "pids"
    pids.mkdir()
    with mounted_tmpfs(tmp_path / "disk", "size=2m") as disk:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "framebench",
                *run_args(disk, "--backends", "fake", "--epochs", "60", "--batch-size", "8", "--run-id", "r"),
            ],
            cwd=REPO,
            env={**env_for("ok", pids), "FAKE_EPOCH_SLEEP": "0.2"},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        wait_for(lambda: rows(disk / "r" / "epochs.csv") >= 2, "two epochs")
        filler = disk / "filler"
        subprocess.run(["dd", "if=/dev/zero", f"of={filler}", "bs=64k"], capture_output=True)  # until the disk is full
        out, err = process.communicate(timeout=120)
        assert process.returncode == 2, err
        assert "No space left on device" in err and f"--resume {disk / 'r'}" in err and "Traceback" not in err
        wait_for(lambda: not any(alive(pid) for pid in worker_pids(pids)), "the worker to be gone", timeout=10)
        filler.unlink()
        tables = load_results(disk / "r")  # every table parses: whole rows or none
        assert len(tables["epochs"]) >= 2 and all((disk / "r" / f"{t}.csv").read_bytes().endswith(b"\n") for t in ("epochs", "steps"))
        steps = tables["steps"].groupby("epoch").size()
        assert (steps.iloc[:-1] == steps.iloc[0]).all()  # no epoch's steps were half written
