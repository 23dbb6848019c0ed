"""Precision as a matrix dimension: planned and interleaved like any other, declared by each backend,
verified in effect by the worker, and compared against fp32 with each precision's own GEMM floor."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import pytest

from framebench.core import registry
from framebench.core.config import Sweep, precision_mismatch, resolve
from framebench.driver.plan import Matrix, new_config, plan
from framebench.driver.recorder import JobState, summarize
from framebench.driver.request import RunRequest
from framebench.errors import FrameBenchError
from framebench.reports.floors import with_efficiencies
from framebench.reports.precision import precision_table
from framebench.store.events import End, Setup
from framebench.store.job import Job, accuracy_key_columns
from framebench.store.reader import read_table
from framebench.store.schema import columns
from framebench.studies.precision import busy_warning, verdict
from framebench.testing import cases
from tests import tables
from tests.conftest import framebench, printed_directory

TEMPLATE = Job(run_id="r", dataset="digits", data_dir=None, preset="mlp", config={}, threads=1, target_acc=0.9)
AXES = {"backend": ["numpy"], "variant": ["default"], "device": ["cpu"]}


def planned(precisions: list[str], sweep: Sweep | None = None, repeats: int = 1) -> list[Job]:
    model, train = resolve("mlp", {}, {"epochs": 1})
    return plan([Matrix({**AXES, "precision": precisions}, repeats)], TEMPLATE, sweep or Sweep(), model, train)


def test_precisions_are_planned_innermost_and_interleave():
    jobs = planned(["fp32", "bf16"], repeats=2)
    assert [(j.repeat, j.precision) for j in jobs] == [(0, "fp32"), (0, "bf16"), (1, "fp32"), (1, "bf16")]
    assert len({j.key() for j in jobs}) == 4
    assert "precision=bf16" in jobs[1].label and "precision" not in jobs[0].label


def test_a_precision_sweep_sets_each_jobs_precision():
    jobs = planned(["fp32"], Sweep.parse("precision=fp32,bf16"))
    assert [(j.sweep_value, j.precision) for j in jobs] == [("fp32", "fp32"), ("bf16", "bf16")]
    with pytest.raises(FrameBenchError, match="unknown precision 'fp8'"):
        planned(["fp32"], Sweep.parse("precision=fp32,fp8"))


@pytest.mark.parametrize(
    "request_fields, message",
    [
        ({"precision": "fp32,bf8"}, "unknown precision 'bf8'; --precision takes a comma list of: fp32, tf32, bf16, fp16"),
        ({"precision": ","}, "unknown precision ','"),
        ({"precision": "bf16", "sweep": "precision=fp32,bf16"}, "drop --precision"),
    ],
)
def test_bad_precision_requests_are_one_line(request_fields, message):
    with pytest.raises(FrameBenchError, match=message.replace("(", r"\(")):
        RunRequest(threads=1, **request_fields).validate()


def test_a_precision_that_did_not_take_effect_names_both():
    assert precision_mismatch("bf16", "bfloat16") is None
    assert precision_mismatch("fp32", "float64") is None  # numpy:tutorial keeps its tutorial's float64
    assert precision_mismatch("bf16", "float32") == "precision bf16 requested, but the matrix products ran in float32, not bfloat16"
    assert precision_mismatch("tf32", "float32") is not None and precision_mismatch("fp16", "bfloat16") is not None


def test_precision_and_compute_dtype_are_columns():
    assert "precision" in columns("runs") and "compute_dtype" in columns("runs") and "precision" in columns("gemm")
    assert "precision" in accuracy_key_columns()
    job = planned(["bf16"])[0]
    row = summarize(JobState(job, setup=Setup(0.1, "x", 10), epochs=[]), End("ok", compute_dtype="bfloat16"))
    assert (row["precision"], row["compute_dtype"]) == ("bf16", "bfloat16")


def gemm_rows(precision: str, step_s: float) -> list[dict]:
    """torch's GEMM probes at `precision` (start and end) whose step adds up to `step_s`."""
    return [row for probe in ("start", "end") for row in tables.gemm_rows("torch", step_s, probe, precision=precision)]


def run_row(precision: str, epoch_s: float, acc: float) -> dict:
    """A runs.csv row of torch at `precision`: epochs of 10 steps."""
    return tables.run_row(backend="torch", precision=precision, epoch_s=epoch_s, final_test_acc=acc, samples_per_epoch=100, batch_size=10)


def test_a_bf16_run_is_held_to_the_bf16_floor_and_compared_with_fp32():
    """fp32: GEMMs 0.1 s of a 2 s epoch; bf16: GEMMs 0.05 s of a 1.7 s epoch (10 steps each)."""
    gemm = pd.DataFrame(gemm_rows("fp32", 0.01) + gemm_rows("bf16", 0.005))
    runs = with_efficiencies(pd.DataFrame([run_row("fp32", 2.0, 0.98), run_row("bf16", 1.7, 0.975)]), gemm)
    assert runs["own_floor_epoch_s"].tolist() == pytest.approx([0.1, 0.05])
    table = precision_table(runs).iloc[0]
    assert (table["backend"], table["precision"]) == ("torch", "bf16")
    assert table["speedup"] == pytest.approx(2.0 / 1.7) and table["gemm_speedup"] == pytest.approx(2.0)
    assert table["share_of_gemm_saving"] == pytest.approx(0.3 / 0.05)
    assert table["other_change_s"] == pytest.approx((1.7 - 0.05) - (2.0 - 0.1))
    assert table["acc_diff"] == pytest.approx(-0.005)


