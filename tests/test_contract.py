"""The job contract (framebench.store.job, the tables' schema and the events beside it): a dimension
is one entry in one place, and a worker's messages are held to the contract before the driver
believes them."""

from __future__ import annotations

import dataclasses

import pandas as pd
import pytest

from framebench.core.config import Sweep, resolve
from framebench.driver.plan import Matrix, done_keys, plan
from framebench.driver.recorder import JobState, summarize
from framebench.reports.comparison import Group, Options, Tolerances, compare_groups
from framebench.reports.verdicts import Kind, Verdict
from framebench.store import job as contract
from framebench.store import schema
from framebench.store.events import End, Epoch, MalformedEvent, Setup, from_wire, to_wire
from framebench.store.files import append_rows
from framebench.store.job import Dimension, Job
from framebench.store.reader import read_table

TEMPLATE = Job(run_id="r", dataset="digits", data_dir=None, preset="mlp", config={}, threads=1, target_acc=0.9)


@pytest.fixture
def flavour(monkeypatch):
    """A new dimension, added the way a real one is: one entry in DIMENSIONS, nothing else touched."""
    monkeypatch.setattr(contract, "DIMENSIONS", (*contract.DIMENSIONS, Dimension("flavour", "flavours", "plain", shapes_accuracy=True)))


def planned() -> list[Job]:
    model, train = resolve("mlp", {}, {"epochs": 1})
    matrix = Matrix({"backend": ["numpy"], "variant": ["default"], "device": ["cpu"], "flavour": ["sweet", "sour"]}, 2)
    return plan([matrix], TEMPLATE, Sweep("", ("",)), model, train)


def compared(base: list[dict], new: list[dict]) -> pd.DataFrame:
    options = Options(Tolerances(0.01, 0.1), compare_accuracy=True, compare_time=True)
    return compare_groups(
        Group(pd.DataFrame(base), pd.DataFrame(), {}, "BASE"), Group(pd.DataFrame(new), pd.DataFrame(), {}, "NEW"), options
    )


def ok_row(job: Job, acc: float) -> dict:
    setup = Setup(0.1, "numpy 2", 100)
    epochs = [Epoch(e, 1.0, [0.5], 0.5, 0.4, acc, 0.01, 100.0) for e in (1, 2)]
    return summarize(JobState(job, setup=setup, epochs=epochs), End("ok", node="box"))


def test_a_new_dimension_is_planned_innermost_and_interleaves(flavour):
    jobs = planned()
    assert [(j.repeat, j.flavour) for j in jobs] == [(0, "sweet"), (0, "sour"), (1, "sweet"), (1, "sour")]
    assert len({j.key() for j in jobs}) == 4 and "flavour=sour" in jobs[1].label


def test_a_new_dimension_is_a_column_of_every_job_table_and_of_each_row(flavour, tmp_path):
    for table in ("runs", "epochs", "steps"):
        assert "flavour" in schema.columns(table)
    job = planned()[1]
    row = ok_row(job, 0.9)
    assert row["flavour"] == "sour"
    append_rows(tmp_path, "runs", [row])
    assert read_table(tmp_path, "runs")["flavour"].tolist() == ["sour"]


def test_resume_tells_jobs_apart_by_a_new_dimension(flavour, tmp_path):
    sweet, sour = planned()[:2]
    append_rows(tmp_path, "runs", [ok_row(sweet, 0.9), {**ok_row(sour, 0.9), "status": "failed"}])
    done = done_keys(tmp_path)
    assert done[sweet.key()] == ("ok", 1) and done[sour.key()] == ("failed", 1)


def test_compare_keys_on_a_new_dimension(flavour):
    sweet, sour = planned()[:2]
    table = compared([ok_row(sweet, 0.9), ok_row(sour, 0.9)], [ok_row(sweet, 0.9), ok_row(sour, 0.5)]).set_index("flavour")
    assert table.loc["sweet", "verdict"] == Verdict(Kind.NO_CHANGE) and table.loc["sour", "verdict"] == Verdict(Kind.REGRESSION, "accuracy")
    assert "flavour" in contract.accuracy_key_columns()


def test_a_backend_code_change_is_not_comparable_rather_than_a_regression():
    job = dataclasses.replace(planned()[0], point={"backend": "numpy", "variant": "default", "device": "cpu", "sweep_value": ""})
    base = ok_row(job, 0.9)
    slower = {**ok_row(job, 0.5), "median_epoch_s": 9.0, "implementation": "0123456789ab"}
    table = compared([base], [slower])
    assert table["verdict"].iloc[0] == Verdict(
        Kind.NOT_COMPARABLE, f"the numpy backend's code changed ({base['implementation']} -> 0123456789ab)"
    )


def test_events_cross_the_wire_unchanged():
    for event in (Setup(0.5, "2.1", 60000), Epoch(1, 0.2, [2.3, 2.1], 2.2, 2.0, 0.3, 0.01, 300.0), End("ok", node="n", retried=True)):
        assert from_wire(to_wire(event)) == event


@pytest.mark.parametrize(
    "message, reason",
    [
        ({}, "not a framebench event"),
        ([1, 2], "not a framebench event"),
        ({"type": "epoch"}, "epoch event without epoch"),
        ({"type": "end", "status": "ok", "forged": 1}, "unknown field(s) forged"),
        ({"type": "end", "status": "great"}, "unknown status"),
        ({"type": "setup", "setup_s": "soon", "framework_version": "1", "samples_per_epoch": 1}, "setup_s is 'soon'"),
        ({"type": "epoch", **to_wire(Epoch(1, 0.2, [2.3], 2.3, 2.0, 0.3, 0.01, 300.0)), "step_losses": ["x"]}, "step_losses"),
    ],
)
def test_a_malformed_message_is_refused_with_the_reason(message, reason):
    with pytest.raises(MalformedEvent, match=reason.replace("(", r"\(").replace(")", r"\)")):
        from_wire(message)
