"""Framework environments (--env): specs, the side-by-side report and compare on synthetic tables, and
real environments built with uv (two NumPy versions) running the numpy backend on digits.

The slow tests build into a temporary FRAMEBENCH_ENVS_DIR with uv's shared cache, so after the first
build they take seconds; no timing is asserted anywhere."""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys

import pytest

from framebench.cli import build_parser
from framebench.driver import envbuild, envs, session
from framebench.driver.executors import LocalExecutor
from framebench.driver.plan import matrix_of, merged_envs, new_config, recorded_jobs
from framebench.driver.request import RunRequest
from framebench.errors import FrameBenchError
from framebench.reports import environments
from framebench.reports.compare import run_compare_envs
from framebench.reports.comparison import Tolerances
from framebench.reports.floors import load_with_floors
from framebench.reports.plots import draw_all
from framebench.reports.summary import summary
from framebench.store.job import Job, key_columns
from framebench.store.reader import load_results
from framebench.store.schema import columns
from tests import tables
from tests.conftest import cli, framebench, printed_directory
from tests.tables import finished_run, run_config
from tests.test_faults import alive, wait_for

OLD, NEW = "numpy==2.3.5", "numpy==2.4.6"  # two NumPy minors the registry serves for Python 3.11


def test_specs_parse_names_and_requirements():
    assert envs.parse_specs(["old=numpy==2.3.5", "new = numpy==2.4.6; jax==0.10.2", "lock="]) == {
        "old": ["numpy==2.3.5"],
        "new": ["numpy==2.4.6", "jax==0.10.2"],
        "lock": [],
    }
    assert envs.parse_specs(None) == {}


@pytest.mark.parametrize(
    "texts, message",
    [
        (["numpy==2.3.5"], "expected NAME=REQ"),
        (["current=numpy==2.3.5"], "other than 'current'"),
        (["../x=numpy"], "expected NAME=REQ"),
        (["a=numpy==2", "a=numpy==1"], "given twice"),
        (["a=numpy=2"], "is not a requirement"),
    ],
)
def test_a_bad_spec_is_one_line_naming_the_fix(texts, message):
    with pytest.raises(FrameBenchError, match=message):
        envs.parse_specs(texts)


def test_env_is_a_repeatable_flag_and_a_column_of_every_job_table():
    args = build_parser().parse_args(["run", "--env", f"old={OLD}", "--env", f"new={NEW}"])
    assert args.env == [f"old={OLD}", f"new={NEW}"]
    assert "env" in key_columns()
    assert all("env" in columns(table) for table in ("runs", "epochs", "steps"))


def test_environments_alternate_within_a_repeat_and_jobs_carry_their_overrides(tmp_path):
    request = RunRequest(backends="numpy,jax", env=(f"old={OLD}", f"new={NEW}"), repeats=2, threads=1)
    config = new_config(request, {}, {"epochs": 1})
    config["matrices"] = [json.loads(json.dumps(dataclasses.asdict(matrix_of(request, LocalExecutor()))))]
    jobs = recorded_jobs("r", config)
    assert [(j.repeat, j.backend, j.env) for j in jobs[:4]] == [
        (0, "numpy", "old"),
        (0, "numpy", "new"),
        (0, "jax", "old"),
        (0, "jax", "new"),
    ]
    assert {j.env: j.env_requirements for j in jobs} == {"old": [OLD], "new": [NEW]}
    assert Job.from_wire(json.loads(json.dumps(jobs[1].to_wire()))).env_requirements == [NEW]
    plain = RunRequest(backends="numpy", threads=1)
    assert matrix_of(plain, LocalExecutor()).axes["env"] == ["current"]


def test_extending_a_directory_adds_environments_but_never_redefines_one(tmp_path):
    assert merged_envs(tmp_path, {"old": [OLD]}, {"new": [NEW]}) == {"old": [OLD], "new": [NEW]}
    with pytest.raises(FrameBenchError, match="ran environment old as numpy==2.3.5; give numpy==2.4.6 another name"):
        merged_envs(tmp_path, {"old": [OLD]}, {"old": [NEW]})


