"""The run loop end to end through the CLI: exact table columns, determinism, and that a failing,
hanging or diverging run becomes a row while everything already measured stays on disk."""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from framebench.core import registry
from framebench.core.config import ModelConfig, TrainConfig
from framebench.core.harness import divergence, epoch_order, initial_weights
from framebench.driver.recorder import JobState, reached_target, summarize
from framebench.errors import FrameBenchError
from framebench.reports import readme
from framebench.reports.floors import load_with_floors
from framebench.store.events import End, Evaluation, Setup
from framebench.store.job import Job
from framebench.store.reader import load_results
from framebench.store.schema import columns
from tests.conftest import REPO, cli, framebench, printed_directory

TIME_COLUMNS = [
    "setup_s",
    "first_epoch_s",
    "median_epoch_s",
    "total_train_s",
    "samples_per_s",
    "peak_rss_mb",
    "epoch_s",
    "eval_s",
    "loadavg_1m",
    "other_cpu_frac",
    "calib_before_s",
    "calib_after_s",
    "steal_frac",
    "started_at",
    "ended_at",
    "floor_epoch_s",
    "own_floor_epoch_s",
    "efficiency",
    "overhead_efficiency",
    "floor_note",
]
PLUGIN = {"FRAMEBENCH_PLUGINS": "fake=tests.fake_backend:FakeClassifier"}


def run_cli(tmp_path, *args, fake_mode="ok", timeout=300, env=None):
    """`framebench ARGS` with the fake plugin, results under tmp_path, GEMM probes off (unless resuming or asked for)."""
    env = {**os.environ, **PLUGIN, "FAKE_MODE": fake_mode, **(env or {})}
    where = [] if "--resume" in args else ["--results-dir", str(tmp_path)] + (["--no-floors"] if "--floors" not in args else [])
    return framebench(*args, *(where if args[0] == "run" else []), env=env, timeout=timeout)


def run_dir(result, status: int = 0) -> str:
    """The results directory a run printed, the run having exited with `status`."""
    assert result.returncode == status, result.stderr
    return printed_directory(result)


@pytest.mark.slow
def test_fake_backend_fills_exactly_the_documented_columns(tmp_path):
    result = run_cli(tmp_path, "run", "--backends", "fake", "--dataset", "digits", "--epochs", "3", "--repeats", "2", "--batch-size", "100")
    assert result.returncode == 0, result.stderr
    tables = load_results(run_dir(result))
    assert list(tables["runs"].columns) == columns("runs")  # the store's columns only: the floors are the reports'
    assert list(load_with_floors(run_dir(result))["runs"].columns) == columns("runs") + [
        "floor_epoch_s",
        "efficiency",
        "own_floor_epoch_s",
        "overhead_efficiency",
        "floor_note",
    ]
    assert list(tables["epochs"].columns) == columns("epochs")
    assert list(tables["steps"].columns) == columns("steps")
    assert list(tables["evals"].columns) == columns("evals") and len(tables["evals"]) == 6  # each epoch's end, as no --eval-every
    assert list(tables["gemm"].columns) == columns("gemm") and tables["gemm"].empty  # --no-floors
    runs, epochs, steps = tables["runs"], tables["epochs"], tables["steps"]
    assert runs["status"].tolist() == ["ok", "ok"] and runs["seed"].tolist() == ["0", "0"] and runs["attempt"].tolist() == [1, 1]
    assert runs["epochs_done"].tolist() == [3, 3] and (runs["node"] != "").all()
    assert (runs["samples_per_epoch"] == 1438).all() and (runs["batch_size"] == 100).all()
    assert len(epochs) == 6 and len(steps) == 6 * 15  # 1438 digits in batches of 100
    assert {"git_commit", "cpu", "libraries", "threads", "command", "nodes"} <= set(tables["machine"])
    assert tables["config"]["train"]["epochs"] == 3 and tables["config"]["matrices"][0]["axes"]["backend"] == ["fake"]
    assert "epoch 3" in result.stderr and "runs_ok" in result.stdout  # progress on stderr, table on stdout


