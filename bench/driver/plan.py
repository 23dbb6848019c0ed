"""The experiment a results directory holds and the jobs it takes: config.json (the configuration and
every matrix recorded into it), the jobs of those matrices in interleaved order, and what a resume
still has to run. A directory holds one experiment: extending it with another configuration, other
seeds or an environment of another meaning is refused. An attempt a driver killed outright (SIGKILL)
left without a runs.csv row is recorded `interrupted` (superseded) when the directory is resumed, and
the next attempt's number follows every attempt any table holds, so no two attempts share rows."""

from __future__ import annotations

import dataclasses
import importlib.metadata
import itertools
import json
from dataclasses import dataclass
from pathlib import Path

from framebench.core import registry
from framebench.core.config import PRESETS, ModelConfig, Sweep, TrainConfig, config_from_dict, resolve
from framebench.core.seeds import seed_values
from framebench.driver import envs
from framebench.driver.executors import Executor
from framebench.driver.recorder import JobState, summarize
from framebench.driver.request import RunRequest, check_threads, resolve_devices, split_names
from framebench.errors import FrameBenchError
from framebench.store import job as contract
from framebench.store.events import End, Epoch
from framebench.store.files import (
    append_rows,
)
from framebench.store.job import OK, Job, key_columns
from framebench.store.metadata import read_config, read_machine
from framebench.store.reader import read_table
from framebench.store.schema import EPOCH_FIELDS, FORMAT_VERSION

# A results directory holds one experiment: appending with any of these different is refused.
IDENTITY = ("preset", "dataset", "model", "train", "threads", "sweep", "target_acc", "floors")
SETTLED = (OK, "unsupported")  # a job whose latest attempt ended so is not run again: unsupported depends on the configuration alone


@dataclass(frozen=True)
class Matrix:
    axes: dict[str, list[str]]  # {dimension: its values} for every dimension a request lists (backends, variants, devices, ...)
    repeats: int  # rounds over all jobs, each rerunning every seed of the axes

    def points(self) -> list[dict[str, str]]:
        """Every combination of the axes' values, the dimensions nested in DIMENSIONS' order (the last
        one innermost, so its values alternate job by job); registered (backend, variant) pairs only."""
        names = [d.name for d in contract.DIMENSIONS if d.name in self.axes]
        combos = (dict(zip(names, values, strict=True)) for values in itertools.product(*(self.axes[n] for n in names)))
        return [point for point in combos if (point["backend"], point["variant"]) in registry.REGISTRY]


def plan(matrices: list[Matrix], template: Job, sweep: Sweep, model: ModelConfig, train: TrainConfig) -> list[Job]:
    """Every job of the matrices, each key (every dimension and the repeat) once, ordered repeat by
    repeat and, within a repeat, sweep value by value and point by point of the matrix."""
    jobs: dict[tuple, Job] = {}
    for matrix in matrices:
        for repeat in range(matrix.repeats):
            for value in sweep.values:
                value_model, value_train, threads = sweep.apply(model, train, template.threads, value)
                config = {"model": dataclasses.asdict(value_model), "train": dataclasses.asdict(value_train)}
                swept_dimension = {sweep.field: value} if sweep.field in contract.dimension_names() else {}
                for point in matrix.points():
                    job = dataclasses.replace(
                        template,
                        point={**point, "sweep_value": value, **swept_dimension},
                        repeat=repeat,
                        config=config,
                        threads=threads,
                        sweep_field=sweep.field,
                    )
                    jobs.setdefault(job.key(), job)
    return sorted(jobs.values(), key=lambda j: j.repeat)  # stable: the order above within a repeat