def test_the_address_changes_with_the_overrides_and_the_lock_leaves_out_what_they_override():
    root = envs.checkout()
    assert envs.address(root, [OLD]) != envs.address(root, [NEW])
    code = f"from framebench.driver import envs; print(envs.address(envs.checkout(), ({OLD!r},)))"
    elsewhere = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ, "PYTHONHASHSEED": "1"})
    assert elsewhere.stdout.strip() == envs.address(root, [OLD])  # the folder a later run, in another process, finds again
    base = envs.base_requirements(root, [OLD])
    assert not any(line.lower().startswith("numpy==") for line in base)
    assert any(line.startswith("pandas==") for line in base)


def synthetic_run(tmp_path, new_losses: list[float], new_time: float, new_acc: float, precisions: dict[str, float] | None = None):
    """A results directory with numpy in environments old and new (2 repeats), as the driver writes it;
    at each of `precisions` ({precision: its time factor}; fp32 alone by default)."""
    runs, steps = [], []
    for repeat, (precision, factor), (env, losses, seconds, acc, version) in itertools.product(
        range(2),
        (precisions or {"fp32": 1.0}).items(),
        (("old", [1.0, 0.9, 0.8], 1.0, 0.95, "2.3.5"), ("new", new_losses, new_time, new_acc, "2.4.6")),
    ):
        job = {"run_id": "run", "env": env, "precision": precision, "repeat": repeat}
        measured = {"final_test_acc": acc, "framework_version": version, "node": "n", "threads": 1, "implementation": "abc"}
        runs.append(tables.run_row(**job, preset="ci", epoch_s=seconds * factor * (1 + repeat / 100), **measured))
        steps += [{**row, "loss": loss} for row, loss in zip(tables.step_rows(**job, epochs=1, steps=len(losses)), losses, strict=True)]
    config = tables.run_config(("numpy",), env=(f"old={OLD}", f"new={NEW}"), preset="ci", model={}, train={"optimizer": "adam"}, threads=1)
    return tables.results_directory(tmp_path / "run", runs, steps=steps, config=config, machine={"nodes": {"n": tables.NODE}})


def test_side_by_side_gives_ratio_difference_and_first_divergent_step(tmp_path):
    directory = synthetic_run(tmp_path, new_losses=[1.0, 0.9, 0.7], new_time=1.5, new_acc=0.93)
    table = environments.side_by_side(load_results(directory)).set_index("env")
    assert table.loc["new", "time_ratio"] == pytest.approx(1.5) and table.loc["new", "time_95"].startswith("[")
    assert table.loc["new", "d_acc"] == pytest.approx(-0.02)
    assert table.loc["new", "framework_version"] == "2.4.6"
    assert table.loc["new", "diverges_at"].startswith("epoch 1 step 3 ")  # 0.1/0.8 beyond step 3's 1e-4
    assert table.loc["old", "time_ratio"] == pytest.approx(1.0)
    section = "\n".join(environments.report_section(load_results(directory)))
    assert "- old: numpy==2.3.5" in section and "| numpy | default | cpu | fp32 |  | new | 2.4.6 |" in section


def test_environment_names_and_requirements_from_config_json_are_inert_markdown(tmp_path):
    """A code span around config.json's text could be closed by a backtick in it, and what follows would render."""
    directory = synthetic_run(tmp_path, new_losses=[1.0, 0.9, 0.8], new_time=1.0, new_acc=0.95)
    config = json.loads((directory / "config.json").read_text())
    config["envs"]["new"] = ["numpy`![b](http://host/t.png) @everyone`"]
    (directory / "config.json").write_text(json.dumps(config))
    section = "\n".join(environments.report_section(load_results(directory)))
    assert "- new: numpy&#96;!\\[b\\](http:\u2060//host/t.png) @\u2060everyone&#96;" in section and "`" not in section