@pytest.mark.slow
def test_same_seed_gives_identical_tables_apart_from_times(tmp_path):
    dirs = []
    for run_id in ("a", "b"):
        result = run_cli(tmp_path, "run", "--backends", "numpy", "--dataset", "digits", "--epochs", "2", "--run-id", run_id)
        assert result.returncode == 0, result.stderr
        dirs.append(run_dir(result))
    first, second = (load_results(d) for d in dirs)
    for table in ("runs", "epochs", "steps"):
        a, b = (t[table].drop(columns=["run_id", *[c for c in TIME_COLUMNS if c in t[table]]]) for t in (first, second))
        pd.testing.assert_frame_equal(a, b)
    assert first["steps"]["loss"].nunique() > 10


@pytest.mark.slow
@pytest.mark.parametrize(
    "mode, status, message",
    [
        ("crash", "failed", "worker exited with status 3"),
        ("raise", "failed", "RuntimeError: scripted failure"),
        ("diverge", "diverged", "non-finite loss at epoch 2, step 4"),
    ],
)
def test_a_failing_run_keeps_what_it_measured_and_the_others_go_on(tmp_path, mode, status, message):
    result = run_cli(tmp_path, "run", "--backends", "fake,numpy", "--dataset", "digits", "--epochs", "3", fake_mode=mode)
    assert result.returncode == 1
    tables = load_results(run_dir(result, status=1))
    runs = tables["runs"].set_index("backend")
    assert runs.loc["fake", "status"] == status and message in runs.loc["fake", "error"]
    assert runs.loc["fake", "epochs_done"] == 1
    assert runs.loc["numpy", "status"] == "ok"
    assert tables["epochs"].groupby("backend").size().to_dict() == {"fake": 1, "numpy": 3}


def test_a_loss_that_blows_up_while_finite_is_diverged():
    """A finite epoch mean above DIVERGENCE_FACTOR x the first step's loss: the finite rule, not a NaN."""
    blown_up = np.array([2.4, 30.0, 1e21])
    assert np.isfinite(blown_up).all()
    assert divergence(blown_up, initial_loss=2.4, epoch=1) == (
        "training diverged: epoch 1's mean loss 3.33e+20 is over 10x the initial 2.4; lower --lr or check the init"
    )
    assert divergence(np.array([2.4, 23.0]), initial_loss=2.4, epoch=1) is None  # mean 12.7 < 24
    assert "non-finite loss at epoch 2, step 2" in divergence(np.array([1.0, np.inf]), initial_loss=2.4, epoch=2)


@pytest.mark.slow
def test_a_run_whose_loss_blows_up_while_finite_ends_diverged_by_that_rule(tmp_path):
    """Adam at lr 1e6 keeps a finite loss far above where it started: the run ends by the finite rule."""
    result = run_cli(tmp_path, "run", "--backends", "numpy", "--dataset", "digits", "--epochs", "3", "--lr", "1e6")
    assert result.returncode == 1
    runs = load_results(run_dir(result, status=1))["runs"]
    assert runs["status"].tolist() == ["diverged"]
    assert "over 10x the initial" in runs["error"][0], runs["error"][0]


@pytest.mark.parametrize(
    "target, expected",
    [(0.5, (1.0, 10, 0.25)), (0.9, (3.0, 30, 0.75)), (0.95, (7.0, 40, 1.0)), (0.99, (None, None, None))],
)
def test_time_to_target_is_the_first_evaluation_reaching_the_target_in_seconds_steps_and_epochs(target, expected):
    """Evaluations every 10 steps of a 40-step epoch (1000 samples, batch 25); a target never reached is no error, only empty."""
    point = {"backend": "numpy", "variant": "default", "device": "cpu"}
    job = Job("r", "digits", None, "ci", config={"train": {"batch_size": 25}}, threads=1, target_acc=target, point=point)
    points = [(1, 10, 1.0, 0.5), (1, 20, 2.0, 0.7), (1, 30, 3.0, 0.92), (1, 40, 7.0, 0.95)]
    state = JobState(job, setup=Setup(0.1, "1", 1000), evaluations=[Evaluation(e, s, t, 1.0, acc, 0.01) for e, s, t, acc in points])
    row = summarize(state, End("ok"))
    assert (row["time_to_target_s"], row["steps_to_target"], row["epochs_to_target"]) == expected and row["status"] == "ok"
    reached = reached_target(state.evaluations, target)
    assert (reached.step if reached else None) == expected[1]


