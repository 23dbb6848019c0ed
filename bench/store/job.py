"""The job: what one job is (`Job`), the dimensions of the matrix it is a point of, the keys that name
it and the statuses it ends with. The driver, the node, the executors, the worker, the tables and the
reports all read these definitions; none re-derives a key.

A matrix dimension (seed, backend, variant, device, sweep value, ...) is one `Dimension` in DIMENSIONS:
the plan iterates it, every row carries it as a column, resume and compare key on it. Everything here
(and in the tables' schema built on it) reads DIMENSIONS when called, never at import, so the list is
the single place a dimension lives.

The rest of the job contract stands beside it, built on this module: the tables' columns and what
each cell may hold (framebench.store.schema), the events a worker sends about a job on the
wire (framebench.store.events) and the rules of sense they are held to (framebench.store.sense).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

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
