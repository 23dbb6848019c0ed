"""The job contract: what one job is, the key that names it, the events a worker sends about it and
the columns every table row of it carries. The driver, the node, the executors, the worker, the
tables and the reports all read these definitions; none re-derives a key or a column list.

A matrix dimension (seed, backend, variant, device, sweep value, ...) is one `Dimension` in DIMENSIONS:
the plan iterates it, every row carries it as a column, resume and compare key on it. Everything here
reads DIMENSIONS when called, never at import, so the list is the single place a dimension lives.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

from framebench.core.config import PRECISIONS, precision_mismatch
from framebench.errors import FrameBenchError

FORMAT_VERSION = 4  # of a results directory's tables and config.json; bumped when either changes shape
PROTOCOL_VERSION = 1  # of the worker's wire: the Job it reads (its config too), the events it sends, its control pipe; bumped with any
OK = "ok"
PAIRED = "paired"  # the `lockstep` of a job that ran in lockstep with its partner until its own end
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
    "lockstep",
]
EPOCH_FIELDS = ["epoch", "epoch_s", "train_loss", "test_loss", "test_acc", "eval_s", "slot"]
ADDED_COLUMNS = {"runs": ["lockstep"], "epochs": ["slot"]}  # columns after FORMAT_VERSION 3's: an older table reads with them empty
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


@dataclass(frozen=True)
class Cell:
    """What one column of the tables may hold. A reader leaves out (or a gate refuses) a row whose cell
    breaks it: text in a number column, a time that is infinite, negative or zero, an accuracy of 2.5.
    Every number must also be finite; an empty cell (or NaN, however written) is "not measured"."""

    kind: str  # "text", "int" or "float"
    low: float = -math.inf  # the smallest value a number may take
    high: float = math.inf  # the largest
    required: bool = False  # the cell may not be empty (a key, a status)
    choices: tuple[str, ...] = ()  # the only values a text cell may take (none: any text)

    @property
    def rule(self) -> str:
        """The rule in words, as a refusal names it: "an integer >= 1", "a number in [0, 1]"."""
        if self.kind == "text":
            return f"one of {', '.join(self.choices)}" if self.choices else "text"
        kind = {"int": "an integer", "float": "a finite number"}[self.kind]
        low, high = (f"{v:.0f}" if math.isfinite(v) and v == int(v) else f"{v:g}" for v in (self.low, self.high))
        bounds = {
            (True, True): f" in [{low}, {high}]",
            (True, False): f" >= {low}",
            (False, True): f" <= {high}",
            (False, False): "",
        }
        return kind + bounds[(math.isfinite(self.low), math.isfinite(self.high))] + ("" if self.required else " (or empty)")


LONGEST_S = 366 * 86_400.0  # no job or probe of a benchmark lasts a year: a longer duration is damage
SHORTEST_S = 1e-9  # the clock's resolution: a timed interval shorter than a nanosecond was not timed
LARGEST = float(2**53)  # the largest count or amount a float holds exactly: a larger one is damage
LATEST_TIME = 9_200_000_000.0  # Unix seconds (the year 2261): pandas represents no later time

TEXT = Cell("text")
REPEAT = Cell("int", 0, LARGEST, required=True)  # 0-based
ORDINAL = Cell("int", 1, LARGEST, required=True)  # 1-based: an attempt, an epoch, a step
COUNT = Cell("int", 0, LARGEST)  # how many (epochs done, a seed)
SIZE = Cell("int", 1, LARGEST)  # a batch, a dimension, a thread count
TIMED = Cell("float", SHORTEST_S, LONGEST_S)  # a timed interval: an epoch, a calibration, a GEMM
DURATION = Cell("float", 0, LONGEST_S)  # seconds that may round to 0 (setup, evaluation, time to target)
AMOUNT = Cell("float", 0, LARGEST)  # a rate, a memory size, a load, a share of all CPUs (may exceed 1 by a tick)
SHARE = Cell("float", 0, 1)  # a probability or a fraction: an accuracy, the stolen share of the CPU time
LOSS = Cell("float")  # any finite number (a loss of a diverged step is never recorded)
MOMENT = Cell("float", 0, LATEST_TIME)  # a Unix time
STATUS = Cell("text", required=True, choices=STATUSES)

CELLS = {  # every column of every table but the dimensions (which are text): what it holds
    **dict.fromkeys(
        ["run_id", "dataset", "preset", "sweep_field", "node", "host", "error", "gemm_library", "compute_dtype", "implementation"], TEXT
    ),
    **dict.fromkeys(["framework_version", "library", "probe", "kind"], TEXT),
    "repeat": REPEAT,
    "attempt": ORDINAL,
    "status": STATUS,
    "epochs_done": COUNT,
    "setup_s": DURATION,
    "first_epoch_s": TIMED,
    "median_epoch_s": TIMED,
    "total_train_s": TIMED,
    "samples_per_epoch": SIZE,
    "batch_size": SIZE,
    "samples_per_s": AMOUNT,
    "final_test_acc": SHARE,
    "final_test_loss": LOSS,
    "target_acc": SHARE,
    "time_to_target_s": DURATION,
    "peak_rss_mb": AMOUNT,
    "peak_gpu_mb": AMOUNT,
    "threads": SIZE,
    "loadavg_1m": AMOUNT,
    "other_cpu_frac": AMOUNT,
    "calib_before_s": TIMED,
    "calib_after_s": TIMED,
    "steal_frac": SHARE,
    "started_at": MOMENT,
    "ended_at": MOMENT,
    "epoch": ORDINAL,
    "epoch_s": dataclasses.replace(TIMED, required=True),
    "train_loss": LOSS,
    "test_loss": LOSS,
    "test_acc": SHARE,
    "eval_s": DURATION,
    "step": ORDINAL,
    "loss": LOSS,
    "layer": SIZE,
    "m": SIZE,
    "k": SIZE,
    "n": SIZE,
    "seconds": dataclasses.replace(TIMED, required=True),
    "gflops": AMOUNT,
    "lockstep": TEXT,  # how a job ran beside its lockstep partner
    "slot": Cell("int", 0, LARGEST),  # an epoch's place in its lockstep pair's sequence (empty alone)
    "steps_to_target": SIZE,  # training steps until the test accuracy first reached the target (empty: not reached)
    "epochs_to_target": Cell("float", 0, LARGEST),  # the same in epochs
    "train_s": DURATION,  # training seconds so far, evaluation excluded (evals.csv)
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


def cell(column: str) -> Cell:
    """What `column` (of any table) holds: text for a dimension, else its entry in CELLS."""
    return TEXT if column in dimension_names() else CELLS[column]


def text_columns() -> set[str]:
    """Columns read back as text whatever they hold (a sweep value "064" stays "064")."""
    return set(dimension_names()) | {name for name, spec in CELLS.items() if spec.kind == "text"}


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
        """E.g. "torch/default on cpu, batch_size=64, repeat 2": every dimension whose value is not its default
        (a swept one once, as the sweep's value)."""
        extra = [
            f"{d.name}={getattr(self, d.name)}"
            for d in DIMENSIONS
            if d.name not in (*LABEL_NAMED, self.sweep_field) and getattr(self, d.name) != d.default
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
# boundary as a dict (`to_wire`), is checked against its dataclass when read (`from_wire`) and, coming
# from a worker, against the rules of sense at the end of this module (`Sense`).


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


# The sense of a worker's events: what no true job can say, each rule named by the failure it causes.
# A worker's message is untrusted (a backend runs in its process and can reach its channel), so the
# node holds every decoded event to these rules (Sense) before the driver records it; the first
# broken rule fails the job, naming it. Fields with DRIVER metadata are the node's and the executor's.
RULE_ORDER = "a worker says start, then setup once, then its epochs (each after its evaluations), then end, and nothing after end"
RULE_EVALUATIONS = "an evaluation falls in the epoch under way, after the steps and training seconds of the one before"
RULE_EPOCHS = "epochs are numbered 1, 2, ... each once, up to the planned count"
RULE_STEPS = "an epoch carries one loss per step (samples_per_epoch / batch_size) and train_loss is their mean"
RULE_TIMES = "times and memory are finite numbers >= 0"
RULE_ACCURACY = "accuracies are in [0, 1]"
RULE_LOSSES = "losses are finite (a non-finite loss ends the job diverged before its epoch is sent)"
RULE_SAMPLES = "samples_per_epoch is at least 1 and at most what the job's configuration draws"
RULE_COMPLETE = "`ok` comes only after every planned epoch"
RULE_NOT_RUN = "`unavailable` and `unsupported` come only before setup (the job never trained)"
RULE_STATUSES = "a worker ends ok, failed, diverged, unavailable or unsupported (timeout, interrupted and lost are the driver's)"
RULE_DRIVER_FIELDS = "a worker never sets what the driver fills in (node, host, log, load, calibration, start and end times, retried)"
RULE_DTYPE = (
    "compute_dtype is a dtype framebench names, stated only after setup (the worker inspects it after the first epoch), "
    "and an ok job's is its precision's"
)
WORKER_STATUSES = (OK, "failed", "diverged", *NOT_RUN)
DTYPES = ("", *PRECISIONS.values(), "float64")  # what compute_dtype may say ("": no epoch was trained; float64: a wider backend)
MEAN_TOLERANCE = 1e-6  # relative: train_loss against the mean of the step losses it summarises
LARGEST_TRAINING_SET = 60_000  # samples in the largest training split framebench loads (MNIST, Fashion-MNIST)


class SenseViolation(MalformedEvent):
    """An event that cannot be true of its job: the job fails with the rule it broke."""


def finite(value) -> bool:
    """Whether a decoded JSON number is finite (an integer too large for a float is not)."""
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def most_samples_per_epoch(train: dict) -> int:
    """The most training samples one epoch of a job with this TrainConfig (as a dict) visits."""
    if train["sampling"] == "with_replacement":
        return train["steps_per_epoch"] * train["batch_size"]
    return LARGEST_TRAINING_SET


class Sense:
    """What a job's worker has said so far, each new event held to the rules above: `check` raises
    SenseViolation naming the first one it breaks. One per worker; events in the order they came."""

    def __init__(self, job: Job) -> None:
        self.job = job
        self.train = job.config["train"]
        self.started = False  # start came
        self.setup: Setup | None = None  # setup, once it came
        self.epochs = 0  # the number of the last epoch
        self.evaluated: Evaluation | None = None  # the last evaluation, once one came
        self.ended = False  # end came

    def check(self, event) -> None:
        handlers = {Start: self.start, Setup: self.prepared, Evaluation: self.evaluation, Epoch: self.epoch, End: self.end}
        if type(event) not in handlers:
            raise SenseViolation(f"{RULE_ORDER}: {kind(event)}, which only the executor says")
        if self.ended:
            raise SenseViolation(f"{RULE_ORDER}: {kind(event)} after end")
        if not isinstance(event, Start) and not self.started:
            raise SenseViolation(f"{RULE_ORDER}: {kind(event)} before start")
        for spec in dataclasses.fields(event):
            if spec.metadata.get("owner") == "driver" and getattr(event, spec.name) != spec.default:
                raise SenseViolation(f"{RULE_DRIVER_FIELDS}: {kind(event)} sets {spec.name}")
        handlers[type(event)](event)

    def start(self, _: Start) -> None:
        if self.started:
            raise SenseViolation(f"{RULE_ORDER}: start twice")
        self.started = True

    def prepared(self, setup: Setup) -> None:
        if self.setup is not None:
            raise SenseViolation(f"{RULE_ORDER}: setup twice")
        times(setup.setup_s)
        if not 1 <= setup.samples_per_epoch <= most_samples_per_epoch(self.train):
            raise SenseViolation(f"{RULE_SAMPLES}: samples_per_epoch {str(setup.samples_per_epoch)[:30]}")
        self.setup = setup

    def evaluation(self, evaluation: Evaluation) -> None:
        if self.setup is None:
            raise SenseViolation(f"{RULE_ORDER}: an evaluation before setup")
        before = self.evaluated or Evaluation(1, 0, 0.0, 0.0, 0.0, 0.0)
        steps = math.ceil(self.setup.samples_per_epoch / self.train["batch_size"])
        if evaluation.epoch != self.epochs + 1 or not before.step < evaluation.step <= steps * evaluation.epoch:
            raise SenseViolation(f"{RULE_EVALUATIONS}: epoch {str(evaluation.epoch)[:30]}, step {str(evaluation.step)[:30]}")
        times(evaluation.train_s, evaluation.eval_s)
        if evaluation.train_s < before.train_s:
            raise SenseViolation(f"{RULE_EVALUATIONS}: train_s {evaluation.train_s:g} after {before.train_s:g}")
        if not 0 <= evaluation.test_acc <= 1:
            raise SenseViolation(f"{RULE_ACCURACY}: test_acc {str(evaluation.test_acc)[:30]}")
        if not finite(evaluation.test_loss):
            raise SenseViolation(f"{RULE_LOSSES}: evaluation at step {evaluation.step}")
        self.evaluated = evaluation

    def epoch(self, epoch: Epoch) -> None:
        if self.setup is None:
            raise SenseViolation(f"{RULE_ORDER}: an epoch before setup")
        if epoch.epoch != self.epochs + 1 or epoch.epoch > self.train["epochs"]:
            after = f"after epoch {self.epochs}" if self.epochs else "first"
            raise SenseViolation(f"{RULE_EPOCHS}: epoch {str(epoch.epoch)[:30]} {after}, of {self.train['epochs']} planned")
        times(epoch.epoch_s, epoch.eval_s, epoch.peak_rss_mb)
        if not 0 <= epoch.test_acc <= 1:
            raise SenseViolation(f"{RULE_ACCURACY}: test_acc {str(epoch.test_acc)[:30]}")
        if not all(finite(loss) for loss in (*epoch.step_losses, epoch.train_loss, epoch.test_loss)):
            raise SenseViolation(f"{RULE_LOSSES}: epoch {epoch.epoch}")
        steps = math.ceil(self.setup.samples_per_epoch / self.train["batch_size"])
        mean = math.fsum(epoch.step_losses) / len(epoch.step_losses) if epoch.step_losses else math.nan
        if len(epoch.step_losses) != steps or not math.isclose(epoch.train_loss, mean, rel_tol=MEAN_TOLERANCE, abs_tol=MEAN_TOLERANCE):
            raise SenseViolation(f"{RULE_STEPS}: epoch {epoch.epoch} has {len(epoch.step_losses)} step losses for {steps} steps")
        self.epochs = epoch.epoch

    def end(self, end: End) -> None:
        self.ended = True
        if end.status not in WORKER_STATUSES:
            raise SenseViolation(f"{RULE_STATUSES}: end {end.status}")
        times(*(value for value in (end.peak_rss_mb, end.peak_gpu_mb, end.cpu_s) if value is not None))
        if end.status in NOT_RUN and self.setup is not None:
            raise SenseViolation(f"{RULE_NOT_RUN}: end {end.status} after setup")
        if end.status == OK and self.epochs != self.train["epochs"]:
            raise SenseViolation(f"{RULE_COMPLETE}: end ok after {self.epochs} of {self.train['epochs']} epochs")
        known = end.compute_dtype in DTYPES and (end.compute_dtype == "" or self.setup is not None)
        if not known or (end.status == OK and precision_mismatch(self.job.precision, end.compute_dtype)):
            raise SenseViolation(f"{RULE_DTYPE}: end {end.status} with compute_dtype {end.compute_dtype[:30]!r}")


def times(*values) -> None:
    """SenseViolation unless every value is a finite number >= 0."""
    for value in values:
        if not (finite(value) and value >= 0):
            raise SenseViolation(f"{RULE_TIMES}: {str(value)[:30]}")
