"""Synthetic results: rows of every table and whole results directories, for the tests that read them
(reports, gates, history, readers). Nothing here trains: a row is the job contract's columns
(framebench.store.job.columns), each filled as the recorder fills it for a job that ran ok, any of them
overridden by name (a name the contract does not have is refused, so a typo never passes silently).

The job they describe by default: numpy/default on cpu, fp32, seed 0, in run "r" of the mlp preset on
digits (64 inputs, 32 hidden, 10 classes), three epochs of 1600 samples in batches of 16 (100 steps), on
node "box"; its first epoch takes twice the steady one, and it reaches the 0.9 target in the first."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

from framebench.core.flops import step_gemms
from framebench.driver.executors import LocalExecutor
from framebench.driver.plan import matrix_of, new_config
from framebench.driver.request import RunRequest
from framebench.store import job as contract
from framebench.store import schema
from framebench.store.files import append_rows, write_json

SIZES, BATCH, SAMPLES, EPOCHS = (64, 32, 10), 16, 1600, 3  # the default job's network, batch, epoch and training length
STEPS = SAMPLES // BATCH  # its steps per epoch
STARTED = 1.8e9  # Unix time of a directory's first job
NODE = {"machine": "box", "cpu": "Some CPU", "cores": 2, "kernel_settings": {}, "gpus": [], "threads": 2}
MACHINE = {  # machine.json of a run on one node, "box"
    **NODE,
    "nodes": {"box": NODE},
    "command": "framebench run ...",
    "git_commit": "abc",
    "started_utc": "2027-01-15T08:00:00+00:00",
}
BACKENDS = {"numpy": 1.0, "jax": 0.5}  # finished_run's backends: their steady epoch seconds


def empty(column: str):
    """An empty cell ("not measured") as a reader gives it back: "" for text, NaN for a number."""
    return "" if schema.cell(column).kind == "text" else math.nan


def key(**fields) -> dict:
    """The key every runs, epochs and evals row starts with (store.job.row_key_columns): the default job's, `fields` replacing any."""
    defaults = {d.name: d.default for d in contract.DIMENSIONS} | {"backend": "numpy", "run_id": "r", "dataset": "digits"}
    return checked("a job's key", contract.row_key_columns(), defaults | {"preset": "mlp", "repeat": 0, "attempt": 1}, fields)


def checked(what: str, names: list[str], defaults: dict, fields: dict) -> dict:
    """`defaults` (every one of `names`, any missing empty) with `fields` replacing them; a field not among `names` is refused."""
    unknown = sorted(set(fields) - set(names))
    if unknown:
        raise TypeError(f"{what} has no column {', '.join(unknown)}")
    return {name: fields.get(name, defaults.get(name, empty(name))) for name in names}


def job_rows(table: str, measured: list[dict], fields: dict) -> list[dict]:
    """Rows of `table` for one job, each its key and one of `measured`, `fields` replacing any column of each."""
    job = key(**{name: value for name, value in fields.items() if name in contract.row_key_columns()})
    return [checked(f"{table}.csv", schema.columns(table), job | row, fields) for row in measured]


def run_row(*, epoch_s: float = 1.0, **fields) -> dict:
    """A runs.csv row of a job that ran ok with steady epochs of `epoch_s` seconds (its first twice as
    long; its rate, total time and time to target follow), every column filled, `fields` replacing any."""
    backend, repeat = fields.get("backend", "numpy"), fields.get("repeat", 0)
    started = STARTED + 10 * repeat
    measured = {
        "node": "box",
        "host": "box",
        "status": contract.OK,
        "error": "",
        "epochs_done": EPOCHS,
        "setup_s": 0.2,
        "first_epoch_s": 2 * epoch_s,
        "median_epoch_s": epoch_s,
        "total_train_s": (EPOCHS + 1) * epoch_s,
        "samples_per_epoch": SAMPLES,
        "batch_size": BATCH,
        "samples_per_s": SAMPLES / epoch_s,
        "final_test_acc": 0.95,
        "final_test_loss": 0.2,
        "target_acc": 0.9,
        "time_to_target_s": 2 * epoch_s,
        "steps_to_target": STEPS,
        "epochs_to_target": 1.0,
        "gemm_library": backend,
        "compute_dtype": "float32",
        "implementation": f"{backend}-code",
        "peak_rss_mb": 300.0,
        "framework_version": "1.0",
        "threads": 2,
        "loadavg_1m": 0.5,
        "other_cpu_frac": 0.01,
        "calib_before_s": 0.1,
        "calib_after_s": 0.1,
        "steal_frac": 0.0,
        "started_at": started,
        "ended_at": started + 5,
    }
    return job_rows("runs", [measured], fields)[0]