def recorded_jobs(run_id: str, config: dict) -> list[Job]:
    """Every job of the matrices a config.json records."""
    model, train = config_from_dict(config)
    template = Job(
        run_id=run_id,
        dataset=config["dataset"],
        data_dir=config.get("data_dir"),
        preset=config["preset"],
        config={},
        threads=config["threads"],
        target_acc=config["target_acc"],
    )
    matrices = [Matrix(**m) for m in config["matrices"]]
    jobs = plan(matrices, template, Sweep(config["sweep"]["field"], tuple(config["sweep"]["values"])), model, train)
    return [dataclasses.replace(job, env_requirements=config["envs"].get(job.env, [])) for job in jobs]


def unregistered(matrices: list[dict]) -> list[str]:
    """Recorded (backend, variant) pairs that are not registered (they would repeat `default`)."""
    axes = [m["axes"] for m in matrices]
    pairs = (f"{b}:{v}" for a in axes for b in a["backend"] for v in a["variant"] if (b, v) not in registry.REGISTRY)
    return list(dict.fromkeys(pairs))


def matrix_of(request: RunRequest, executor: Executor) -> Matrix:
    backends = split_names(request.backends, registry.backend_names(), "backend", "--backends")
    variants = split_names(request.variants, registry.variant_names(), "variant", "--variants")
    if not any((b, v) in registry.REGISTRY for b in backends for v in variants):
        raise FrameBenchError(
            f"no registered (backend, variant) pair in --backends {request.backends} --variants {request.variants}; "
            "`framebench list` shows them"
        )
    axes = {
        "backend": list(backends),
        "variant": list(variants),
        "device": list(resolve_devices(request.device, executor)),
        "env": list(envs.parse_specs(request.env)) or [envs.CURRENT],
        "seed": seed_values(request.seeds),
    }
    for dimension in contract.DIMENSIONS:
        if dimension.request_field and dimension.name not in axes:
            axes[dimension.name] = list(dict.fromkeys(v.strip() for v in str(getattr(request, dimension.request_field)).split(",")))
    return Matrix(axes, request.repeats)


def framebench_version() -> str:
    """The installed framebench's version, recorded in config.json beside the tables' FORMAT_VERSION."""
    return importlib.metadata.version("framebench")


def new_config(request: RunRequest, model_overrides: dict, train_overrides: dict) -> dict:
    """config.json of a new request: the resolved experiment, with no matrix recorded yet (run_in adds it)."""
    model, train = resolve(request.preset, model_overrides, train_overrides)
    sweep = Sweep.parse(request.sweep)
    points = [sweep.apply(model, train, request.threads, value) for value in sweep.values]  # each value valid before anything runs
    for _, _, threads in points:
        check_threads(threads, request.oversubscribe, "--sweep threads=")
    precisions = sweep.values if sweep.field == "precision" else [""] * len(points)  # a precision sweep leaves the configuration alone
    if len(set(zip(points, precisions, strict=True))) != len(points):
        raise FrameBenchError(f"--sweep {request.sweep} gives the same configuration twice (e.g. 64 and 064); name each value once")
    return {
        "format_version": FORMAT_VERSION,
        "framebench_version": framebench_version(),
        "preset": request.preset,
        "dataset": request.dataset or PRESETS[request.preset].dataset,
        "data_dir": request.data_dir,
        "model": dataclasses.asdict(model),
        "train": dataclasses.asdict(train),
        "threads": request.threads,
        "sweep": {"field": sweep.field, "values": list(sweep.values)},
        "target_acc": request.target_acc or PRESETS[request.preset].target_acc,
        "envs": envs.parse_specs(request.env),
        "floors": request.floors,
        "lockstep": request.lockstep,
        "matrices": [],
    }


