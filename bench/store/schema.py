"""The tables' schema: the columns of each table of a results directory (runs, epochs, steps, evals,
gemm) and what each of their cells may hold (`Cell`, CELLS). The writers (framebench.store.files) and
the one reader (framebench.store.reader) follow the same definitions, so a row is written and read
against the same rules. A row's key columns are the job's (framebench.store.job), read when called.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from framebench.store.job import STATUSES, dimension_names, row_key_columns, step_key_columns

FORMAT_VERSION = 4  # of a results directory's tables and config.json; bumped when either changes shape

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