def test_environments_are_compared_at_each_precision_not_pooled_and_drawn(tmp_path):
    directory = synthetic_run(tmp_path, new_losses=[1.0, 0.9, 0.8], new_time=1.5, new_acc=0.95, precisions={"fp32": 1.0, "bf16": 4.0})
    tables = load_with_floors(directory)
    table = environments.side_by_side(tables).set_index(["precision", "env"])
    assert len(table) == 4
    assert table.loc[("bf16", "new"), "time_ratio"] == pytest.approx(1.5) and table.loc[("bf16", "old"), "epoch_s"] == pytest.approx(4.02)
    assert table.loc[("bf16", "new"), "diverges_at"] == "none"
    assert draw_all(directory, tables, summary(tables["runs"])) == ["environments.png"]


def test_steps_within_the_tolerance_do_not_diverge(tmp_path):
    directory = synthetic_run(tmp_path, new_losses=[1.0, 0.9 * (1 + 5e-5), 0.8], new_time=1.0, new_acc=0.95)
    assert environments.side_by_side(load_results(directory)).set_index("env").loc["new", "diverges_at"] == "none"


@pytest.mark.parametrize("new_time, new_acc, status", [(1.0, 0.95, 0), (1.5, 0.95, 1), (1.0, 0.90, 1)])
def test_compare_two_environments_of_one_directory(tmp_path, capsys, new_time, new_acc, status):
    directory = synthetic_run(tmp_path, new_losses=[1.0, 0.9, 0.8], new_time=new_time, new_acc=new_acc)
    assert run_compare_envs(str(directory), "old", "new", Tolerances(0.005, 0.10), accuracy_only=False, markdown=None) == status
    assert "numpy: 2.3.5 -> 2.4.6" in capsys.readouterr().out


def test_compare_names_an_environment_the_run_does_not_have(tmp_path):
    directory = synthetic_run(tmp_path, new_losses=[1.0], new_time=1.0, new_acc=0.95)
    with pytest.raises(FrameBenchError, match="no runs in that environment .it has: new, old"):
        run_compare_envs(str(directory), "old", "newer", Tolerances(0.005, 0.1), accuracy_only=False, markdown=None)


@pytest.fixture
def envs_dir(tmp_path):
    """Environments under tmp, uv's cache shared (so a build after the first is seconds)."""
    return {**os.environ, "FRAMEBENCH_ENVS_DIR": str(tmp_path / "envs"), "FRAMEBENCH_NO_DOWNLOAD": "1"}


def digits_run(tmp_path, env: dict, *specs: str, run_id: str = "v"):
    flags = [part for spec in specs for part in ("--env", spec)]
    return framebench(
        "run", "--backends", "numpy", "--preset", "ci", "--dataset", "digits", "--epochs", "2", "--repeats", "1", "--threads", "1",
        "--no-floors", "--results-dir", str(tmp_path), "--run-id", run_id, *flags, env=env,
    )  # fmt: skip


@pytest.mark.slow
def test_two_numpy_versions_interleaved_tagged_and_reused(tmp_path, envs_dir):
    first = digits_run(tmp_path, envs_dir, f"old={OLD}", f"new={NEW}")
    assert first.returncode == 0, first.stderr
    assert "building environment old" in first.stderr and "building environment new" in first.stderr
    tables = load_results(printed_directory(first))
    runs = tables["runs"]
    assert list(runs["env"]) == ["old", "new"]  # interleaved: the environments alternate job by job
    assert dict(zip(runs["env"], runs["framework_version"], strict=True)) == {"old": "2.3.5", "new": "2.4.6"}
    assert set(tables["steps"]["env"]) == {"old", "new"} and set(tables["epochs"]["env"]) == {"old", "new"}
    assert tables["config"]["envs"] == {"old": [OLD], "new": [NEW]}
    recorded = tables["machine"]["environments"]
    assert "numpy==2.3.5" in recorded["old"]["packages"] and "numpy==2.4.6" in recorded["new"]["packages"]
    report = (tmp_path / "v" / "report.md").read_text()
    assert "## Framework environments" in report
    resumed = framebench("run", "--resume", str(tmp_path / "v"), env=envs_dir)  # the recorded environments' jobs are all done
    assert resumed.returncode == 0 and "2 job(s) already ok" in resumed.stderr and "0 to run" in resumed.stderr
    again = digits_run(tmp_path, envs_dir, f"old={OLD}", f"new={NEW}", run_id="again")
    assert again.returncode == 0, again.stderr
    assert "reusing environment old (" in again.stderr and "building environment" not in again.stderr
    listing = framebench("envs", env=envs_dir)
    assert listing.returncode == 0 and "old" in listing.stdout and "numpy==2.4.6" in listing.stdout
    pruned = framebench("envs", "--prune", env=envs_dir)
    assert pruned.returncode == 0 and "removed 2 environment(s)" in pruned.stdout
    assert "no environments in" in framebench("envs", env=envs_dir).stdout


