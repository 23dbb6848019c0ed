"""What the node believes of a worker: every event held to the job contract's rules of sense
(framebench.store.sense.Sense), everything a worker says bounded (a line's length, the lines waiting,
the job's time however much it talks), and the worker's exit, not its channel's end, ending the job.
A scripted worker (tests/scripted_worker.py) says what each case needs; no framework runs."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import queue
import signal
import sys
import threading
import time
from pathlib import Path

import pytest

from framebench.core.config import ModelConfig, TrainConfig
from framebench.driver import node, session
from framebench.driver.request import RunRequest
from framebench.store import sense
from framebench.store.events import End, Epoch, Evaluation, Setup, Start, to_wire
from framebench.store.job import Job
from framebench.store.reader import load_results
from tests.test_faults import alive, wait_for

SCRIPTED = Path(__file__).with_name("scripted_worker.py")
SAMPLES, BATCH, EPOCHS = 10, 4, 2  # an epoch of 3 steps, 2 epochs planned
POINT = {"backend": "numpy", "variant": "default", "device": "cpu", "sweep_value": "", "env": "current", "precision": "fp32"}


def job_of(**train) -> Job:
    train = dataclasses.asdict(TrainConfig(**{"batch_size": BATCH, "epochs": EPOCHS, **train}))
    config = {"model": dataclasses.asdict(ModelConfig()), "train": train}
    return Job(run_id="r", dataset="digits", data_dir=None, preset="mlp", config=config, threads=1, target_acc=0.9, point=POINT)


def start() -> dict:
    return {"type": "start"}


def setup(**changes) -> dict:
    return {**to_wire(Setup(0.1, "1.0", SAMPLES)), **changes}


def epoch(number: int, **changes) -> dict:
    return {**to_wire(Epoch(number, 0.5, [0.3, 0.2, 0.1], 0.2, 0.25, 0.9, 0.01, 100.0)), **changes}


def evaluation(epoch_number: int, step: int, **changes) -> dict:
    return {**to_wire(Evaluation(epoch_number, step, 0.1 * step, 0.3, 0.8, 0.01)), **changes}


def end(status: str = "ok", **changes) -> dict:
    return {"type": "end", "status": status, "compute_dtype": "float32" if status == "ok" else "", **changes}


TRUE = [start(), setup(), evaluation(1, 2), epoch(1), evaluation(2, 5), epoch(2), end()]


@pytest.fixture
def scripted(monkeypatch, tmp_path):
    """A function running a job whose worker follows `steps` (scripted_worker's), returning its events
    as the node yields them and the seconds it took; `pause` seconds between two events read (a driver
    busy recording)."""
    monkeypatch.setattr(node, "calibrate", lambda threads: 0.01)  # the machine's speed is not what is tested
    monkeypatch.setenv("SCRIPT_PID_DIR", str(tmp_path))

    def run(steps: list[dict], job: Job | None = None, timeout_s: float = 60, pause: float = 0) -> tuple[list, float]:
        script = tmp_path / "script.json"
        script.write_text(json.dumps(steps))
        monkeypatch.setattr(node, "worker_command", lambda _: [sys.executable, str(SCRIPTED), str(script)])
        started, events = time.monotonic(), []
        for event in node.execute(job or job_of(), timeout_s):
            events.append(event)
            time.sleep(pause)
        return events, time.monotonic() - started

    yield run
    for pid in (int(p.name) for p in tmp_path.iterdir() if p.name.isdigit()):
        if alive(pid):
            os.kill(pid, signal.SIGKILL)


def sends(*events: dict) -> list[dict]:
    return [{"send": event} for event in events]


def test_a_true_worker_s_events_pass_whole(scripted):
    events, _ = scripted(sends(*TRUE))
    assert [type(e).__name__ for e in events] == ["Start", "Setup", "Evaluation", "Epoch", "Evaluation", "Epoch", "End"]
    assert events[-1].status == "ok" and events[-1].error == ""


@pytest.mark.parametrize(
    "said, rule",
    [
        ([start(), setup(), epoch(2), epoch(1)], sense.RULE_EPOCHS),  # backwards
        ([start(), setup(), epoch(10**9)], sense.RULE_EPOCHS),
        ([start(), setup(), epoch(10**30)], sense.RULE_EPOCHS),
        ([start(), setup(), epoch(0)], sense.RULE_EPOCHS),
        ([start(), setup(), epoch(-3)], sense.RULE_EPOCHS),
        ([start(), setup(), epoch(1), epoch(1), epoch(2), end()], sense.RULE_EPOCHS),  # a forked worker: epoch 1 twice
        ([start(), setup(), epoch(1), epoch(2), epoch(3)], sense.RULE_EPOCHS),  # beyond the planned count
        ([start(), setup(), epoch(1, epoch_s=-1.0)], sense.RULE_TIMES),
        ([start(), setup(), epoch(1, epoch_s=math.nan)], sense.RULE_TIMES),
        ([start(), setup(), epoch(1, eval_s=math.inf)], sense.RULE_TIMES),
        ([start(), setup(setup_s=-0.5)], sense.RULE_TIMES),
        ([start(), setup(), epoch(1), epoch(2), end(cpu_s=-1.0)], sense.RULE_TIMES),
        ([start(), setup(), epoch(1, test_acc=5.0)], sense.RULE_ACCURACY),
        ([start(), setup(), epoch(1, test_acc=-0.1)], sense.RULE_ACCURACY),
        ([start(), setup(), epoch(1, test_loss=math.inf)], sense.RULE_LOSSES),
        ([start(), setup(), epoch(1, step_losses=[0.3, math.nan, 0.1])], sense.RULE_LOSSES),
        ([start(), setup(), epoch(1, step_losses=[0.2])], sense.RULE_STEPS),
        ([start(), setup(), epoch(1, train_loss=7.0)], sense.RULE_STEPS),
        ([start(), setup(samples_per_epoch=0)], sense.RULE_SAMPLES),
        ([start(), setup(samples_per_epoch=10**12)], sense.RULE_SAMPLES),
        ([start(), setup(), epoch(1), epoch(2), end(), end("failed", error="RuntimeError: the real exception")], sense.RULE_ORDER),
        ([start(), setup(), epoch(1), end()], sense.RULE_COMPLETE),
        ([setup(), epoch(1), epoch(2), end()], sense.RULE_ORDER),  # nothing before start
        ([start(), start()], sense.RULE_ORDER),
        ([start(), {"type": "submitted"}], sense.RULE_ORDER),
        ([start(), setup(), setup()], sense.RULE_ORDER),
        ([start(), epoch(1)], sense.RULE_ORDER),  # an epoch before setup
        ([start(), setup(), epoch(1), epoch(2), end("failed", retried=True)], sense.RULE_DRIVER_FIELDS),
        ([start(), setup(), epoch(1), epoch(2), end(node="elsewhere")], sense.RULE_DRIVER_FIELDS),
        ([start(), setup(), epoch(1), epoch(2), end(calib_before_s=1.0, started_at=0.0)], sense.RULE_DRIVER_FIELDS),
        ([{"type": "start", "node": "forged"}], sense.RULE_DRIVER_FIELDS),
        ([start(), setup(), epoch(1), epoch(2), end("lost")], sense.RULE_STATUSES),
        ([start(), setup(), epoch(1), epoch(2), end("timeout")], sense.RULE_STATUSES),
        ([start(), setup(), epoch(1), end("unavailable", error="no GPU")], sense.RULE_NOT_RUN),  # after training
        ([start(), setup(), epoch(1), epoch(2), end(compute_dtype="bfloat16")], sense.RULE_DTYPE),  # an fp32 job
        ([start(), setup(), epoch(1), epoch(2), end(compute_dtype="")], sense.RULE_DTYPE),
        ([start(), setup(), epoch(1), end("failed", compute_dtype="int4")], sense.RULE_DTYPE),
        ([start(), end("failed", compute_dtype="float32")], sense.RULE_DTYPE),  # claimed with nothing trained
        ([start(), evaluation(1, 2)], sense.RULE_ORDER),  # an evaluation before setup
        ([start(), setup(), evaluation(1, 2), evaluation(1, 1)], sense.RULE_EVALUATIONS),  # steps backwards
        ([start(), setup(), evaluation(1, 4)], sense.RULE_EVALUATIONS),  # beyond the epoch's 3 steps
        ([start(), setup(), epoch(1), evaluation(1, 3)], sense.RULE_EVALUATIONS),  # in an epoch already sent
        ([start(), setup(), evaluation(1, 2), evaluation(1, 3, train_s=0.1)], sense.RULE_EVALUATIONS),  # the clock backwards
        ([start(), setup(), evaluation(1, 2, test_acc=1.5)], sense.RULE_ACCURACY),
        ([start(), setup(), evaluation(1, 2, test_loss=math.nan)], sense.RULE_LOSSES),
        ([start(), setup(), evaluation(1, 2, eval_s=-1.0)], sense.RULE_TIMES),
    ],
)
def test_an_event_that_cannot_be_true_fails_the_job_naming_the_rule(scripted, said, rule):
    events, _ = scripted(sends(*said))
    last = events[-1]
    assert isinstance(last, End) and last.status == "failed", last
    assert f"cannot be true of this job: {rule}" in last.error
    assert not last.retried and all(isinstance(e, Start | Setup | Evaluation | Epoch) for e in events[:-1])
    assert all(e.epoch_s >= 0 and 0 <= e.test_acc <= 1 for e in events if isinstance(e, Epoch))


def test_what_a_true_job_may_say_is_not_refused(scripted):
    """Not run before setup; failed with the dtype that did not take effect; diverged after an epoch;
    float64 in an fp32 job (numpy:tutorial); a loss of exactly 0; an accuracy of exactly 0 or 1."""
    job = job_of()
    for said in (
        [start(), end("unavailable", error="no GPU here")],
        [start(), end("unsupported", error="no such optimiser")],
        [start(), setup(), end("failed", error="precision bf16 requested, but ...", compute_dtype="float32")],
        [start(), setup(), epoch(1), end("diverged", error="non-finite loss", compute_dtype="float32")],
        [start(), setup(), epoch(1, test_acc=0.0), epoch(2, test_acc=1.0), end(compute_dtype="float64")],
        [start(), setup(), epoch(1, step_losses=[0.0, 0.0, 0.0], train_loss=0.0, epoch_s=0.0), epoch(2), end()],
    ):
        assert scripted(sends(*said), job)[0][-1].error == said[-1].get("error", ""), said


# The training a scripted job's epochs (three steps each) are true to, and a true job of it
SCRIPTED_TRAIN = {"epochs": EPOCHS, "batch_size": 512, "sampling": "with_replacement", "steps_per_epoch": 3}
TRUE_JOB = [start(), setup(samples_per_epoch=3 * 512), epoch(1), epoch(2), end()]


def scripted_jobs(monkeypatch, folder: Path, script=lambda job: TRUE_JOB) -> dict:
    """Every job a run starts gets a scripted worker sending the events `script(job)` lists (no framework
    runs, nothing trains): the training overrides whose plan they are true to (SCRIPTED_TRAIN)."""
    monkeypatch.setattr(node, "calibrate", lambda threads: 0.01)  # the machine's speed is not what is tested

    def command(job: Job) -> list[str]:
        path = folder / f"script-{len(list(folder.glob('script-*.json')))}.json"
        path.write_text(json.dumps(sends(*script(job))))
        return [sys.executable, str(SCRIPTED), str(path)]

    monkeypatch.setattr(node, "worker_command", command)
    return SCRIPTED_TRAIN


def test_an_end_setting_retried_is_a_failure_counted_in_the_exit_status(monkeypatch, tmp_path):
    """It once left the failed row out of the exit status: exit 0 with a job failed."""
    retried = [*TRUE_JOB[:-1], end("failed", error="scripted", retried=True)]
    train = scripted_jobs(monkeypatch, tmp_path, lambda job: retried if job.repeat == 1 else TRUE_JOB)
    request = RunRequest(backends="numpy", dataset="digits", floors=False, results_dir=str(tmp_path), run_id="r", threads=1, repeats=2)
    assert session.run(request, {}, train) == 1
    runs = load_results(tmp_path / "r")["runs"]
    assert runs["status"].tolist() == ["ok", "failed"] and sense.RULE_DRIVER_FIELDS in runs["error"][1]


def test_a_flood_of_lines_stops_at_the_first_epoch_beyond_the_plan(scripted):
    """100,003 epoch rows once ran a --timeout 20 job for 173 s."""
    events, seconds = scripted([*sends(start(), setup(), epoch(1), epoch(2)), {"send": epoch(3), "times": 100_000}])
    assert events[-1].status == "failed" and sense.RULE_EPOCHS in events[-1].error
    assert sum(isinstance(e, Epoch) for e in events) == 2 and seconds < 30


def test_the_timeout_holds_however_much_a_worker_talks(scripted):
    """Lines always waiting once kept the node from ever looking at the clock."""
    job = job_of(epochs=100_000)
    said = [*sends(start(), setup()), *({"send": epoch(n)} for n in range(1, 2_001))]
    events, seconds = scripted(said, job, timeout_s=1.0, pause=0.01)
    assert events[-1].status == "timeout" and seconds < 10
    assert 0 < sum(isinstance(e, Epoch) for e in events) < 2_000


def test_a_line_over_the_cap_fails_the_job_naming_it(scripted):
    cap = node.event_line_cap(job_of())
    events, _ = scripted([*sends(start()), {"raw": "x" * (cap + 10) + "\n"}])
    assert events[-1].status == "failed" and f"an event line longer than {cap:,} bytes" in events[-1].error


def test_the_cap_leaves_room_for_the_longest_epoch_a_job_can_draw(scripted):
    """Batch size 1 on 60,000 samples: an epoch line of about 1.3 MB, over LINE_CAP_BYTES alone."""
    job = job_of(epochs=1, batch_size=1, sampling="with_replacement", steps_per_epoch=60_000)
    losses = [0.123456789012345678 + i * 1e-9 for i in range(60_000)]
    line = epoch(1, step_losses=losses, train_loss=math.fsum(losses) / len(losses))
    assert len(json.dumps(line)) > node.LINE_CAP_BYTES
    events, _ = scripted(sends(start(), setup(samples_per_epoch=60_000), line, end()), job)
    assert events[-1].status == "ok", events[-1].error


class Watched(queue.Queue):
    """A queue that says when a line is put while it is full (the putter then waits, or drops the line)."""

    def __init__(self, size: int) -> None:
        super().__init__(size)
        self.put_while_full = threading.Event()

    def put(self, item, block=True, timeout=None) -> None:
        if self.full():
            self.put_while_full.set()
        super().put(item, block, timeout)


def test_lines_waiting_to_be_recorded_are_bounded_and_none_is_lost():
    read_fd, write_fd = os.pipe()
    lines = Watched(2)
    done = threading.Event()
    reader = threading.Thread(target=node.read_lines, args=(os.fdopen(read_fd, "rb"), lines, 100, done), daemon=True)
    reader.start()
    with os.fdopen(write_fd, "wb") as channel:
        channel.write(b"".join(b"%d\n" % n for n in range(50)))
    assert lines.put_while_full.wait(timeout=10), "the reader never reached the full queue"
    assert lines.qsize() == 2 and reader.is_alive()  # the reader waits with its third line, the rest waits in the pipe
    got = [lines.get(timeout=10) for _ in range(51)]
    assert got == [(None, b"%d\n" % n) for n in range(50)] + [(None, None)]
    done.set()


def test_a_worker_that_forks_and_dies_is_a_prompt_crash_and_its_child_is_killed(scripted, tmp_path):
    """The child held the channel: the job waited its whole --timeout and read as a timeout."""
    events, seconds = scripted([*sends(start(), setup()), {"fork": True}, {"exit": 3}], timeout_s=120)
    assert events[-1].status == "failed" and events[-1].error.startswith("worker exited with status 3")
    assert seconds < 60
    children = [int(p.name) for p in tmp_path.iterdir() if p.name.isdigit()]
    assert children
    wait_for(lambda: not any(alive(pid) for pid in children), "the forked child to be gone", timeout=10)


def test_half_a_line_then_exit_3_is_a_crash_not_a_malformed_event(scripted):
    events, _ = scripted([*sends(start()), {"raw": '{"type": "setup", "setup_'}, {"exit": 3}])
    assert events[-1].status == "failed" and events[-1].error.startswith("worker exited with status 3")


def test_a_worker_killed_by_a_real_time_signal_is_named(scripted):
    """signal.Signals(40) raises: the driver once died of it."""
    events, _ = scripted([*sends(start()), {"signal": 40}])
    assert events[-1].status == "failed" and "worker died with signal 40 (SIGRTMIN+6)" in events[-1].error
    assert node.crash_message(-9, "") == "worker died with SIGKILL (killed, likely out of memory); see its log"
