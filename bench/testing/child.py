"""A child pytest for the conformance items whose backend needs environment variables this process
lacks (framebench.testing): started with them, loading this module as its plugin (`-p
framebench.testing.child`) so that it records each item's outcome for the parent to report. Apart
because a plugin module is imported into the child whole: this one holds only the hook and its start.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

CHILD_REPORT = "FRAMEBENCH_CONFORMANCE_REPORT"  # set in a child pytest: where it records outcomes


def run_child(
    node_ids: list[str], env: dict[str, str], config: pytest.Config, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, tuple[str, str]]:
    """Run `node_ids` in one child pytest with `env` added to this environment; {node id: (outcome,
    message)}, where the outcome is the first of an item's phases that did not pass."""
    report = tmp_path_factory.mktemp("conformance-child") / "outcomes.jsonl"
    command = [sys.executable, "-m", "pytest", "-p", __name__, "-p", "no:cacheprovider", "-q", f"--rootdir={config.rootpath}", *node_ids]
    child = subprocess.run(
        command, cwd=config.rootpath, env={**os.environ, **env, CHILD_REPORT: str(report)}, capture_output=True, text=True
    )
    lines = report.read_text().splitlines() if report.exists() else []
    outcomes: dict[str, tuple[str, str]] = {}
    for node_id, outcome, message in map(json.loads, lines):
        if outcomes.get(node_id, ("passed",))[0] == "passed":
            outcomes[node_id] = (outcome, message)
    tail = (child.stdout + child.stderr)[-3000:]
    return {
        node_id: outcomes.get(node_id, ("failed", f"the child pytest did not run this item; its output ends:\n{tail}"))
        for node_id in node_ids
    }


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """In a child pytest (`-p framebench.testing.child`), record every phase's outcome for the parent."""
    path = os.environ.get(CHILD_REPORT)
    if not path:
        return
    if report.skipped and isinstance(report.longrepr, tuple):
        message = report.longrepr[2].removeprefix("Skipped: ")
    else:
        message = report.longreprtext
    with Path(path).open("a") as out:
        out.write(json.dumps([report.nodeid, report.outcome, message]) + "\n")