@pytest.mark.slow
def test_repeats_rerun_the_same_seed(tmp_path):
    result = run_cli(tmp_path, "run", "--backends", "numpy", "--dataset", "digits", "--epochs", "1", "--repeats", "2", "--seed", "5")
    assert result.returncode == 0, result.stderr
    tables = load_results(run_dir(result))
    assert tables["runs"]["seed"].tolist() == ["5", "5"]
    steps = tables["steps"].set_index(["repeat", "epoch", "step"])["loss"]
    pd.testing.assert_series_equal(steps.loc[0], steps.loc[1])


def test_an_entry_needing_another_environment_is_refused_in_this_process(monkeypatch):
    monkeypatch.setenv("FRAMEBENCH_TEST_SETTING", "here")
    entry = registry.Entry("other", "default", "tests.fake_backend:FakeClassifier", "", variables={"FRAMEBENCH_TEST_SETTING": "there"})
    assert registry.needs_own_process(entry)
    with pytest.raises(
        FrameBenchError, match="^other needs FRAMEBENCH_TEST_SETTING=there but this process has FRAMEBENCH_TEST_SETTING=here; run"
    ):
        registry.load(entry)
    assert registry.load(dataclasses.replace(entry, variables={"FRAMEBENCH_TEST_SETTING": "here"})).__name__ == "FakeClassifier"


@pytest.mark.parametrize("page", sorted(readme.PAGES))
def test_the_readme_command_rewrites_each_generated_table_from_its_source(page):
    """`framebench readme` rewrites the example results' table (README.md) and the backends' table (docs/backends.md)."""
    text = (REPO / page).read_text()
    stale = re.sub(r"(<!-- ([a-z-]+-table): generated by [^\n]*-->).*?(<!-- /\2 -->)", r"\1\nSTALE\n\3", text, flags=re.S)
    assert stale.count("STALE") == len(readme.PAGES[page])
    rewritten = readme.generated(page, stale)
    assert "STALE" not in rewritten and all(make() in rewritten for _, make in readme.PAGES[page].values())
    assert rewritten == readme.generated(page, text)  # whatever a block held before


@pytest.mark.slow
def test_a_hanging_run_times_out(tmp_path):
    result = run_cli(tmp_path, "run", "--backends", "fake", "--dataset", "digits", "--epochs", "3", "--timeout", "20", fake_mode="hang")
    runs = load_results(run_dir(result, status=1))["runs"]
    assert runs["status"].tolist() == ["timeout"] and "--timeout" in runs["error"][0]


@pytest.mark.slow
def test_gpu_requested_but_absent_is_a_row_not_a_crash(tmp_path):
    result = run_cli(tmp_path, "run", "--backends", "numpy", "--dataset", "digits", "--epochs", "1", "--device", "cpu,gpu")
    runs = load_results(run_dir(result))["runs"].set_index("device")
    assert result.returncode == 0
    assert runs.loc["cpu", "status"] == "ok"
    assert runs.loc["gpu", "status"] == "unavailable" and "runs on cpu only" in runs.loc["gpu", "error"]
    assert "not run: numpy/default on gpu: unavailable: numpy runs on cpu only" in result.stdout


@pytest.mark.slow
def test_a_run_where_nothing_trained_still_reports(tmp_path):
    """Every job unavailable: the reasons, report.md and the directory, exit 1, no traceback."""
    result = run_cli(tmp_path, "run", "--backends", "fake", "--dataset", "digits", "--epochs", "1", "--device", "gpu")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "not run: fake/default on gpu: unavailable" in result.stdout
    assert os.path.exists(os.path.join(result.stdout.strip().splitlines()[-1], "report.md"))


