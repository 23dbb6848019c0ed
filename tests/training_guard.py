"""The fast tier trains nothing: a test not marked `slow` that starts a training process fails, naming
it. Training processes are the worker (`python -m framebench.driver.worker` reading a job; not one asked
only to describe its backend or its protocol), the op profiler's child, and the framebench commands that
start them (`run`, `gate`, `study`, `ops`) in a process of their own. Every process this interpreter starts
is seen through its audit hook (`subprocess.Popen`), in a test's setup (a fixture that trains counts
against the first test using it), call and teardown.

tests/conftest.py registers these hooks; a pytest run of its own takes them with `-p tests.training_guard`."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import pytest

TRAINING_MODULES = ("framebench.driver.worker", "framebench.driver.opprofile")
NOT_TRAINING = {"--describe", "--protocol"}  # a worker asked only what its backend is, or which protocol it speaks
TRAINING_COMMANDS = ("run", "gate", "study", "ops")  # the framebench commands that start workers
WATCHING: list[list[str]] = []  # one list per test phase running (nested when a test runs pytest in this process): what it started


def trains(argv) -> bool:
    """Whether a process started with `argv` trains (see the module's docstring)."""
    args = shlex.split(argv) if isinstance(argv, str) else [str(a if not isinstance(a, bytes) else a.decode()) for a in argv]
    if args and Path(args[0]).name == "framebench":  # the installed script
        return len(args) > 1 and args[1] in TRAINING_COMMANDS
    for i, arg in enumerate(args[:-1]):
        if arg == "-m":
            module, rest = args[i + 1], args[i + 2 :]
            if module in TRAINING_MODULES:
                return not NOT_TRAINING & set(rest)
            return module == "framebench" and bool(rest) and rest[0] in TRAINING_COMMANDS
    return False


def note_training(event: str, args: tuple) -> None:
    """The audit hook: a training process started during a watched phase is added to it."""
    if event == "subprocess.Popen" and WATCHING and trains(args[1]):
        WATCHING[-1].append(shlex.join(str(a) for a in ([args[1]] if isinstance(args[1], str | bytes) else args[1])))


sys.addaudithook(note_training)  # once per interpreter: an audit hook cannot be removed


def watched(item: pytest.Item):
    """A phase of `item` (a hook wrapper's body): it fails if, not marked slow, it started a training process."""
    started: list[str] = []
    WATCHING.append(started)
    try:
        result = yield
    finally:
        WATCHING.pop()
    if started and item.get_closest_marker("slow") is None:
        pytest.fail(
            f"{item.nodeid} is not marked slow but started a training process ({started[0]}"
            f"{f' and {len(started) - 1} more' if len(started) > 1 else ''}): mark it @pytest.mark.slow, or test it in this process",
            pytrace=False,
        )
    return result


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item):
    return (yield from watched(item))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    return (yield from watched(item))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item):
    return (yield from watched(item))
