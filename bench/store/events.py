"""The events a worker sends about its job, in this order: start, setup, per epoch its evaluations and
the epoch, end. `Submitted` is the executor's (the job is in flight from then on). Every event crosses
a process boundary as a dict (`to_wire`), is checked against its dataclass when read (`from_wire`) and,
coming from a worker, against the rules of sense (framebench.store.sense). The wire is versioned
(PROTOCOL_VERSION): a driver runs only workers that speak its own.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from framebench.errors import FrameBenchError
from framebench.store.job import STATUSES

PROTOCOL_VERSION = 1  # of the worker's wire: the Job it reads (its config too), the events it sends, its control pipe; bumped with any


@dataclass(frozen=True)
class Submitted:
    """The executor took the job: from now on it is in flight."""


DRIVER = {"owner": "driver"}  # metadata of a field the node or the executor fills in: a worker's event never sets it (Sense)


@dataclass(frozen=True)
class Start:
    node: str = field(default="", metadata=DRIVER)  # the node that runs it (the executor fills it in)


@dataclass(frozen=True)
class Setup:
    setup_s: float  # building the model and preparing the data, untimed by the epochs
    framework_version: str  # the framework's version string
    samples_per_epoch: int  # training samples one epoch visits
    implementation: str = ""  # the hash of the backend's code in the worker's own framebench (registry.Entry.implementation)


@dataclass(frozen=True)
class Epoch:
    epoch: int  # 1-based
    epoch_s: float  # wall-clock seconds of train_epoch + sync
    step_losses: list[float]  # per-step training losses
    train_loss: float  # their mean
    test_loss: float  # mean test loss after the epoch
    test_acc: float  # test accuracy after the epoch
    eval_s: float  # seconds the test-set prediction took
    peak_rss_mb: float  # peak resident memory of the worker so far
    slot: int | None = field(
        default=None, metadata=DRIVER
    )  # its place in its lockstep pair's sequence of epochs (0, 1, 2, ...), None alone


@dataclass(frozen=True)
class Evaluation:
    """The test set evaluated during training (every --eval-every steps and at each epoch's end), off the clock."""

    epoch: int  # 1-based epoch the evaluation falls in
    step: int  # optimisation steps done since the start of training
    train_s: float  # training seconds so far (train_epoch + sync only): the clock of time-to-target
    test_loss: float  # mean test loss at this point
    test_acc: float  # test accuracy at this point
    eval_s: float  # seconds the evaluation took (not in train_s)


@dataclass(frozen=True)
class End:
    status: str  # one of STATUSES
    error: str = ""  # why, for anything but ok
    peak_rss_mb: float | None = None  # the worker's peak resident memory
    peak_gpu_mb: float | None = None  # peak GPU memory by the framework's count
    cpu_s: float | None = None  # CPU seconds of the worker, to tell its load from other processes'
    compute_dtype: str = ""  # the dtype the backend's matrix products ran in, inspected after the first epoch ("" if none ran)
    # Filled in by the node and the executor, never by the worker:
    log: str = field(default="", metadata=DRIVER)  # the tail of the worker's log
    loadavg_1m: float | None = field(default=None, metadata=DRIVER)  # load average when the job started
    other_cpu_frac: float | None = field(default=None, metadata=DRIVER)  # share of the CPUs other processes used while it ran
    calib_before_s: float | None = field(default=None, metadata=DRIVER)  # the machine's calibration just before the job
    calib_after_s: float | None = field(default=None, metadata=DRIVER)  # and just after it (framebench.driver.calibration)
    steal_frac: float | None = field(default=None, metadata=DRIVER)  # share of the host's CPU time the hypervisor stole meanwhile
    host: str = field(default="", metadata=DRIVER)  # hostname of the machine that ran it
    node: str = field(default="", metadata=DRIVER)  # node name (host, plus the Ray node id where nodes share a host)
    started_at: float | None = field(default=None, metadata=DRIVER)  # wall clock at the start
    ended_at: float | None = field(default=None, metadata=DRIVER)  # wall clock at the end
    retried: bool = field(default=False, metadata=DRIVER)  # a lost attempt whose retry follows: superseded, not a result
    lockstep: str = field(
        default="", metadata=DRIVER
    )  # how it ran beside its lockstep partner (framebench.driver.lockstep): "paired", "alone from ..."


DRIVER_OWNED = {f.name for cls in (Start, Epoch, End) for f in dataclasses.fields(cls) if f.metadata == DRIVER}  # never a worker's


EVENTS = {"submitted": Submitted, "start": Start, "setup": Setup, "evaluation": Evaluation, "epoch": Epoch, "end": End}
NUMBERS = (int, float)


def kind(event) -> str:
    """The event's name on the wire ("start", "epoch", ...)."""
    return next(name for name, cls in EVENTS.items() if isinstance(event, cls))


def to_wire(event) -> dict:
    return {"type": kind(event), **dataclasses.asdict(event)}


class MalformedEvent(FrameBenchError):
    """A message that is not an event of this contract: the job it came from fails with the reason."""


def from_wire(message) -> Submitted | Start | Setup | Evaluation | Epoch | End:
    """The event a message holds, every field present and of its declared type; anything else is
    MalformedEvent naming what is wrong (a worker's message is untrusted input)."""
    if not isinstance(message, dict) or message.get("type") not in EVENTS:
        raise MalformedEvent(f"not a framebench event: {str(message)[:120]!r}")
    cls = EVENTS[message["type"]]
    fields = {f.name: f for f in dataclasses.fields(cls)}
    values = {k: v for k, v in message.items() if k != "type"}
    if unknown := sorted(set(values) - set(fields)):
        raise MalformedEvent(f"{message['type']} event with unknown field(s) {', '.join(unknown)}")
    for name, spec in fields.items():
        if name not in values:
            if spec.default is dataclasses.MISSING:
                raise MalformedEvent(f"{message['type']} event without {name}")
            continue
        if not conforms(values[name], str(spec.type)):
            raise MalformedEvent(f"{message['type']} event's {name} is {str(values[name])[:60]!r}, not {spec.type}")
    if cls is End and values["status"] not in STATUSES:
        raise MalformedEvent(f"end event with unknown status {str(values['status'])[:60]!r}")
    return cls(**values)


def conforms(value, declared: str) -> bool:
    """Whether a decoded JSON value fits a field's declared type (as written in this module)."""
    if value is None:
        return "None" in declared
    if isinstance(value, bool):
        return declared.startswith("bool")
    if declared.startswith("str"):
        return isinstance(value, str)
    if declared.startswith("int"):
        return isinstance(value, int)
    if declared.startswith("float"):
        return isinstance(value, NUMBERS)
    if declared == "list[float]":
        return isinstance(value, list) and all(isinstance(v, NUMBERS) and not isinstance(v, bool) for v in value)
    return False