@pytest.mark.slow
def test_duplicate_names_and_devices_give_one_job_each(tmp_path):
    result = run_cli(
        tmp_path,
        "run",
        "--backends",
        "fake,fake",
        "--variants",
        "default,default",
        "--dataset",
        "digits",
        "--epochs",
        "1",
        "--device",
        "cpu,auto,cpu",
    )
    assert result.returncode == 0, result.stderr
    directory = run_dir(result)
    runs = load_results(directory)["runs"]
    assert len(runs) == 1 and runs["device"].tolist() == ["cpu"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["run", "--backends", "mxnet"], "unknown backend 'mxnet'; --backends takes: numpy"),
        (["run", "--variants", "nosuch"], "unknown variant 'nosuch'; --variants takes: default"),
        (["run", "--backends", "jax", "--variants", "tutorial"], "no registered (backend, variant) pair"),
        (["run", "--dataset", "cifar"], "unknown dataset 'cifar'"),
        (["run", "--lr", "-1"], "lr must be a finite number > 0"),
        (["run", "--lr", "inf"], "lr must be a finite number > 0"),
        (["run", "--lr", "abc"], "argument --lr: invalid float value"),
        (["run", "--dataset", "mnist", "--data-dir", "/nonexistent"], "--dataset digits offline"),
        (["run", "--timeout", "inf"], "--timeout must be a finite number of seconds > 0"),
        (["run", "--timeout", "nan"], "--timeout must be a finite number of seconds > 0"),
        (["run", "--seed", "-1"], "'-1' is not a seed (a non-negative integer)"),
        (["run", "--seeds", "0,x"], "'x' is not a seed (a non-negative integer) or a range of them"),
        (["run", "--seeds", "1.5"], "'1.5' is not a seed"),
        (["run", "--seeds", "9-3"], "the range 9-3 is empty; write it lowest first (3-9)"),
        (["run", "--seeds", ","], "--seeds names no seed"),
        (["run", "--seeds", "0-999999999"], "this matrix plans up to 1,000,000,000 jobs"),
        (["run", "--same-seed"], "--same-seed is gone: every repeat reruns the same seeds now"),
        (["run", "--eval-every", "-5"], "eval_every must be >= 0 steps"),
        (["run", "--init", "normal(-1)"], "the standard deviation must be > 0"),
        (["run", "--init", "uniform(1, 0)"], "needs low < high"),
        (["run", "--target-acc", "0"], "--target-acc must be in (0, 1]"),
        (["run", "--target-acc", "1.5"], "--target-acc must be in (0, 1]"),
        (["run", "--steps-per-epoch", "10"], "--steps-per-epoch applies only with --sampling with_replacement"),
        (["run", "--run-id", "../../x"], "must be a plain name"),
        (["run", "--run-id", "/tmp/x"], "must be a plain name"),
        (["run", "--threads", "9999"], "pass --oversubscribe"),
        (["run", "--sweep", "optimizer=sgd,adam"], "--sweep cannot vary 'optimizer'"),
        (["run", "--sweep", "batch_size=16,x"], "'x' is not a valid value"),
        (["run", "--sweep", "batch_size=0"], "batch_size must be positive"),
        (["run", "--sweep", "threads=1,0"], "--sweep threads=0: threads must be at least 1"),
        (["run", "--threads", "0"], "--threads 0: threads must be at least 1"),
        (["run", "--sweep", "batch_size=64,064"], "gives the same configuration twice"),
        (["run", "--sweep", "lr=0.01,1e-2"], "gives the same configuration twice"),
        (["run", "--resume", "/nonexistent"], "not a results directory"),
        (["run", "--executor", "slurm"], "unknown executor 'slurm'"),
        (["run", "--address", "127.0.0.1:1"], "--address needs --executor ray"),
    ],
)
def test_user_mistakes_get_one_line_and_no_traceback(tmp_path, monkeypatch, args, message):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("FRAMEBENCH_DATA_DIR", raising=False)
    extra = [] if "--dataset" in args or "--resume" in args else ["--dataset", "digits"]
    where = [] if "--resume" in args else ["--results-dir", str(tmp_path), "--no-floors"]
    result = cli(*args, *extra, *where)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("error: ") and message in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr


@pytest.mark.slow
def test_resume_refuses_flags_that_would_change_the_matrix(tmp_path):
    first = run_cli(tmp_path, "run", "--backends", "fake", "--dataset", "digits", "--epochs", "1", "--run-id", "r")
    assert first.returncode == 0, first.stderr
    result = run_cli(tmp_path, "run", "--resume", str(tmp_path / "r"), "--backends", "numpy", "--lr", "0.1")
    assert result.returncode == 2 and "drop --backends, --lr" in result.stderr