def resumed_config(directory: Path, request: RunRequest) -> dict:
    """config.json of a directory to resume, checked against what this framebench can run."""
    if not (directory / "config.json").is_file():
        raise FrameBenchError(f"--resume {directory}: not a results directory (no config.json)")
    config = read_config(directory)
    read_machine(directory)  # a damaged machine record is refused now, not after the first rows
    if config.get("format_version") != FORMAT_VERSION or not {"matrices", "sweep", "envs", *IDENTITY} <= set(config):
        raise FrameBenchError(
            f"--resume {directory}: its config.json was written by another framebench version; rerun the matrix into a new --run-id"
        )
    envs.check_recorded(config["envs"], request.trust_environments, f"--resume {directory}")
    config["data_dir"] = request.data_dir or config.get("data_dir")
    unknown = sorted({b for m in config["matrices"] for b in m["axes"]["backend"]} - set(registry.backend_names()))
    if unknown:
        raise FrameBenchError(
            f"--resume {directory}: its matrix names backend(s) not registered here ({', '.join(unknown)}); "
            "set FRAMEBENCH_PLUGINS as it was when the run started"
        )
    return config


def check_same_experiment(directory: Path, config: dict) -> None:
    old = read_config(directory)
    new = json.loads(json.dumps(config))  # as it will read back (tuples become lists)
    differences = [key for key in IDENTITY if old.get(key) != new.get(key)]
    if differences:
        raise FrameBenchError(
            f"{directory} holds another configuration ({', '.join(differences)} differ); finish it with "
            f"`framebench run --resume {directory}`, or pass a new --run-id"
        )


def merged_envs(directory: Path, old: dict[str, list[str]], new: dict[str, list[str]]) -> dict[str, list[str]]:
    """The environments of a directory extended by a new matrix: new names are added; a name already
    recorded must mean the same requirements (its rows would otherwise mix two environments)."""
    for name in old.keys() & new.keys():
        if old[name] != new[name]:
            raise FrameBenchError(
                f"{directory} ran environment {name} as {'; '.join(old[name]) or 'the lock'}; give "
                f"{'; '.join(new[name]) or 'the lock'} another name, or pass a new --run-id"
            )
    return {**old, **new}


def done_keys(directory: Path) -> dict[tuple, tuple[str, int]]:
    """{job key: (status of its latest runs.csv row, the highest attempt any table records)} of the
    jobs the directory holds: an attempt with epochs, steps or evaluations but no runs row still takes its number."""
    runs = read_table(directory, "runs").sort_values("attempt", kind="stable")
    done = {key: (status, attempt) for (key, attempt), status in zip(table_attempts(runs), runs["status"], strict=True)}
    for table in ("epochs", "steps", "evals"):
        for key, attempt in table_attempts(read_table(directory, table)):
            status, highest = done.get(key, ("", 0))
            done[key] = (status, max(highest, attempt))
    return done


def table_attempts(rows) -> list[tuple[tuple, int]]:
    """(job key, attempt) of every row of a table holding both."""
    keys = rows[key_columns()].astype({"repeat": int}).itertuples(index=False, name=None)
    return [(key, int(attempt)) for key, attempt in zip(keys, rows["attempt"], strict=True)]


def supersede_unfinished(directory: Path, jobs: list[Job]) -> None:
    """Give every attempt that left epochs, steps or evaluations but no runs.csv row (its driver was killed
    outright) an `interrupted` row, so it reads as superseded and never as a result."""
    planned = {job.key(): job for job in jobs}
    finished = {(key, attempt) for key, attempt in table_attempts(read_table(directory, "runs"))}
    epochs = read_table(directory, "epochs")
    unfinished = {(key, attempt) for table in ("epochs", "steps", "evals") for key, attempt in table_attempts(read_table(directory, table))}
    for key, attempt in sorted(unfinished - finished):
        if key not in planned:
            continue
        job = dataclasses.replace(planned[key], attempt=attempt)
        mine = epochs.iloc[[i for i, found in enumerate(table_attempts(epochs)) if found == (key, attempt)]]
        state = JobState(
            job, epochs=[Epoch(**{**row, "step_losses": []}, peak_rss_mb=None) for row in mine[EPOCH_FIELDS].to_dict("records")]
        )
        error = f"superseded: its driver was stopped before attempt {attempt} ended; a later attempt repeats it"
        append_rows(directory, "runs", [summarize(state, End("interrupted", error))])