@pytest.mark.slow
def test_a_spec_that_cannot_install_is_one_line_and_unavailable_rows(tmp_path, envs_dir):
    result = digits_run(tmp_path, envs_dir, "bad=numpy==0.0.1", f"new={NEW}")
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("environment bad")]
    assert len(lines) == 1 and "cannot be built" in lines[0] and "numpy" in lines[0]
    runs = load_results(printed_directory(result))["runs"].set_index("env")
    assert runs.loc["bad", "status"] == "unavailable" and runs.loc["new", "status"] == "ok"
    assert "not run: numpy/default on cpu, env=bad: unavailable: environment bad (numpy==0.0.1) cannot be built" in result.stdout


def environment_folder(base, name: str, marker=None, text: str | None = None):
    """A folder shaped as ensure() leaves one (a virtual environment and its marker), or with `text` as its marker."""
    folder = base / name
    (folder / "bin").mkdir(parents=True)
    (folder / envs.VENV_FILE).write_text("home = /usr/bin\n")
    default = {"name": "old", "requirements": [OLD], "python": "3.11.7", "built_at": 1.7e9, "packages": [OLD]}
    (folder / envs.MARKER).write_text(text if text is not None else json.dumps(marker or default))
    return folder


def dead_pid() -> int:
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


@pytest.fixture
def envs_folder(tmp_path, monkeypatch):
    base = tmp_path / "envs"
    base.mkdir()
    monkeypatch.setenv("FRAMEBENCH_ENVS_DIR", str(base))
    return base


def test_prune_removes_only_what_framebench_built(envs_folder, tmp_path):
    """It once removed every folder under FRAMEBENCH_ENVS_DIR: a user's Documents went."""
    (envs_folder / "Documents").mkdir()
    (envs_folder / "Documents" / "thesis.txt").write_text("three years")
    (envs_folder / "projects" / "src").mkdir(parents=True)
    (envs_folder / "notes.txt").write_text("keep")
    built = environment_folder(envs_folder, "0123456789abcdef")
    damaged = environment_folder(envs_folder, "fedcba9876543210", text="{not json")
    misshapen = environment_folder(envs_folder, "00000000000000aa", marker={"name": 1, "packages": "numpy"})
    not_a_venv = environment_folder(envs_folder, "00000000000000bb")
    (not_a_venv / envs.VENV_FILE).unlink()
    interrupted = environment_folder(envs_folder, f"0123456789abcdef.building-{dead_pid()}")
    building = environment_folder(envs_folder, f"1111111111111111.building-{os.getpid()}")
    elsewhere = environment_folder(tmp_path, "2222222222222222")
    (envs_folder / "2222222222222222").symlink_to(elsewhere)
    listed = cli("envs")
    assert listed.returncode == 0 and "Traceback" not in listed.stderr
    assert "0123456789abcdef  old" in listed.stdout and "an interrupted build (--prune removes it)" in listed.stdout
    pruned = cli("envs", "--prune")
    assert pruned.returncode == 1 and "removed 1 environment(s) and 1 interrupted build(s)" in pruned.stdout
    assert not built.exists() and not interrupted.exists()
    for kept in (damaged, misshapen, not_a_venv, building, elsewhere, envs_folder / "2222222222222222", envs_folder / "projects" / "src"):
        assert kept.exists(), kept
    assert (envs_folder / "Documents" / "thesis.txt").read_text() == "three years" and (envs_folder / "notes.txt").exists()
    warnings = sorted(line for line in pruned.stderr.splitlines() if line.startswith("warning: "))
    assert warnings == [
        f"warning: {misshapen} is not a usable environment ({envs.MARKER} is not a framebench marker (name, requirements, python, "
        f"built_at, packages of the wrong shape)); if framebench built it, remove it (`rm -r {misshapen}`) and it is rebuilt when needed",
        f"warning: {not_a_venv} is not a usable environment (no pyvenv.cfg: not a virtual environment); if framebench built it, "
        f"remove it (`rm -r {not_a_venv}`) and it is rebuilt when needed",
        f"warning: {damaged} is not a usable environment ({envs.MARKER} cannot be read (JSONDecodeError)); if framebench built it, "
        f"remove it (`rm -r {damaged}`) and it is rebuilt when needed",
    ]
    assert "not framebench's, left alone: 2222222222222222, Documents, notes.txt, projects" in pruned.stderr


