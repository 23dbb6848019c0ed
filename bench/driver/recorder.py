"""From events to rows: what the driver hears of each job (start, setup, epochs, end) becomes its
epochs.csv and steps.csv rows the moment an epoch arrives, and its one runs.csv row and log when it
ends. A run stopped by a signal (STOP_SIGNALS: SIGINT, SIGTERM, a closed terminal's SIGHUP, ...) is
held back while a job's rows are being written, so every job keeps exactly one whole row."""

from __future__ import annotations

import dataclasses
import math
import re
import signal
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path

from framebench.core import registry
from framebench.driver.executors import Executor
from framebench.reports.summary import BUSY_FRACTION, calibration_drifted
from framebench.store.events import End, Epoch, Evaluation, Setup, Start
from framebench.store.files import (
    append_rows,
    replace_file,
    write_failure,
)
from framebench.store.job import Job
from framebench.store.schema import EPOCH_FIELDS

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2)


@dataclass
class JobState:
    """What the driver has heard of one job so far."""

    job: Job
    node: str = ""  # where it runs, once it has started
    setup: Setup | None = None  # its setup event, once it came
    epochs: list[Epoch] = field(default_factory=list)  # its epoch events so far
    evaluations: list[Evaluation] = field(default_factory=list)  # its evaluation events so far


def reached_target(evaluations: list[Evaluation], target: float) -> Evaluation | None:
    """The first evaluation whose test accuracy reaches `target` (None: the run did not converge, or has none)."""
    return next((e for e in evaluations if e.test_acc >= target), None)


def summarize(state: JobState, end: End) -> dict:
    """The runs.csv row: what the epochs measured, whatever the outcome."""
    job, epochs, setup = state.job, state.epochs, state.setup
    times = [e.epoch_s for e in epochs]
    steady = times[1:] or times
    median = statistics.median(steady) if steady else None
    samples = setup.samples_per_epoch if setup else None
    entry = registry.lookup(job.backend, job.variant)
    reached = reached_target(state.evaluations, job.target_acc)
    steps_per_epoch = math.ceil(samples / job.config["train"]["batch_size"]) if samples else None
    return {
        **job.row_keys(),
        "node": end.node or state.node,
        "host": end.host,
        "status": end.status,
        "error": end.error,
        "epochs_done": len(epochs),
        "setup_s": setup.setup_s if setup else None,
        "first_epoch_s": times[0] if times else None,
        "median_epoch_s": median,
        "total_train_s": sum(times) if times else None,
        "samples_per_epoch": samples,
        "batch_size": job.config["train"]["batch_size"],
        "samples_per_s": samples / median if samples and median else None,
        "final_test_acc": epochs[-1].test_acc if epochs else None,
        "final_test_loss": epochs[-1].test_loss if epochs else None,
        "target_acc": job.target_acc,
        "time_to_target_s": reached.train_s if reached else None,
        "steps_to_target": reached.step if reached else None,
        "epochs_to_target": reached.step / steps_per_epoch if reached and steps_per_epoch else None,
        "gemm_library": entry.gemm_library,
        "compute_dtype": end.compute_dtype,
        "implementation": setup.implementation if setup and setup.implementation else entry.implementation(),
        "peak_rss_mb": end.peak_rss_mb or (epochs[-1].peak_rss_mb if epochs else None),
        "peak_gpu_mb": end.peak_gpu_mb,
        "framework_version": setup.framework_version if setup else "",
        "threads": job.threads,
        "loadavg_1m": end.loadavg_1m,
        "other_cpu_frac": end.other_cpu_frac,
        "calib_before_s": end.calib_before_s,
        "calib_after_s": end.calib_after_s,
        "steal_frac": end.steal_frac,
        "started_at": end.started_at,
        "ended_at": end.ended_at,
        "lockstep": end.lockstep,
    }


def log_name(job: Job) -> str:
    """The job's log file: its dimensions' values, each reduced to characters safe in a file name."""
    parts = [f"{job.sweep_field}={value}" if name == "sweep_value" else value for name, value in job.point.items() if value]
    return re.sub(r"[^A-Za-z0-9.,=_-]", "_", "-".join(parts)) + f"-r{job.repeat}-a{job.attempt}.log"


def record_evaluation(directory: Path, job: Job, event: Evaluation) -> None:
    append_rows(directory, "evals", [{**job.row_keys(), **dataclasses.asdict(event)}])


def record_epoch(directory: Path, job: Job, event: Epoch) -> None:
    append_rows(directory, "epochs", [{**job.row_keys(), **{name: getattr(event, name) for name in EPOCH_FIELDS}}])
    append_rows(
        directory,
        "steps",
        [{**job.step_keys(), "epoch": event.epoch, "step": step, "loss": loss} for step, loss in enumerate(event.step_losses, start=1)],
    )


