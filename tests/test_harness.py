"""The run loop end to end through the CLI: exact table columns, determinism, and that a failing,
hanging or diverging run becomes a row while everything already measured stays on disk."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from bench.config import ModelConfig, TrainConfig
from bench.harness import epoch_order, initial_weights
from bench.results import EPOCHS_COLUMNS, RUNS_COLUMNS, STEPS_COLUMNS, load_results
from tests.conftest import REPO

TIME_COLUMNS = ["setup_s", "first_epoch_s", "median_epoch_s", "total_train_s", "samples_per_s", "peak_rss_mb", "epoch_s", "eval_s"]


def framebench(tmp_path, *args, fake_mode="ok", timeout=300):
    env = {**os.environ, "FRAMEBENCH_PLUGINS": "fake=tests.fake_backend:FakeClassifier", "FAKE_MODE": fake_mode}
    floors = ["--no-floors"] if args and args[0] == "run" else []
    return subprocess.run([sys.executable, "-m", "bench", *args, *floors, "--results-dir", str(tmp_path)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def run_dir(result) -> str:
    assert result.returncode in (0, 1), result.stderr
    return result.stdout.strip().splitlines()[-1]


def test_fake_backend_fills_exactly_the_documented_columns(tmp_path):
    result = framebench(tmp_path, "run", "--backends", "fake", "--dataset", "digits", "--epochs", "3", "--repeats", "2",
                        "--batch-size", "100")
    assert result.returncode == 0, result.stderr
    tables = load_results(run_dir(result))
    assert list(tables["runs"].columns) == RUNS_COLUMNS
    assert list(tables["epochs"].columns) == EPOCHS_COLUMNS
    assert list(tables["steps"].columns) == STEPS_COLUMNS
    runs, epochs, steps = tables["runs"], tables["epochs"], tables["steps"]
    assert runs["status"].tolist() == ["ok", "ok"] and runs["seed"].tolist() == [0, 1]
    assert runs["epochs_done"].tolist() == [3, 3]
    assert len(epochs) == 6 and len(steps) == 6 * 15  # 1438 digits in batches of 100
    assert {"git_commit", "cpu", "libraries", "threads", "command"} <= set(tables["env"])
    assert tables["config"]["train"]["epochs"] == 3
    assert "progress" not in result.stdout and "epoch 3" in result.stderr  # progress on stderr, table on stdout
    assert "runs_ok" in result.stdout


def test_same_seed_gives_identical_tables_apart_from_times(tmp_path):
    dirs = []
    for run_id in ("a", "b"):
        result = framebench(tmp_path, "run", "--backends", "numpy", "--dataset", "digits", "--epochs", "2", "--run-id", run_id)
        assert result.returncode == 0, result.stderr
        dirs.append(run_dir(result))
    first, second = (load_results(d) for d in dirs)
    for table in ("runs", "epochs", "steps"):
        a, b = (t[table].drop(columns=["run_id", *[c for c in TIME_COLUMNS if c in t[table]]]) for t in (first, second))
        pd.testing.assert_frame_equal(a, b)
    assert first["steps"]["loss"].nunique() > 10


@pytest.mark.parametrize("mode, status, message", [
    ("crash", "failed", "worker exited with status 3"),
    ("raise", "failed", "RuntimeError: scripted failure"),
    ("diverge", "diverged", "non-finite loss at epoch 2, step 4"),
])
def test_a_failing_run_keeps_what_it_measured_and_the_others_go_on(tmp_path, mode, status, message):
    result = framebench(tmp_path, "run", "--backends", "fake,numpy", "--dataset", "digits", "--epochs", "3", fake_mode=mode)
    assert result.returncode == 1
    tables = load_results(run_dir(result))
    runs = tables["runs"].set_index("backend")
    assert runs.loc["fake", "status"] == status and message in runs.loc["fake", "error"]
    assert runs.loc["fake", "epochs_done"] == 1
    assert runs.loc["numpy", "status"] == "ok"
    assert tables["epochs"].groupby("backend").size().to_dict() == {"fake": 1, "numpy": 3}


def test_a_hanging_run_times_out(tmp_path):
    result = framebench(tmp_path, "run", "--backends", "fake", "--dataset", "digits", "--epochs", "3", "--timeout", "20",
                        fake_mode="hang")
    runs = load_results(run_dir(result))["runs"]
    assert runs["status"].tolist() == ["timeout"] and "--timeout" in runs["error"][0]


def test_gpu_requested_but_absent_is_a_row_not_a_crash(tmp_path):
    result = framebench(tmp_path, "run", "--backends", "numpy", "--dataset", "digits", "--epochs", "1", "--device", "cpu,gpu")
    runs = load_results(run_dir(result))["runs"].set_index("device")
    assert runs.loc["cpu", "status"] == "ok"
    assert runs.loc["gpu", "status"] == "unavailable" and "CPU only" in runs.loc["gpu", "error"]
    assert "not run: numpy/default on gpu: unavailable: NumpyClassifier runs on the CPU only" in result.stdout


@pytest.mark.parametrize("args, message", [
    (["run", "--backends", "mxnet"], "unknown backend 'mxnet'; choose from: numpy"),
    (["run", "--dataset", "cifar"], "unknown dataset 'cifar'"),
    (["run", "--lr", "-1"], "lr must be positive"),
    (["run", "--dataset", "mnist", "--data-dir", "/nonexistent"], "--dataset digits offline"),
])
def test_user_mistakes_get_one_line_and_no_traceback(tmp_path, monkeypatch, args, message):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("FRAMEBENCH_DATA_DIR", raising=False)
    result = framebench(tmp_path, *args)
    assert result.returncode == 2
    assert result.stderr.startswith("error: ") and message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr


def test_initial_weights_and_order_depend_only_on_the_seed():
    model = ModelConfig(hidden=(5,), init="he_normal")
    first, second = initial_weights((4, 5, 3), model, seed=7), initial_weights((4, 5, 3), model, seed=7)
    assert all(np.array_equal(a, b) and a.dtype == np.float32 for a, b in zip(first, second))
    assert not np.array_equal(first[0], initial_weights((4, 5, 3), model, seed=8)[0])
    train = TrainConfig()
    np.testing.assert_array_equal(epoch_order(train, 50, 1, 0), epoch_order(train, 50, 1, 0))
    assert sorted(epoch_order(train, 50, 1, 0)) == list(range(50))
    assert not np.array_equal(epoch_order(train, 50, 1, 0), epoch_order(train, 50, 1, 1))
    np.testing.assert_array_equal(epoch_order(TrainConfig(shuffle=False), 50, 1, 3), np.arange(50))
    replaced = epoch_order(TrainConfig(sampling="with_replacement", steps_per_epoch=6, batch_size=10), 50, 1, 0)
    assert replaced.shape == (60,) and replaced.max() < 50


@pytest.mark.parametrize("init, check", [
    ("he_normal", lambda w, fan_in: abs(w.std() - np.sqrt(2 / fan_in)) < 0.05 * np.sqrt(2 / fan_in)),
    ("glorot_uniform", lambda w, fan_in: np.abs(w).max() <= np.sqrt(6 / (fan_in + 300))),
    ("uniform(0, 0.1)", lambda w, fan_in: w.min() >= 0 and w.max() < 0.1),
    ("truncated_normal(0.1)", lambda w, fan_in: np.abs(w).max() <= 0.2),
    ("torch_default", lambda w, fan_in: np.abs(w).max() <= 1 / np.sqrt(fan_in) and np.abs(w).max() > 0.9 / np.sqrt(fan_in)),
])
def test_init_schemes_have_their_documented_ranges(init, check):
    weights = initial_weights((784, 300, 10), ModelConfig(hidden=(300,), init=init), seed=0)
    assert check(weights[0], 784) and not weights[1].any()