def test_a_results_dir_that_is_a_file_is_one_line(tmp_path):
    (tmp_path / "file").write_text("x")
    result = cli("run", "--dataset", "digits", "--results-dir", str(tmp_path / "file"))
    assert result.returncode == 2 and "is a file, not a folder" in result.stderr and len(result.stderr.splitlines()) == 1


@pytest.mark.slow
def test_a_malformed_plugin_spoils_only_itself(tmp_path):
    env = {**os.environ, "FRAMEBENCH_PLUGINS": "broken,fake=tests.fake_backend:FakeClassifier"}
    helped = framebench("list", "--help", env=env)
    assert helped.returncode == 0 and "usage" in helped.stdout
    result = framebench(
        "run", "--backends", "broken,fake", "--dataset", "digits", "--epochs", "1", "--no-floors", "--results-dir", str(tmp_path), env=env
    )
    runs = load_results(printed_directory(result))["runs"].set_index("backend")
    assert runs.loc["fake", "status"] == "ok"
    assert runs.loc["broken", "status"] == "unavailable" and "is not name[:variant]=module:Class" in runs.loc["broken", "error"]


def test_initial_weights_and_order_depend_only_on_the_seed():
    model = ModelConfig(hidden=(5,), init="he_normal")
    first, second = initial_weights((4, 5, 3), model, seed=7), initial_weights((4, 5, 3), model, seed=7)
    assert all(np.array_equal(a, b) and a.dtype == np.float32 for a, b in zip(first, second, strict=True))
    assert not np.array_equal(first[0], initial_weights((4, 5, 3), model, seed=8)[0])
    train = TrainConfig()
    np.testing.assert_array_equal(epoch_order(train, 50, 1, 0), epoch_order(train, 50, 1, 0))
    assert sorted(epoch_order(train, 50, 1, 0)) == list(range(50))
    assert not np.array_equal(epoch_order(train, 50, 1, 0), epoch_order(train, 50, 1, 1))
    np.testing.assert_array_equal(epoch_order(TrainConfig(shuffle=False), 50, 1, 3), np.arange(50))
    replaced = epoch_order(TrainConfig(sampling="with_replacement", steps_per_epoch=6, batch_size=10), 50, 1, 0)
    assert replaced.shape == (60,) and replaced.max() < 50


@pytest.mark.parametrize(
    "init, check",
    [
        ("he_normal", lambda w, fan_in: abs(w.std() - np.sqrt(2 / fan_in)) < 0.05 * np.sqrt(2 / fan_in)),
        ("glorot_uniform", lambda w, fan_in: np.abs(w).max() <= np.sqrt(6 / (fan_in + 300))),
        ("uniform(0, 0.1)", lambda w, fan_in: w.min() >= 0 and w.max() < 0.1),
        ("truncated_normal(0.1)", lambda w, fan_in: np.abs(w).max() <= 0.2),
        ("torch_default", lambda w, fan_in: np.abs(w).max() <= 1 / np.sqrt(fan_in) and np.abs(w).max() > 0.9 / np.sqrt(fan_in)),
    ],
)
def test_init_schemes_have_their_documented_ranges(init, check):
    weights = initial_weights((784, 300, 10), ModelConfig(hidden=(300,), init=init), seed=0)
    assert check(weights[0], 784) and not weights[1].any()


def test_importing_the_harness_imports_no_framework():
    code = (
        "import sys, framebench.cli, framebench.driver.session, framebench.core.harness, framebench.core.registry, "
        "framebench.reports.report; "
        "print(sorted({'tensorflow', 'torch', 'jax', 'keras', 'ray'} & set(sys.modules)))"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.strip() == "[]", result.stdout + result.stderr


def test_the_readme_example_table_is_generated_from_results_example():
    result = cli("readme", "--check")
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.slow
def test_list_shows_exactly_the_registered_pairs_and_their_devices():
    result = framebench("list")
    assert result.returncode == 0, result.stderr
    names = [line.split()[0] for line in result.stdout.splitlines() if line.startswith("  ") and not line.startswith("   ")]
    registered = [entry.name for entry in registry.REGISTRY.values()]
    assert names[: len(registered)] == registered
    cudagraphs = result.stdout.split("torch:cudagraphs", 1)[1].splitlines()[1]
    assert "cpu: not supported" in cudagraphs and "gpu:" in cudagraphs