def finish_job(directory: Path, state: JobState, end: End) -> dict:
    """Write the job's log and its runs.csv row; say how it ended."""
    log_path = directory / "logs" / log_name(state.job)
    if end.log:
        try:
            log_path.parent.mkdir(exist_ok=True)
            replace_file(log_path, end.log.encode("utf-8", errors="replace"))
        except OSError as exc:
            raise write_failure(log_path, exc, directory) from None
    if end.status in ("failed", "timeout", "lost") and end.log:
        end = dataclasses.replace(end, error=f"{end.error}; see {log_path}")
    row = summarize(state, end)
    append_rows(directory, "runs", [row])
    busy = row["other_cpu_frac"] is not None and row["other_cpu_frac"] > BUSY_FRACTION
    drifted = calibration_drifted(row["calib_before_s"], row["calib_after_s"])
    print(
        f"{state.job.label}: {row['status']}"
        + (f" ({row['error']})" if row["error"] else "")
        + (f"; warning: machine busy, other processes used {row['other_cpu_frac']:.0%} of the CPUs" if busy else "")
        + ("; warning: the machine changed speed during it (calibrations before and after disagree)" if drifted else ""),
        file=sys.stderr,
        flush=True,
    )
    return row


class Stopped(Exception):
    """One of STOP_SIGNALS reached the driver."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class Interrupts:
    """STOP_SIGNALS as `Stopped`, held back while a job's rows are written (`with interrupts:`),
    so a stopped run still gives every job exactly one runs.csv row and every epoch its steps."""

    def __init__(self) -> None:
        self.writing = False
        self.pending: int | None = None  # a signal that arrived while writing

    def handle(self, signum: int, _frame) -> None:
        for name in STOP_SIGNALS:  # finishing up must not be interrupted again
            signal.signal(name, signal.SIG_IGN)
        if self.writing:
            self.pending = signum
        else:
            raise Stopped(signum)

    def __enter__(self) -> None:
        self.writing = True

    def __exit__(self, kind, *_) -> None:
        self.writing = False
        if self.pending and kind is None:
            raise Stopped(self.pending)


def run_jobs(
    directory: Path, jobs: list[Job], executor: Executor, timeout_s: float, states: dict, interrupts: Interrupts, broken: dict[str, str]
) -> list[dict]:
    """Run the jobs, writing rows as events arrive; `states` holds the jobs in flight whose row is not written yet
    (for an interrupt); the jobs of an environment in `broken` ({name: why}) are declined."""
    rows, runnable = [], []
    for job in jobs:
        entry = registry.lookup(job.backend, job.variant)
        if job.env in broken:
            rows.append(finish_job(directory, JobState(job), End("unavailable", broken[job.env])))
        elif entry.error:  # a plugin that cannot be imported or declares nonsense: no process could run it
            rows.append(finish_job(directory, JobState(job), End("unavailable", entry.error)))
        elif job.device in entry.devices:
            runnable.append(job)
        else:  # declined without starting a process
            rows.append(finish_job(directory, JobState(job), End("unavailable", f"{entry.name} runs on {', '.join(entry.devices)} only")))
    numbers = {job.key(): f"[{number}/{len(jobs)}]" for number, job in enumerate(jobs, start=1)}
    for job, event in executor.run(runnable, timeout_s):
        label = f"{numbers[job.key()]} {job.label}" + (f", attempt {job.attempt}" if job.attempt > 1 else "")
        state = states.setdefault((job.key(), job.attempt), JobState(job))
        if isinstance(event, Start):
            state.node = event.node
            print(f"{label}: started on {event.node or 'this machine'}", file=sys.stderr, flush=True)
        elif isinstance(event, Setup):
            state.setup = event
        elif isinstance(event, Evaluation):
            with interrupts:
                state.evaluations.append(event)
                record_evaluation(directory, job, event)
        elif isinstance(event, Epoch):
            with interrupts:
                state.epochs.append(event)
                record_epoch(directory, job, event)
            print(
                f"{label}: epoch {event.epoch}: {event.epoch_s:.3f} s, train loss {event.train_loss:.4f}, test acc {event.test_acc:.4f}",
                file=sys.stderr,
                flush=True,
            )
        elif isinstance(event, End):
            with interrupts:
                row = finish_job(directory, state, event)
                del states[(job.key(), job.attempt)]
            if not event.retried:  # a lost attempt that was retried is superseded by its retry
                rows.append(row)
    return rows
