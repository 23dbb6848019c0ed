"""Lockstep (framebench.driver.lockstep): the ABBA order, the pairing of jobs, and the pause protocol
run against a fake worker (tests/fake_worker.py) that speaks the worker's wire and trains nothing, so
every test here takes well under a second of waiting; and the worker's side of the control pipe."""

from __future__ import annotations

import dataclasses
import itertools
import math
import os
import sys
import types
from pathlib import Path

import pytest

from framebench.core import registry
from framebench.core.config import ModelConfig, TrainConfig
from framebench.driver import lockstep, node
from framebench.driver.executors import LocalExecutor
from framebench.driver.session import make_executor
from framebench.driver.worker import GO, turn_taker
from framebench.errors import FrameBenchError
from framebench.store.events import End, Epoch, Setup, Submitted
from framebench.store.job import DIMENSIONS, Job
from framebench.store.reader import read_table
from framebench.store.schema import ADDED_COLUMNS, columns

FAKE_WORKER = Path(__file__).with_name("fake_worker.py")
EPOCHS = 4


def job(env: str, repeat: int = 0, backend: str = "numpy", epochs: int = EPOCHS) -> Job:
    point = {d.name: d.default for d in DIMENSIONS} | {"backend": backend, "env": env}
    config = {"model": dataclasses.asdict(ModelConfig()), "train": dataclasses.asdict(TrainConfig(epochs=epochs, batch_size=10))}
    return Job("r", "digits", None, "ci", config, threads=1, target_acc=0.9, point=point | {"seed": str(repeat)}, repeat=repeat)


@pytest.fixture
def fake(monkeypatch, tmp_path):
    """Workers are the fake; returns the trace file its epochs are written to."""
    monkeypatch.setattr(node, "worker_command", lambda _job: [sys.executable, str(FAKE_WORKER)])
    trace = tmp_path / "trace"
    monkeypatch.setenv("FAKE_PAIR_TRACE", str(trace))
    monkeypatch.setenv("FAKE_PAIR_EPOCH_S", "0.01")
    return trace


def run_pair(jobs: list[Job], timeout_s: float = 60) -> list[tuple[str, object]]:
    return [(j.env, event) for j, event in lockstep.execute(jobs, timeout_s)]


def traced(trace: Path) -> list[tuple[str, int, float, float]]:
    rows = [line.split() for line in trace.read_text().splitlines()]
    return sorted(((env, int(epoch), float(begin), float(end)) for env, epoch, begin, end in rows), key=lambda r: r[2])


def ends(events) -> dict[str, End]:
    return {env: event for env, event in events if isinstance(event, End)}


def test_turns_go_leader_follower_then_abba_for_ever():
    assert list(itertools.islice(lockstep.abba(), 10)) == [0, 1, 1, 0, 0, 1, 1, 0, 0, 1]


def test_only_jobs_that_differ_in_their_environment_alone_are_paired_and_the_leader_alternates_by_repeat():
    a, b, c = job("base"), job("new"), job("base", backend="jax")
    assert lockstep.groups([a, b, c]) == [[a, b], [c]]
    assert lockstep.groups([a, c, b]) == [[a], [c], [b]]  # not adjacent: not a pair
    assert lockstep.groups([a, job("base", repeat=1)]) == [[a], [job("base", repeat=1)]]  # same environment: not a pair
    assert lockstep.leader_first([a, b]) == [a, b]
    assert lockstep.leader_first([job("base", 1), job("new", 1)]) == [job("new", 1), job("base", 1)]


def test_a_pair_runs_one_epoch_at_a_time_in_abba_order_each_epoch_with_its_slot(fake):
    events = run_pair([job("base"), job("new")])
    epochs = [(env, e.epoch, e.slot) for env, e in events if isinstance(e, Epoch)]
    assert epochs == [
        ("base", 1, 0),
        ("new", 1, 1),
        ("new", 2, 2),
        ("base", 2, 3),
        ("base", 3, 4),
        ("new", 3, 5),
        ("new", 4, 6),
        ("base", 4, 7),
    ]
    spans = traced(fake)
    assert [(env, epoch) for env, epoch, _, _ in spans] == [(env, epoch) for env, epoch, _ in epochs]
    assert all(before[3] <= after[2] for before, after in itertools.pairwise(spans))  # never two epochs at once
    finished = ends(events)
    assert {env: (end.status, end.lockstep) for env, end in finished.items()} == {"base": ("ok", "paired"), "new": ("ok", "paired")}
    order = [(env, type(e).__name__) for env, e in events if isinstance(e, Submitted | Setup)]
    assert order == [("base", "Submitted"), ("base", "Setup"), ("new", "Submitted"), ("new", "Setup")]  # set up one after the other
    assert finished["base"].other_cpu_frac is not None and finished["base"].calib_before_s is None  # no calibration beside a pair


def test_the_second_environment_leads_odd_repeats(fake):
    events = run_pair(lockstep.groups([job("base", 1), job("new", 1)])[0])
    assert [(env, e.epoch) for env, e in events if isinstance(e, Epoch)][:4] == [("new", 1), ("base", 1), ("base", 2), ("new", 2)]