def test_a_damaged_environment_is_reported_with_its_fix_and_never_used(envs_folder, monkeypatch):
    path = envs.location([OLD])
    environment_folder(path.parent, path.name, text='{"name": "old"')
    monkeypatch.setattr(envbuild, "build", lambda *_: pytest.fail("a damaged environment must not be rebuilt over"))
    with pytest.raises(envs.EnvironmentUnavailable, match=r"is not a usable environment .* remove it \(`rm -r "):
        envbuild.ensure("old", [OLD])


@pytest.mark.parametrize("failure", [KeyboardInterrupt, envs.EnvironmentUnavailable, OSError])
def test_a_build_leaves_no_staging_folder_however_it_ends(envs_folder, monkeypatch, failure):
    """2.5 GB staging folders were left by every interrupted build."""
    path = envs.location([OLD])
    stale = environment_folder(envs_folder, f"{path.name}.building-{dead_pid()}")  # a build killed outright

    def failing_venv(staging):
        assert not stale.exists()  # cleaned before this build starts
        environment_folder(staging.parent, staging.name)
        raise failure("scripted")

    monkeypatch.setattr(envbuild, "make_venv", failing_venv)
    with pytest.raises(failure):
        envbuild.ensure("old", [OLD])
    assert list(envs_folder.iterdir()) == []


def test_uv_is_killed_with_what_it_started_when_the_build_is_interrupted(tmp_path, monkeypatch):
    import uv as uv_package

    pid_file = tmp_path / "child"
    script = tmp_path / "uv"
    script.write_text(f"#!/bin/sh\nsleep 600 &\necho $! > {pid_file}\nwait\n")
    script.chmod(0o755)
    monkeypatch.setattr(uv_package, "find_uv_bin", lambda: str(script))

    def interrupt(*_):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGALRM, interrupt)
    try:
        signal.setitimer(signal.ITIMER_REAL, 1.0)
        with pytest.raises(KeyboardInterrupt):
            envbuild.uv("pip", "install", "numpy")
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    child = int(pid_file.read_text())
    wait_for(lambda: not alive(child), "uv's child to be gone", timeout=10)


