"""Shared fixtures. Real MNIST and Fashion-MNIST are found the way users' runs find them (--data-dir or
$FRAMEBENCH_DATA_DIR, the cache, Debian's package); CI sets $FRAMEBENCH_DATA_DIR. Tests never download."""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest

from framebench.cli import main
from framebench.core.data import load_dataset
from framebench.testing import case_of
from tests.training_guard import pytest_runtest_call, pytest_runtest_setup, pytest_runtest_teardown  # noqa: F401  (the fast tier trains nothing)

REPO = Path(__file__).resolve().parent.parent
os.environ.setdefault("KERAS_BACKEND", "tensorflow")  # this process hosts the `keras` backend; children host the others


def framebench(*args: str, env: dict | None = None, timeout: float = 900) -> subprocess.CompletedProcess:
    """`python -m framebench ARGS` in a fresh process from the repository root, as a user runs it."""
    return subprocess.run([sys.executable, "-m", "framebench", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def cli(*args: str) -> subprocess.CompletedProcess:
    """`framebench ARGS` run in this process, for what the process boundary adds nothing to (arguments,
    messages, exit statuses, reports): the same result as `framebench`, without an interpreter's start-up."""
    out, err, status = io.StringIO(), io.StringIO(), 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main(list(args))
        except SystemExit as exc:
            status = exc.code if isinstance(exc.code, int) else 0 if exc.code is None else 1
    return subprocess.CompletedProcess(["framebench", *args], status, out.getvalue(), err.getvalue())


def printed_directory(result: subprocess.CompletedProcess) -> str:
    """The results directory `framebench run` prints as its last line."""
    return result.stdout.strip().splitlines()[-1]


@cache
def mnist_folder() -> Path:
    """Where the documented resolution order finds the real MNIST files."""
    return Path(load_dataset("mnist", allow_download=False).source)


@pytest.fixture(scope="session")
def mnist():
    return load_dataset("mnist", allow_download=False)


@pytest.hookimpl(tryfirst=True)  # before `-m` selects by the marks
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The fast tier checks each backend's conformance on its default variant, its logits and optimizer
    steps; the dropout check (400 training steps of one sample) and the other variants' items (tutorial,
    graph, compile, auto: the same checks on code they mostly share with it) are the slow tier's."""
    for item in items:
        case = case_of(item)
        if case is not None and (":" in case.subject.name or case.check is not None and case.check.name == "dropout"):  # backend[:variant]
            item.add_marker(pytest.mark.slow)


@pytest.fixture(autouse=True)
def no_downloads(monkeypatch):
    """Tests never reach for the network; a missing file must fail loudly instead."""
    monkeypatch.setenv("FRAMEBENCH_NO_DOWNLOAD", "1")
