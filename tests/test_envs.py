"""Framework environments (--env): specs, the side-by-side report and compare on synthetic tables, and
real environments built with uv (two NumPy versions) running the numpy backend on digits.

The slow tests build into a temporary FRAMEBENCH_ENVS_DIR with uv's shared cache, so after the first
build they take seconds; no timing is asserted anywhere."""

from __future__ import annotations

import dataclasses
import itertools
import json
import os

import pandas as pd
import pytest

from framebench.cli import build_parser
from framebench.driver import envs
from framebench.driver.executors import LocalExecutor
from framebench.driver.runner import RunRequest, matrix_of, merged_envs, new_config, recorded_jobs
from framebench.errors import FrameBenchError
from framebench.reports import environments
from framebench.reports.compare import Tolerances, run_compare_envs
from framebench.reports.plots import draw_all
from framebench.store.job import Job, columns, key_columns
from framebench.store.results import load_results
from framebench.store.tables import summary
from tests.conftest import framebench, printed_directory

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
    assert envs.address(root, [OLD]) == envs.address(root, [OLD])
    base = envs.base_requirements(root, [OLD])
    assert not any(line.lower().startswith("numpy==") for line in base)
    assert any(line.startswith("pandas==") for line in base)


def synthetic_run(tmp_path, new_losses: list[float], new_time: float, new_acc: float, precisions: dict[str, float] | None = None):
    """A results directory with numpy in environments old and new (2 repeats), as the driver writes it;
    at each of `precisions` ({precision: its time factor}; fp32 alone by default)."""
    directory = tmp_path / "run"
    directory.mkdir()
    runs, steps = [], []
    for repeat, (precision, factor), (env, losses, seconds, acc, version) in itertools.product(
        range(2),
        (precisions or {"fp32": 1.0}).items(),
        (("old", [1.0, 0.9, 0.8], 1.0, 0.95, "2.3.5"), ("new", new_losses, new_time, new_acc, "2.4.6")),
    ):
        seconds *= factor
        key = {
            "run_id": "run",
            "backend": "numpy",
            "variant": "default",
            "device": "cpu",
            "env": env,
            "precision": precision,
            "sweep_value": "",
            "repeat": repeat,
            "seed": "0",
        }
        runs.append(
            {
                **key,
                "dataset": "digits",
                "preset": "ci",
                "sweep_field": "",
                "attempt": 1,
                "node": "n",
                "status": "ok",
                "median_epoch_s": seconds * (1 + repeat / 100),
                "final_test_acc": acc,
                "framework_version": version,
                "threads": 1,
                "implementation": "abc",
            }
        )
        steps += [{**key, "attempt": 1, "epoch": 1, "step": s, "loss": loss} for s, loss in enumerate(losses, start=1)]
    for table, rows in (("runs", runs), ("steps", steps)):
        pd.DataFrame(rows).reindex(columns=columns(table)).to_csv(directory / f"{table}.csv", index=False)
    pd.DataFrame(columns=columns("epochs")).to_csv(directory / "epochs.csv", index=False)
    config = {"train": {"optimizer": "adam"}, "envs": {"old": [OLD], "new": [NEW]}}
    (directory / "config.json").write_text(json.dumps(config))
    (directory / "env.json").write_text(json.dumps({"nodes": {"n": {"machine": "m"}}}))
    return directory


def test_side_by_side_gives_ratio_difference_and_first_divergent_step(tmp_path):
    directory = synthetic_run(tmp_path, new_losses=[1.0, 0.9, 0.7], new_time=1.5, new_acc=0.93)
    table = environments.side_by_side(load_results(directory)).set_index("env")
    assert table.loc["new", "time_ratio"] == pytest.approx(1.5) and table.loc["new", "time_95"].startswith("[")
    assert table.loc["new", "d_acc"] == pytest.approx(-0.02)
    assert table.loc["new", "framework_version"] == "2.4.6"
    assert table.loc["new", "diverges_at"].startswith("epoch 1 step 3 ")  # 0.1/0.8 beyond step 3's 1e-4
    assert table.loc["old", "time_ratio"] == pytest.approx(1.0)
    section = "\n".join(environments.report_section(load_results(directory)))
    assert "`old`: `numpy==2.3.5`" in section and "| numpy | default | cpu | fp32 |  | new | 2.4.6 |" in section


def test_environments_are_compared_at_each_precision_not_pooled_and_drawn(tmp_path):
    directory = synthetic_run(tmp_path, new_losses=[1.0, 0.9, 0.8], new_time=1.5, new_acc=0.95, precisions={"fp32": 1.0, "bf16": 4.0})
    tables = load_results(directory)
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
    recorded = tables["env"]["environments"]
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