def test_a_stop_signal_during_a_build_is_handled_like_one_during_jobs(envs_folder, tmp_path, monkeypatch, capsys):
    """SIGTERM once ended a build with exit 143, no message, no report, and its staging folder left."""

    def stopped_venv(staging):
        environment_folder(staging.parent, staging.name)
        os.kill(os.getpid(), signal.SIGTERM)  # its handler runs before os.kill returns: the build stops here
        raise AssertionError("SIGTERM did not stop the build")

    monkeypatch.setattr(envbuild, "make_venv", stopped_venv)
    request = RunRequest(
        backends="numpy", dataset="digits", floors=False, results_dir=str(tmp_path), run_id="r", threads=1, env=(f"old={OLD}",)
    )
    assert session.run(request, {}, {"epochs": 1}) == 128 + signal.SIGTERM
    err = capsys.readouterr().err
    assert "interrupted by SIGTERM" in err and f"framebench run --resume {tmp_path / 'r'}" in err
    assert (tmp_path / "r" / "report.md").exists() and list(envs_folder.iterdir()) == []
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL


TORCH_WHEEL = "torch @ https://download.pytorch.org/whl/cpu/torch-2.12.0%2Bcpu-cp311-cp311-manylinux_2_28_x86_64.whl"


def test_the_command_line_s_own_url_requirement_is_taken_as_the_readme_shows():
    assert envs.parse_specs([f"old={TORCH_WHEEL}"]) == {"old": [TORCH_WHEEL]}


@pytest.fixture(scope="module")
def numpy_run(tmp_path_factory):
    """One finished numpy run on digits of one epoch on one thread (written row by row), for the tests that make a foreign copy of it."""
    config = run_config(("numpy",), repeats=1, model={}, train={"epochs": 1}, threads=1)
    return finished_run(tmp_path_factory.mktemp("numpy") / "r", repeats=1, backends={"numpy": 1.0}, config=config)


def foreign(numpy_run, tmp_path, requirements: list[str]):
    """A copy of the run whose config.json (as someone else may send it) names an environment `evil`."""
    directory = shutil.copytree(numpy_run, tmp_path / "r")
    config = json.loads((directory / "config.json").read_text())
    config["envs"] = {"evil": requirements}
    config["matrices"][0]["axes"]["env"] = ["current", "evil"]
    (directory / "config.json").write_text(json.dumps(config))
    return directory


@pytest.mark.parametrize(
    "requirements, message",
    [
        (["numpy @ http://127.0.0.1:9/numpy-9.9-py3-none-any.whl"], "pass --trust-environments if you trust it"),
        (["numpy @ file:///tmp/numpy"], "pass --trust-environments if you trust it"),
        (["--cache-dir=/tmp/x"], "is not a requirement"),
        (["-e /tmp"], "is not a requirement"),
    ],
)
def test_a_foreign_directory_builds_nothing_its_config_names_unchecked(numpy_run, tmp_path, monkeypatch, requirements, message):
    directory = foreign(numpy_run, tmp_path, requirements)
    monkeypatch.setattr(envbuild, "ensure", lambda *_: pytest.fail("nothing may be built"))
    extend = ["run", "--backends", "numpy", "--dataset", "digits", "--no-floors", "--epochs", "1", "--threads", "1"]
    for args in (["run", "--resume", str(directory)], [*extend, "--results-dir", str(tmp_path), "--run-id", "r"]):
        result = cli(*args)
        assert result.returncode == 2 and len(result.stderr.splitlines()) == 1, result.stderr
        assert "environment evil" in result.stderr and message in result.stderr


def test_a_trusted_foreign_url_requirement_is_built(numpy_run, tmp_path, monkeypatch):
    directory = foreign(numpy_run, tmp_path, ["numpy @ http://127.0.0.1:9/numpy-9.9-py3-none-any.whl"])
    built = []

    def unbuildable(name, requirements):
        built.append(requirements)
        raise envs.EnvironmentUnavailable(f"environment {name} cannot be built: no server at 127.0.0.1:9")

    monkeypatch.setattr(envbuild, "ensure", unbuildable)
    result = cli("run", "--resume", str(directory), "--trust-environments")
    assert result.returncode == 0, result.stderr
    assert built == [["numpy @ http://127.0.0.1:9/numpy-9.9-py3-none-any.whl"]]
    runs = load_results(directory)["runs"].set_index("env")
    assert runs.loc["evil", "status"] == "unavailable"
