"""The guard that keeps training out of the fast tier (tests.training_guard) fails what it should, and only that."""

from __future__ import annotations

import sys

import pytest

from tests.training_guard import trains

pytest_plugins = ["pytester"]

# A pytest run of its own, in this process, with the guard: each process is `true` given a training
# command's arguments, so nothing is started that takes time.
SUITE = """
import subprocess

import pytest

WORKER = ["true", "-m", "framebench.driver.worker"]


@pytest.fixture(scope="module")
def trained():
    subprocess.run(WORKER, check=True)


def test_a_worker_outside_the_slow_tier():
    subprocess.run(WORKER, check=True)


@pytest.mark.slow
def test_a_worker_in_the_slow_tier():
    subprocess.run(WORKER, check=True)


def test_a_run_command_in_a_process_of_its_own():
    subprocess.Popen(["true", "-m", "framebench", "run", "--backends", "numpy"]).wait()


def test_a_fixture_that_trains(trained):
    pass


def test_a_worker_asked_only_to_describe_its_backend():
    subprocess.run([*WORKER, "--describe", "numpy", "default"], check=True)


def test_a_reading_command_in_a_process_of_its_own():
    subprocess.run(["true", "-m", "framebench", "compare", "a", "b"], check=True)
"""


def test_a_fast_test_that_starts_a_training_process_fails_naming_it(pytester):
    pytester.makepyfile(test_suite=SUITE)
    pytester.makeini("[pytest]\nmarkers = slow: trains")
    result = pytester.runpytest_inprocess("-p", "tests.training_guard", "-p", "no:cacheprovider", "-rA")
    result.assert_outcomes(passed=3, failed=2, errors=1)
    result.stdout.fnmatch_lines(
        [
            "*test_a_worker_outside_the_slow_tier is not marked slow but started a training process (true -m framebench.driver.worker)*",
            "*test_a_run_command_in_a_process_of_its_own is not marked slow but started a training process "
            "(true -m framebench run --backends numpy)*",
            "ERROR*test_a_fixture_that_trains*",
        ]
    )
    fine = ["test_a_worker_in_the_slow_tier", "test_a_worker_asked_only_to_describe_its_backend"]
    result.stdout.fnmatch_lines([f"PASSED*{name}*" for name in [*fine, "test_a_reading_command_in_a_process_of_its_own"]])


@pytest.mark.parametrize(
    "argv, training",
    [
        ([sys.executable, "-m", "framebench.driver.worker"], True),
        ([sys.executable, "-m", "framebench.driver.worker", "--protocol"], False),
        ([sys.executable, "-m", "framebench.driver.opprofile"], True),
        ([sys.executable, "-m", "framebench.driver.probe"], False),
        ([sys.executable, "-m", "framebench", "study", "perf"], True),
        ([sys.executable, "-m", "framebench", "gate", "--base", "main"], True),
        ([sys.executable, "-m", "framebench", "publish", "runs"], False),
        ("/venv/bin/framebench ops --backends numpy", True),
        (["/venv/bin/framebench", "list"], False),
        ([sys.executable, "-c", "print(1)"], False),
    ],
)
def test_what_counts_as_training(argv, training):
    assert trains(argv) is training
