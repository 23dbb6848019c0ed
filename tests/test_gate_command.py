"""`framebench gate`: revisions resolved in a temporary git repository, its bad inputs (one line each,
nothing lost), and, marked slow, real gates between two revisions of a temporary copy of this
project whose requirements.lock holds only what the numpy backend and framebench's imports need
(environments built once per session, from the machine's wheels).

No test asserts how fast anything ran, except that a revision made twice as slow by construction is
called a regression (a margin no machine state here comes near)."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from framebench.driver import envbuild, envs, gate, revisions
from framebench.errors import FrameBenchError
from framebench.store.events import PROTOCOL_VERSION
from framebench.store.reader import load_results
from framebench.studies.slowdown import slower_revision, slower_source
from tests.conftest import REPO, cli

GIT_IDENTITY = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}
SMALL_LOCK = ("numpy", "scipy", "scikit-learn", "joblib", "threadpoolctl", "setuptools")  # the worker on digits, and the build
RUN = ["--backends", "numpy", "--preset", "ci", "--dataset", "digits", "--hidden", "64", "--threads", "1", "--no-floors"]


def git(repository: Path, *args: str) -> str:
    result = subprocess.run(["git", "-C", str(repository), *args], capture_output=True, text=True, env={**os.environ, **GIT_IDENTITY})
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def commit_all(repository: Path, message: str) -> str:
    git(repository, "add", "--all")
    git(repository, "commit", "--quiet", "-m", message)
    return git(repository, "rev-parse", "HEAD")


@pytest.fixture
def tiny_repo(tmp_path):
    """A git repository of two files and one commit."""
    repository = tmp_path / "tiny"
    repository.mkdir()
    git(repository, "init", "--quiet", "-b", "main")
    (repository / "a.txt").write_text("a\n")
    (repository / "requirements.lock").write_text("numpy==2.4.6\n")
    commit_all(repository, "first")
    return repository


def test_a_revision_resolves_to_its_commit_and_tree(tiny_repo):
    head = git(tiny_repo, "rev-parse", "HEAD")
    revision = revisions.resolve("main", tiny_repo)
    assert (revision.commit, revision.head, revision.dirty) == (head, head, False)
    assert revision.describe() == f"main ({head[:12]})"
    assert revisions.parse_url(revision.requirement.split(" @ ")[1]) == (tiny_repo, head)
    assert revisions.resolve(str(tiny_repo), Path("/")).commit == head  # a checkout's folder: its HEAD, from anywhere


def test_a_dirty_working_tree_is_a_commit_of_its_own_made_without_touching_the_user_s_index(tiny_repo):
    clean = revisions.resolve(None, tiny_repo)
    assert not clean.dirty and clean.commit == git(tiny_repo, "rev-parse", "HEAD")
    (tiny_repo / "a.txt").write_text("changed\n")
    (tiny_repo / "new.txt").write_text("untracked\n")
    status = git(tiny_repo, "status", "--porcelain")
    dirty = revisions.resolve(None, tiny_repo)
    assert dirty.dirty and dirty.head == clean.commit and "+ changes" in dirty.describe()
    assert revisions.read_file(tiny_repo, dirty.commit, "a.txt") == "changed"
    assert revisions.read_file(tiny_repo, dirty.commit, "new.txt") == "untracked"
    assert git(tiny_repo, "status", "--porcelain") == status  # nothing staged, nothing committed on a branch
    assert revisions.resolve(None, tiny_repo) == dirty  # the same changes: the same commit


@pytest.mark.parametrize(
    "args, message",
    [
        (["--base", "nope"], "unknown revision 'nope' in "),
        (["--base=--upload-pack=x"], "unknown revision '--upload-pack=x'"),
        (["--new", "main"], "gate needs --base REF"),
        (["--base", "main", "--resume", "x"], "--resume takes BASE and NEW from its config.json; drop --base and --new"),
        (["--resume", "x", "--epochs", "3"], "--resume takes the matrix and configuration from its config.json; drop --epochs"),
        (["--base", "main", "--env", "a=numpy"], "unrecognized arguments: --env"),
    ],
)
def test_bad_input_is_one_line(tiny_repo, monkeypatch, args, message):
    monkeypatch.chdir(tiny_repo)
    result = cli("gate", *args)
    assert result.returncode == 2 and message in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_outside_a_repository_the_gate_says_where_to_run_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = cli("gate", "--base", "main")
    assert result.returncode == 2 and "is not in a git repository: run framebench gate from a clone" in result.stderr


def test_a_side_without_a_lock_cannot_be_gated_and_nothing_is_built(tiny_repo, monkeypatch, tmp_path):
    (tiny_repo / "requirements.lock").unlink()
    commit_all(tiny_repo, "no lock")
    monkeypatch.chdir(tiny_repo)
    monkeypatch.setenv("FRAMEBENCH_ENVS_DIR", str(tmp_path / "envs"))
    result = cli("gate", "--base", "main~1", "--new", "main", "--results-dir", str(tmp_path / "results"))
    assert result.returncode == 2
    assert "error: NEW main (" in result.stderr and "has no requirements.lock, so its environment is unknown" in result.stderr
    assert not (tmp_path / "results").exists() and not (tmp_path / "envs").exists()


def test_the_same_revision_twice_is_an_a_a_check_and_an_existing_directory_is_refused(tiny_repo, monkeypatch, tmp_path):
    monkeypatch.chdir(tiny_repo)
    (tmp_path / "results" / "g").mkdir(parents=True)
    result = cli("gate", "--base", "main", "--results-dir", str(tmp_path / "results"), "--run-id", "g")
    assert "BASE and NEW hold the same code" in result.stderr and "this is an A/A check" in result.stderr
    assert result.returncode == 2 and f"{tmp_path / 'results' / 'g'} exists: a gate writes a results directory of its own" in result.stderr
    assert "framebench gate --resume" in result.stderr


def test_resume_refuses_a_directory_that_is_not_a_gate_s(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"envs": {"old": [], "new": []}, "lockstep": False}))
    result = cli("gate", "--resume", str(tmp_path))
    assert result.returncode == 2 and "not a gate's results directory" in result.stderr


@pytest.mark.parametrize(
    "answer, said", [("", "no worker protocol version (its framebench predates `framebench gate`)"), ("99", "protocol 99")]
)
def test_a_side_whose_worker_speaks_another_protocol_is_refused(tiny_repo, monkeypatch, tmp_path, answer, said):
    python = tmp_path / "bin" / "python"  # an environment built before protocols were recorded: its worker is asked
    python.parent.mkdir()
    python.write_text(f"#!/bin/sh\necho {answer}\n" + ("exit 1\n" if not answer else ""))
    python.chmod(0o755)
    (tmp_path / envs.MARKER).write_text(json.dumps({"packages": []}))
    built = envs.Environment("base", (), tmp_path, reused=True)
    monkeypatch.setattr(envs, "is_built", lambda requirements: True)
    monkeypatch.setattr(envbuild, "ensure", lambda name, requirements: built)
    with pytest.raises(FrameBenchError, match=re.escape(f"cannot be gated: its framebench's worker speaks {said}")):
        gate.prepare_side("base", revisions.resolve("main", tiny_repo))
    assert envs.worker_protocol(Path(sys.executable)) == str(PROTOCOL_VERSION)


# Real gates on a copy of this project (slow: environments built with uv, real workers).


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """This checkout's files (tracked and untracked, less results/) as a git repository whose lock is
    small, committed on main; environments go to a folder of the module's."""
    root = tmp_path_factory.mktemp("gate")
    repository = root / "project"
    files = subprocess.run(["git", "-C", str(REPO), "ls-files", "-co", "--exclude-standard"], capture_output=True, text=True).stdout.split()
    for name in files:
        if not name.startswith("results/") and (REPO / name).is_file():
            (repository / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, repository / name)
    pins = [line for line in (REPO / "requirements.lock").read_text().splitlines() if line.split("==")[0] in SMALL_LOCK]
    (repository / "requirements.lock").write_text("\n".join(pins) + "\n")
    git(repository, "init", "--quiet", "-b", "main")
    commit_all(repository, "base")
    return repository, {**os.environ, "FRAMEBENCH_ENVS_DIR": str(root / "envs"), "FRAMEBENCH_NO_DOWNLOAD": "1"}