def test_one_precision_gives_no_comparison():
    runs = with_efficiencies(pd.DataFrame([run_row("fp32", 2.0, 0.98)]), pd.DataFrame(gemm_rows("fp32", 0.01)))
    assert not runs["own_floor_epoch_s"].isna().any() and precision_table(runs).empty


@pytest.mark.slow
def test_unsupported_and_ineffective_precisions_are_rows_with_the_reason(tmp_path):
    """The fake backend computes in float32 whatever it claims: claiming bf16 fails the job, naming
    both dtypes; not claiming it makes the job unsupported, with the reason."""
    plugin = {**os.environ, "FRAMEBENCH_PLUGINS": "fake=tests.fake_backend:FakeClassifier"}
    common = ["run", "--backends", "fake", "--dataset", "digits", "--no-floors", "--precision", "fp32,bf16", "--results-dir"]
    claimed = framebench(*common, str(tmp_path / "a"), env={**plugin, "FAKE_PRECISIONS": "fp32,bf16"})
    assert claimed.returncode == 1, claimed.stderr[-2000:]
    runs = read_table(Path(printed_directory(claimed)), "runs").set_index("precision")
    assert runs.loc["fp32", "status"] == "ok" and runs.loc["fp32", "compute_dtype"] == "float32"
    assert runs.loc["bf16", "status"] == "failed" and runs.loc["bf16", "compute_dtype"] == "float32"
    assert "precision bf16 requested, but the matrix products ran in float32, not bfloat16" in runs.loc["bf16", "error"]
    declined = framebench(*common, str(tmp_path / "b"), env=plugin)
    assert declined.returncode == 0, declined.stderr[-2000:]
    runs = read_table(Path(printed_directory(declined)), "runs").set_index("precision")
    assert runs.loc["bf16", "status"] == "unsupported" and runs.loc["bf16", "error"] == "FakeClassifier trains at fp32 on cpu/gpu only"
    resumed = framebench("run", "--resume", printed_directory(declined), env=plugin)  # nothing left to run: the ok one stays ok
    assert resumed.returncode == 0 and "1 job(s) already ok" in resumed.stderr and "0 to run" in resumed.stderr, resumed.stderr[-2000:]
    assert len(read_table(Path(printed_directory(declined)), "runs")) == 2  # an unsupported job is not tried again


def test_conformance_items_carry_their_precision_and_none_is_generated_for_a_declined_one():
    ids = [case.id for case in cases(registry.lookup("torch"), registry.lookup("numpy"))]
    assert "torch-trajectory-bf16[adam]" in ids
    assert not [i for i in ids if "-trajectory-fp16" in i or "-trajectory-tf32" in i]  # on the CPU: declined, never passed
    assert not [i for i in ids if i.startswith("numpy-trajectory-")]


@pytest.mark.parametrize(
    "speedup, gemm_speedup, share, says",
    [
        (1.3, 1.4, float("nan"), "faster GEMMs, faster epoch"),
        (1.3, 1.4, 0.9, "faster GEMMs, faster epoch"),
        (1.1, 1.8, 0.35, "under 70% of their saving reached it"),
        (0.9, 1.8, -0.2, "but no faster epoch"),
        (0.9, 0.8, float("nan"), "not faster here"),
    ],
)
def test_the_study_says_whether_faster_gemms_made_a_faster_epoch(speedup, gemm_speedup, share, says):
    assert says in verdict(speedup, gemm_speedup, share)


def test_a_precision_sweep_is_planned_once_per_precision_and_a_repeated_one_refused():
    config = new_config(RunRequest(backends="torch", sweep="precision=fp32,bf16"), {}, {})
    assert config["sweep"] == {"field": "precision", "values": ["fp32", "bf16"]}
    with pytest.raises(FrameBenchError, match="needs distinct values"):
        new_config(RunRequest(backends="torch", sweep="precision=fp32,fp32"), {}, {})


def test_a_configuration_measured_beside_busy_neighbours_is_said_to_be_no_verdict():
    assert busy_warning(pd.DataFrame({"other_cpu_frac": [0.01, 0.02, 0.9]})) == ""  # one busy job of three: the median is quiet
    assert "**Busy machine**" in busy_warning(pd.DataFrame({"other_cpu_frac": [0.5, 0.6, 0.01]}))


@pytest.mark.parametrize(("library", "result"), [("jax", "float32"), ("jnp.matmul", "bfloat16")])
def test_each_jax_floor_times_the_product_form_its_backends_run(library, result):
    """jax's floor is lax.dot with an fp32 result (framebench's jax backend); keras-jax's is jnp.matmul,
    whose 16-bit result XLA:CPU multiplies in fp32: held to jax's, Keras on JAX would look slow outside its products."""
    from framebench.driver.probe import timer

    call, _ = timer(library, "cpu", "bfloat16")(4, 8, 4)
    assert str(call().dtype) == result
    assert registry.lookup("keras-jax").gemm_library == "jnp.matmul" and registry.lookup("jax").gemm_library == "jax"
