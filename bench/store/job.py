"""The job contract: what one job is, the key that names it, the events a worker sends about it and
the columns every table row of it carries. The driver, the node, the executors, the worker, the
tables and the reports all read these definitions; none re-derives a key or a column list.

A matrix dimension (seed, backend, variant, device, sweep value, ...) is one `Dimension` in DIMENSIONS:
the plan iterates it, every row carries it as a column, resume and compare key on it. Everything here
reads DIMENSIONS when called, never at import, so the list is the single place a dimension lives.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from framebench.errors import FrameBenchError

FORMAT_VERSION = 4  # of a results directory's tables and config.json; bumped when either changes shape
OK = "ok"
NOT_RUN = ("unavailable", "unsupported")  # the job never trained: declined, not failed
STATUSES = (OK, "failed", "diverged", "timeout", "interrupted", "lost", *NOT_RUN)


@dataclass(frozen=True)
class Dimension:
    name: str  # the Job attribute and the column in every table
    request_field: str  # the RunRequest field whose comma-separated list gives the values ("" = set by the plan itself)
    default: str  # the value of a job whose run does not vary this dimension
    shapes_accuracy: bool  # whether accuracy may differ along it (accuracy thresholds are kept per value)
    replicate: bool = False  # its values replicate one measurement (seeds): a summary pools them, a curve draws the first


DIMENSIONS: tuple[Dimension, ...] = (
    # The seed of the initial weights and batch order, the same for every backend (outermost: every backend
    # runs at seed s before seed s + 1, so backends interleave). A threshold holds at any seed: it is the lowest
    # accuracy measured over seeds; repeats rerun the same seed (for timing).
    Dimension("seed", "seeds", "0", shapes_accuracy=False, replicate=True),
    Dimension("backend", "backends", "", shapes_accuracy=True),
    Dimension("variant", "variants", "default", shapes_accuracy=False),  # a variant must reach its default's accuracy
    Dimension("device", "device", "cpu", shapes_accuracy=False),
    Dimension("sweep_value", "", "", shapes_accuracy=True),  # this job's value of the swept field, as written on the command line
    Dimension("env", "env", "current", shapes_accuracy=True),  # the framework environment (--env NAME): environments alternate job by job
    Dimension("precision", "precision", "fp32", shapes_accuracy=True),  # numeric precision of the training (innermost: interleaved)
)


LABEL_NAMED = ("backend", "variant", "device", "sweep_value")  # the dimensions a job's label spells out itself


def dimension_names() -> list[str]:
    return [d.name for d in DIMENSIONS]


def point_names() -> list[str]:
    """The dimensions a matrix lists itself (all but the sweep value, which follows the sweep)."""
    return [name for name in dimension_names() if name != "sweep_value"]


def summary_names() -> list[str]:
    """What a summary row is per: the matrix's dimensions but the replicates (seeds), which it pools."""
    return [d.name for d in DIMENSIONS if d.name != "sweep_value" and not d.replicate]


def replicate_names() -> list[str]:
    """The dimensions whose values replicate one measurement (the seed)."""
    return [d.name for d in DIMENSIONS if d.replicate]


def key_columns() -> list[str]:
    """What names a job within one results directory: every dimension and the repeat."""
    return [*point_names(), "sweep_value", "repeat"]


def series_columns() -> list[str]:
    """What makes runs of two directories the same measurement (compare, history): every dimension
    and what was trained on, the repeat left out."""
    return [*point_names(), "dataset", "preset", "sweep_field", "sweep_value"]


def accuracy_key_columns() -> list[str]:
    """What an accuracy threshold is kept per: what was trained, and the dimensions that shape accuracy."""
    return ["preset", "dataset", "epochs", "sweep_field"] + [d.name for d in DIMENSIONS if d.shapes_accuracy]


def row_key_columns() -> list[str]:
    """The columns every runs.csv and epochs.csv row starts with."""
    return ["run_id", *point_names(), "dataset", "preset", "sweep_field", "sweep_value", "repeat", "attempt"]


def step_key_columns() -> list[str]:
    """steps.csv's shorter key: a step row is joined to its job's other rows through these."""
    return ["run_id", *point_names(), "sweep_value", "repeat", "attempt"]


RUN_FIELDS = [  # runs.csv after the key: one row per job and attempt
    "node",
    "host",
    "status",
    "error",
    "epochs_done",
    "setup_s",
    "first_epoch_s",
    "median_epoch_s",
    "total_train_s",
    "samples_per_epoch",
    "batch_size",
    "samples_per_s",
    "final_test_acc",
    "final_test_loss",
    "target_acc",
    "time_to_target_s",
    "steps_to_target",
    "epochs_to_target",
    "gemm_library",
    "compute_dtype",
    "implementation",
    "peak_rss_mb",
    "peak_gpu_mb",
    "framework_version",
    "threads",
    "loadavg_1m",
    "other_cpu_frac",
    "calib_before_s",
    "calib_after_s",
    "steal_frac",
    "started_at",
    "ended_at",
]
EPOCH_FIELDS = ["epoch", "epoch_s", "train_loss", "test_loss", "test_acc", "eval_s"]
STEP_FIELDS = ["epoch", "step", "loss"]
EVAL_FIELDS = ["epoch", "step", "train_s", "test_loss", "test_acc", "eval_s"]
GEMM_COLUMNS = [
    "node",
    "library",
    "device",
    "precision",
    "threads",
    "sweep_value",
    "probe",
    "kind",
    "layer",
    "m",
    "k",
    "n",
    "seconds",
    "gflops",
]
TABLE_NAMES = ("runs", "epochs", "steps", "evals", "gemm")
OTHER_TEXT_COLUMNS = {
    "sweep_field",
    "error",
    "node",
    "host",
    "framework_version",
    "gemm_library",
    "compute_dtype",
    "implementation",
    "status",
}


