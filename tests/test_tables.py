"""The synthetic-table factory (tests.tables) writes what a run writes: every column of the contract, every
cell one the reader takes, a typo refused, and a finished run that resuming leaves alone."""

from __future__ import annotations

import math

import pytest

from framebench.store import job as contract
from framebench.store import schema
from framebench.store.reader import load_results
from tests import tables
from tests.conftest import cli


def test_a_finished_run_fills_every_column_with_cells_the_reader_takes(tmp_path):
    directory = tables.finished_run(tmp_path / "r")
    read = load_results(directory)
    assert read["refused"] == []
    for table in schema.TABLE_NAMES:
        rows = read[table]
        assert list(rows.columns) == schema.columns(table) and len(rows) > 0, table
        empty = {c for c in rows.columns if (rows[c] == "").all() or rows[c].isna().all()}
        # empty in an ok run on one CPU: the error, GPU memory, a sweep, a lockstep partner, an epoch's lockstep slot
        assert empty <= {"error", "peak_gpu_mb", "sweep_field", "sweep_value", "lockstep", "slot"}, (table, empty)
    assert len(read["runs"]) == 4 and set(read["runs"]["status"]) == {contract.OK}


def test_a_field_the_contract_does_not_have_is_refused():
    with pytest.raises(TypeError, match="runs.csv has no column median_epoch"):
        tables.run_row(median_epoch=1.0)
    with pytest.raises(TypeError, match="a job's key has no column epoch_s"):
        tables.key(epoch_s=1.0)


def test_rows_follow_their_epoch_time_and_an_override_wins():
    row = tables.run_row(backend="jax", epoch_s=0.5, final_test_acc=0.9, status="failed")
    assert (row["median_epoch_s"], row["first_epoch_s"], row["samples_per_s"]) == (0.5, 1.0, tables.SAMPLES / 0.5)
    assert (row["backend"], row["gemm_library"], row["final_test_acc"], row["status"]) == ("jax", "jax", 0.9, "failed")
    epochs = tables.epoch_rows(epoch_s=0.5, repeat=1)
    assert [e["epoch_s"] for e in epochs] == [1.0, 0.5, 0.5] and {e["repeat"] for e in epochs} == {1}
    assert math.isnan(tables.run_row()["peak_gpu_mb"]) and tables.run_row()["lockstep"] == ""


def test_a_finished_run_resumes_with_nothing_to_run(tmp_path):
    directory = tables.finished_run(tmp_path / "r", repeats=3)
    assert tables.run_config(repeats=3)["matrices"] == load_results(directory)["config"]["matrices"]
    result = cli("run", "--resume", str(directory))
    assert result.returncode == 0 and "6 job(s) already ok" in result.stderr and "0 to run" in result.stderr, result.stderr