def epoch_rows(*, epoch_s: float = 1.0, epochs: int = EPOCHS, **fields) -> list[dict]:
    """The epochs.csv rows of a job whose steady epochs take `epoch_s` (the first twice as long), `fields` replacing any column of each."""
    measured = [
        {"epoch": e, "epoch_s": epoch_s * (2 if e == 1 else 1), "train_loss": 1 / e, "test_loss": 1.1 / e, "test_acc": 0.9, "eval_s": 0.01}
        for e in range(1, epochs + 1)
    ]
    return job_rows("epochs", measured, fields)


def step_rows(*, epochs: int = EPOCHS, steps: int = 2, **fields) -> list[dict]:
    """steps.csv rows of a job: `steps` per epoch (the loss 1/step), `fields` replacing any column of each."""
    return job_rows("steps", [{"epoch": e, "step": s, "loss": 1 / s} for e in range(1, epochs + 1) for s in range(1, steps + 1)], fields)


def eval_rows(*, epoch_s: float = 1.0, epochs: int = EPOCHS, steps: int = 2, **fields) -> list[dict]:
    """evals.csv rows of a job evaluated at the end of each epoch of `steps` steps, `fields` replacing any column of each."""
    measured = [
        {"epoch": e, "step": steps * e, "train_s": e * epoch_s, "test_loss": 1.1 / e, "test_acc": 0.9, "eval_s": 0.01}
        for e in range(1, epochs + 1)
    ]
    return job_rows("evals", measured, fields)


def gemm_rows(library: str, step_s: float, probe: str = "start", **fields) -> list[dict]:
    """gemm.csv rows of one probe of `library`: the default job's step's products, adding up to `step_s`,
    `fields` replacing any column of each."""
    gemms = step_gemms(SIZES, BATCH)
    seconds = step_s / len(gemms)
    probed = {"node": "box", "library": library, "device": "cpu", "precision": "fp32", "threads": 2, "sweep_value": "", "probe": probe}
    products = [
        {"kind": g.kind, "layer": g.layer, "m": g.m, "k": g.k, "n": g.n, "seconds": seconds, "gflops": g.flops / seconds / 1e9}
        for g in gemms
    ]
    return [checked("gemm.csv", schema.columns("gemm"), probed | product, fields) for product in products]


def run_config(backends=tuple(BACKENDS), repeats=2, seeds=("0",), *, model=None, train=None, **request) -> dict:
    """config.json as `framebench run --backends B --repeats N --seeds S` writes it for the default job's
    network and training (`model`, `train` replacing the preset's fields instead; `request`, any RunRequest
    field), its matrix recorded as the run records it."""
    asked = {"backends": ",".join(backends), "seeds": ",".join(seeds), "repeats": repeats, "dataset": "digits", "preset": "mlp"}
    asked = RunRequest(**asked | {"device": "cpu", "floors": False, "threads": 2} | request)
    model = {"hidden": (SIZES[1],)} if model is None else model
    written = new_config(asked, model, {"epochs": EPOCHS, "batch_size": BATCH} if train is None else train)
    return json.loads(json.dumps({**written, "matrices": [dataclasses.asdict(matrix_of(asked, LocalExecutor()))]}))


def results_directory(
    path: Path, runs=(), *, epochs=(), steps=(), evals=(), gemm=(), config: dict | None = None, machine: dict | None = None
) -> Path:
    """A results directory at `path` (created) holding these rows, config.json (`config`, or the default
    run's: numpy and jax, two repeats) and machine.json (`machine`, or MACHINE); every table is written, empty where no rows are given."""
    path.mkdir(parents=True)
    write_json(path, "config.json", run_config() if config is None else config)
    write_json(path, "machine.json", MACHINE if machine is None else machine)
    for table, rows in {"runs": runs, "epochs": epochs, "steps": steps, "evals": evals, "gemm": gemm}.items():
        append_rows(path, table, list(rows))
    return path


def finished_run(path: Path, repeats: int = 2, started: float = STARTED, backends: dict = BACKENDS, config: dict | None = None) -> Path:
    """A whole finished run of `backends` ({backend: its steady epoch seconds}; numpy and jax), `repeats`
    each (repeat r 1% slower per r), its first job started at `started`, every table written as a run
    writes it, each library probed at start and end, under `config` (or run_config's for them); all its
    jobs are done, so resuming it has nothing to run."""
    runs, epochs, steps, evals = [], [], [], []
    for backend, seconds in backends.items():
        for repeat in range(repeats):
            job = {"backend": backend, "repeat": repeat}
            epoch_s = seconds * (1 + 0.01 * repeat)
            runs.append(run_row(epoch_s=epoch_s, **job, started_at=started + 10 * repeat, ended_at=started + 10 * repeat + 5))
            epochs += epoch_rows(epoch_s=epoch_s, **job)
            steps += step_rows(**job)
            evals += eval_rows(epoch_s=epoch_s, **job)
    gemm = [row for library in backends for probe in ("start", "end") for row in gemm_rows(library, 0.004, probe)]
    config = run_config(tuple(backends), repeats=repeats) if config is None else config
    return results_directory(path, runs, epochs=epochs, steps=steps, evals=evals, gemm=gemm, config=config)