def columns(table: str) -> list[str]:
    """The header of `table`.csv."""
    return {
        "runs": lambda: row_key_columns() + RUN_FIELDS,
        "epochs": lambda: row_key_columns() + EPOCH_FIELDS,
        "steps": lambda: step_key_columns() + STEP_FIELDS,
        "evals": lambda: row_key_columns() + EVAL_FIELDS,
        "gemm": lambda: list(GEMM_COLUMNS),
    }[table]()


def text_columns() -> set[str]:
    """Columns read back as text whatever they hold (a sweep value "064" stays "064")."""
    return set(dimension_names()) | OTHER_TEXT_COLUMNS


@dataclass(frozen=True)
class Job:
    """One (point of the matrix, repeat, attempt): what a worker needs to run it and what its rows say."""

    run_id: str  # results directory name
    dataset: str  # dataset name
    data_dir: str | None  # --data-dir, if given
    preset: str  # preset the configuration started from
    config: dict  # {"model": ..., "train": ...} as dataclasses.asdict gives them, the sweep value applied
    threads: int  # CPU threads for every library in the process
    target_acc: float  # test accuracy for the time-to-target columns
    point: dict[str, str] = field(default_factory=dict)  # {dimension name: this job's value}, every dimension present
    sweep_field: str = ""  # the field a sweep varies ("" without a sweep)
    repeat: int = 0  # 0-based repeat number
    attempt: int = 1  # 1 for the first try of this job in this directory, then 2, 3, ... (retries, resumes)
    env_requirements: list[str] = field(default_factory=list)  # the overrides of its environment (none: the current interpreter)

    def __getattr__(self, name: str) -> str:
        """A dimension's value reads as an attribute (`job.backend`), like the fixed fields."""
        if name != "point" and name in dimension_names():
            return self.point.get(name, next(d.default for d in DIMENSIONS if d.name == name))
        raise AttributeError(name)

    def key(self) -> tuple:
        """Unique within a results directory: what a retry or a resume repeats (with the next `attempt`)."""
        return tuple(getattr(self, name) for name in key_columns())

    def row_keys(self) -> dict:
        """The identifying columns every runs.csv and epochs.csv row of this job starts with."""
        return {name: getattr(self, name) for name in row_key_columns()}

    def step_keys(self) -> dict:
        return {name: getattr(self, name) for name in step_key_columns()}

    @property
    def label(self) -> str:
        """E.g. "torch/default on cpu, batch_size=64, repeat 2": every dimension whose value is not its default."""
        extra = [
            f"{d.name}={getattr(self, d.name)}" for d in DIMENSIONS if d.name not in LABEL_NAMED and getattr(self, d.name) != d.default
        ]
        sweep = [f"{self.sweep_field}={self.sweep_value}"] if self.sweep_field else []
        return (
            f"{self.backend}/{self.variant} on {self.device}"
            + "".join(f", {part}" for part in extra + sweep)
            + f", repeat {self.repeat + 1}"
        )

    @property
    def seed_number(self) -> int:
        """The seed as the harness takes it (the `seed` dimension holds it as text, like every dimension)."""
        return int(self.seed)

    def to_wire(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_wire(cls, data: dict) -> Job:
        return cls(**data)


# Events: what a worker says about its job, in this order: start, setup, per epoch its evaluations and
# the epoch, end.
# `Submitted` is the executor's (the job is in flight from then on). Every event crosses a process
# boundary as a dict (`to_wire`) and is checked against its dataclass when read (`from_wire`).


@dataclass(frozen=True)
class Submitted:
    """The executor took the job: from now on it is in flight."""


@dataclass(frozen=True)
class Start:
    node: str = ""  # the node that runs it (the executor fills it in)


@dataclass(frozen=True)
class Setup:
    setup_s: float  # building the model and preparing the data, untimed by the epochs
    framework_version: str  # the framework's version string
    samples_per_epoch: int  # training samples one epoch visits


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
    log: str = ""  # the tail of the worker's log
    loadavg_1m: float | None = None  # load average when the job started
    other_cpu_frac: float | None = None  # share of the CPUs other processes used while it ran
    calib_before_s: float | None = None  # the machine's calibration just before the job (framebench.driver.calibration)
    calib_after_s: float | None = None  # and just after it
    steal_frac: float | None = None  # share of the host's CPU time the hypervisor stole while it ran
    host: str = ""  # hostname of the machine that ran it
    node: str = ""  # node name (host, plus the Ray node id where nodes share a host)
    started_at: float | None = None  # wall clock at the start
    ended_at: float | None = None  # wall clock at the end
    retried: bool = False  # a lost attempt whose retry follows: superseded, not a result


EVENTS = {"submitted": Submitted, "start": Start, "setup": Setup, "evaluation": Evaluation, "epoch": Epoch, "end": End}
NUMBERS = (int, float)


def to_wire(event) -> dict:
    kind = next(name for name, cls in EVENTS.items() if isinstance(event, cls))
    return {"type": kind, **dataclasses.asdict(event)}


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