def gate_in(cwd: Path, env: dict, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """`framebench gate ARGS` as a user runs it, from `cwd`."""
    return subprocess.run(
        [sys.executable, "-m", "framebench", "gate", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


@pytest.mark.slow
def test_a_change_twice_as_slow_in_a_clone_s_working_tree_is_a_regression_of_time_alone(project, tmp_path):
    repository, env = project
    clone = tmp_path / "clone"
    git(tmp_path, "clone", "--quiet", str(repository), str(clone))
    backend = clone / "impls" / "numpy_impl.py"
    backend.write_text(slower_source(backend.read_text(), 3.0))  # NEW: the working tree, four times the work, uncommitted
    status = git(clone, "status", "--porcelain")
    report = tmp_path / "gate.json"
    args = [
        *RUN,
        "--hidden",
        "1024",
        "--epochs",
        "4",
        "--repeats",
        "2",
        "--results-dir",
        str(tmp_path),
        "--run-id",
        "g",
        "--json",
        str(report),
    ]
    result = gate_in(clone, env, "--base", "origin/main", *args)
    assert result.returncode == 1, result.stderr
    assert "NEW: the working tree (HEAD" in result.stderr and "+ changes" in result.stderr
    decision = json.loads(report.read_text())
    key = decision["keys"][0]
    assert key["decision"]["kind"] == "REGRESSION" and key["decision"]["reason"] == "time" and key["time_ratio"] > 1.3
    assert key["d_acc"] == 0 and key["pairs"] == 2 * 3  # the same arithmetic: the same accuracy, exactly; 3 steady pairs a repeat
    assert "step losses of numpy/default on cpu: equal to BASE's at every step" in result.stdout
    tables = load_results(tmp_path / "g")
    assert set(tables["runs"]["lockstep"]) == {"paired"} and tables["config"]["lockstep"]
    requirements = tables["config"]["envs"]
    assert requirements["base"] == [revisions.resolve("origin/main", clone).requirement]
    assert requirements["new"][0].startswith(f"framebench @ git+file://{clone}@") and decision["new"].startswith("NEW the working tree")
    assert git(clone, "status", "--porcelain") == status  # the user's tree and index as they were


def workers_of(env: dict) -> list[int]:
    """The processes running a python of the test's environments."""
    found = []
    for pid in (p for p in os.listdir("/proc") if p.isdigit()):
        try:
            if env["FRAMEBENCH_ENVS_DIR"].encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                found.append(int(pid))
        except OSError:
            pass
    return found


@pytest.mark.slow
def test_a_gate_stopped_mid_lockstep_ends_both_workers_records_both_and_resumes(project, tmp_path):
    repository, env = project
    args = ["--base", "main", "--new", "main", *RUN, "--epochs", "300", "--repeats", "1", "--results-dir", str(tmp_path), "--run-id", "g"]
    command = [sys.executable, "-m", "framebench", "gate", *args]
    process = subprocess.Popen(command, cwd=repository, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    epochs = tmp_path / "g" / "epochs.csv"
    deadline = time.monotonic() + 300
    while not (epochs.exists() and len(epochs.read_text().splitlines()) > 4):
        assert time.monotonic() < deadline and process.poll() is None, process.communicate()
        time.sleep(0.1)
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 143 and "interrupted by SIGTERM" in err and "Traceback" not in err
    assert f"framebench gate --resume {tmp_path / 'g'}" in err
    assert workers_of(env) == []
    runs = load_results(tmp_path / "g")["runs"]
    assert sorted(runs["env"]) == ["base", "new"] and set(runs["status"]) == {"interrupted"}
    kept = len(load_results(tmp_path / "g")["epochs"])
    resumed = gate_in(repository, env, "--resume", str(tmp_path / "g"), "--timeout", "600")
    assert resumed.returncode in (0, 2), resumed.stderr  # an A/A: no time verdict is asserted, only that it was judged
    tables = load_results(tmp_path / "g")
    latest = tables["runs"][tables["runs"]["attempt"] == 2]
    assert set(latest["status"]) == {"ok"} and set(latest["lockstep"]) == {"paired"} and len(tables["epochs"]) == kept + 600
    assert "step losses of numpy/default on cpu: equal to BASE's at every step" in resumed.stdout


@pytest.mark.slow
def test_a_side_that_does_not_build_is_one_line_and_starts_nothing(project, tmp_path):
    repository, env = project
    clone = tmp_path / "clone"
    git(tmp_path, "clone", "--quiet", str(repository), str(clone))
    (clone / "requirements.lock").write_text("numpy==0.0.1\n")
    result = gate_in(clone, env, "--base", "main", *RUN, "--epochs", "2", "--results-dir", str(tmp_path / "results"))
    assert result.returncode == 2 and not (tmp_path / "results").exists()
    [line] = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert "NEW the working tree" in line and "cannot be gated: environment new" in line and "numpy" in line


@pytest.mark.slow
def test_a_slower_revision_on_a_branch_is_gated_by_name(project, tmp_path):
    """What the study does: a revision made slower by construction, committed on a branch of its own."""
    repository, env = project
    slower_revision(repository, "main", 3.0, "slow")  # four times the work: a verdict no busy neighbour can blur
    args = [*RUN, "--hidden", "1024", "--epochs", "4", "--repeats", "2", "--results-dir", str(tmp_path), "--run-id", "g"]
    result = gate_in(repository, env, "--base", "main", "--new", "slow", *args)
    assert result.returncode == 1 and "REGRESSION: time" in result.stdout, result.stderr
    assert git(repository, "status", "--porcelain") == ""
