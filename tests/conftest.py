"""Shared fixtures. Real MNIST comes from $FRAMEBENCH_DATA_DIR (CI: ../shared/datasets)."""

from __future__ import annotations

import os
import subprocess
import sys
import xml.etree.ElementTree as ElementTree
from functools import cache
from pathlib import Path

import pytest

from bench.data import load_dataset
from impls import REGISTRY

REPO = Path(__file__).resolve().parent.parent
DATA_DIR = os.environ.get("FRAMEBENCH_DATA_DIR") or str(REPO.parent / "shared" / "datasets")
ONLY_BACKEND = "FRAMEBENCH_CONFORMANCE_ONLY"  # set in a child pytest that checks one backend
os.environ.setdefault("KERAS_BACKEND", "tensorflow")  # this process hosts the `keras` backend


def conformance_cases() -> list[tuple[str, str]]:
    """(backend, variant) for every registered backend's variants but `tutorial`, whose loops are
    the seeds' own (timed as baselines, not claimed equivalent); reading a class's variants imports
    its module but does not select the backend, so foreign-environment backends are listed too."""
    import importlib

    names = [os.environ[ONLY_BACKEND]] if ONLY_BACKEND in os.environ else list(REGISTRY)
    cases = []
    for name in names:
        spec = REGISTRY[name]
        try:
            variants = getattr(importlib.import_module(spec.module), spec.class_name).variants
        except ImportError:
            variants = ("default",)  # the backend fixture reports why it cannot be loaded
        cases += [(name, variant) for variant in variants if variant != "tutorial"]
    return cases


def case_id(case: tuple[str, str]) -> str:
    name, variant = case
    return name if variant == "default" else f"{name}:{variant}"


def needs_own_process(name: str) -> bool:
    """True for a backend whose environment (e.g. KERAS_BACKEND=torch) differs from this process's."""
    return any(os.environ.get(key) != value for key, value in REGISTRY[name].env.items())


@cache
def child_outcomes(name: str, tmp_dir: str) -> dict[str, tuple[str, str]]:
    """Run the conformance module for one backend in a child pytest with that backend's environment;
    {test name: (outcome, message)} from its JUnit report."""
    report = Path(tmp_dir) / f"conformance-{name}.xml"
    env = {**os.environ, **REGISTRY[name].env, ONLY_BACKEND: name, "FRAMEBENCH_DATA_DIR": DATA_DIR}
    subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={report}",
                    str(REPO / "tests" / "test_conformance.py")], cwd=REPO, env=env, capture_output=True, text=True)
    if not report.exists():
        raise RuntimeError(f"the child pytest for backend {name} wrote no report")
    outcomes = {}
    for case in ElementTree.parse(report).iter("testcase"):
        problem = next(iter(case), None)
        outcome = "passed" if problem is None or problem.tag in ("system-out", "system-err") else problem.tag
        outcomes[case.get("name")] = (outcome, "" if outcome == "passed" else (problem.get("message") or problem.text or ""))
    return outcomes


def pytest_pyfunc_call(pyfuncitem):
    """Report a foreign-environment backend's item with the outcome its child pytest measured."""
    callspec = getattr(pyfuncitem, "callspec", None)
    case = callspec.params.get("backend") if callspec else None
    if case is None or not needs_own_process(case[0]):
        return None
    tmp_dir = pyfuncitem.config._tmp_path_factory.getbasetemp()
    name = case[0]
    outcome, message = child_outcomes(name, str(tmp_dir)).get(pyfuncitem.name, ("missing", "not run by the child pytest"))
    if outcome == "skipped":
        pytest.skip(message)
    if outcome != "passed":
        pytest.fail(f"{name} in its own process ({outcome}): {message}", pytrace=False)
    return True


@pytest.fixture(scope="session")
def mnist():
    return load_dataset("mnist", data_dir=DATA_DIR, allow_download=False)


@pytest.fixture(autouse=True)
def no_downloads(monkeypatch):
    """Tests never reach for the network; a missing file must fail loudly instead."""
    monkeypatch.setenv("FRAMEBENCH_NO_DOWNLOAD", "1")