def test_a_side_that_crashes_ends_with_its_row_and_its_partner_finishes_alone_saying_so(fake, monkeypatch):
    monkeypatch.setenv("FAKE_PAIR_new", "crash@2")
    events = run_pair([job("base"), job("new")])
    finished = ends(events)
    assert finished["new"].status == "failed" and "worker exited with status 3" in finished["new"].error
    assert finished["base"].status == "ok"
    assert finished["base"].lockstep == "alone from epoch 2: its partner (env=new) ended failed"
    base_epochs = [e for env, e in events if env == "base" and isinstance(e, Epoch)]
    assert [e.epoch for e in base_epochs] == [1, 2, 3, 4] and [e.slot for e in base_epochs] == [0, 3, 4, 5]


def test_a_side_that_hangs_times_out_on_its_own_running_time_and_its_partner_goes_on(fake, monkeypatch):
    monkeypatch.setenv("FAKE_PAIR_base", "hang@3")
    events = run_pair([job("base"), job("new")], timeout_s=1.5)
    finished = ends(events)
    assert finished["base"].status == "timeout" and "waiting for its lockstep partner does not count" in finished["base"].error
    assert finished["new"].status == "ok" and finished["new"].lockstep.startswith("alone from epoch 3")
    assert [e.epoch for env, e in events if env == "base" and isinstance(e, Epoch)] == [1, 2]


def test_an_epoch_out_of_turn_fails_that_side(fake, monkeypatch):
    monkeypatch.setenv("FAKE_PAIR_new", "unannounced")
    finished = ends(run_pair([job("base"), job("new")]))
    assert finished["new"].status == "failed" and "out of its turn" in finished["new"].error and finished["base"].status == "ok"


def test_a_backend_that_cannot_pause_alternates_whole_jobs(fake, monkeypatch):
    entry = registry.REGISTRY[("numpy", "default")]
    monkeypatch.setitem(registry.REGISTRY.entries, ("numpy", "default"), entry.__class__(**{**entry.__dict__, "pauses": False}))
    monkeypatch.setattr(node, "calibrate", lambda threads: 0.001)
    events = run_pair([job("base"), job("new")])
    assert [(env, e.epoch) for env, e in events if isinstance(e, Epoch)] == [("base", n) for n in range(1, 5)] + [
        ("new", n) for n in range(1, 5)
    ]
    assert all(e.slot is None for _, e in events if isinstance(e, Epoch))
    assert {end.lockstep for end in ends(events).values()} == {"whole jobs: numpy cannot pause between epochs"}


def test_a_pair_stopped_mid_run_leaves_no_worker(fake):
    events = LocalExecutor(lockstep=True).run([job("base", epochs=50), job("new", epochs=50)], 60)
    for _, event in events:
        if isinstance(event, Epoch) and event.epoch == 3:
            break
    events.close()  # what the driver does when a signal stops it
    pids = [int(pid) for pid in Path(str(fake) + ".pids").read_text().split()]
    assert len(pids) == 2
    for pid in pids:
        with pytest.raises(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)  # reaped: gone


def test_the_worker_waits_for_go_before_each_epoch_and_refuses_anything_else():
    read_fd, write_fd = os.pipe()
    with os.fdopen(read_fd, "rb") as control, os.fdopen(write_fd, "wb", buffering=0) as node_end:
        wait = turn_taker(control)
        node_end.write(GO)
        wait(1)  # returns: its turn
        node_end.write(b"stop\n")
        with pytest.raises(FrameBenchError, match="not b'go"):
            wait(2)
        node_end.close()
        with pytest.raises(SystemExit, match="closed the control pipe before epoch 3"):
            wait(3)


def test_lockstep_on_ray_says_it_alternates_whole_jobs(monkeypatch, capsys):
    """Ray runs whole jobs wherever a slot is free: a lockstep request there is said to fall back."""
    stand_in = types.ModuleType("framebench.driver.ray_executor")
    stand_in.RayExecutor = lambda address, schedule_timeout: ("ray", address)
    monkeypatch.setitem(sys.modules, "framebench.driver.ray_executor", stand_in)
    assert make_executor("ray", None, 300.0, lockstep=True) == ("ray", None)
    assert "the ray executor runs whole jobs, so the environments alternate job by job, unpaired" in capsys.readouterr().err
    assert make_executor("local", None, 300.0, lockstep=True).lockstep


OLDER_ROW = {"repeat": "1", "attempt": "1", "epoch": "1", "status": "ok", "epoch_s": "0.5"}  # the cells a row must hold


def test_tables_from_before_lockstep_read_with_empty_slot_and_lockstep_columns(tmp_path):
    for table in ("runs", "epochs"):
        header = [c for c in columns(table) if c not in ADDED_COLUMNS[table]]
        (tmp_path / f"{table}.csv").write_text(",".join(header) + "\n" + ",".join(OLDER_ROW.get(c, "") for c in header) + "\n")
    runs, epochs = read_table(tmp_path, "runs"), read_table(tmp_path, "epochs")
    assert list(runs.columns) == columns("runs") and runs["lockstep"].tolist() == [""]
    assert list(epochs.columns) == columns("epochs") and math.isnan(epochs["slot"].iloc[0])
