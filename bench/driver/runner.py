"""Runs the benchmark matrix: one fresh worker process per job, jobs interleaved (A B C, A B C) so a
shared machine's drift spreads evenly, every measured row written the moment its event arrives.

The driver alone writes the results directory (under a lock), whichever executor runs the jobs. A
run stopped by a signal (STOP_SIGNALS: SIGINT, SIGTERM, a closed terminal's SIGHUP, ...) kills its
workers, records the job in flight as `interrupted`, writes its report and says how to finish it:
`framebench run --resume DIR` runs only the jobs without an `ok` row. An attempt a driver killed
outright (SIGKILL) left without a runs.csv row is recorded `interrupted` when the directory is
resumed, and the next attempt's number follows every attempt any table holds, so no two attempts
ever share rows.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import itertools
import json
import math
import os
import re
import signal
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path

from framebench.core import registry
from framebench.core.config import PRESETS, ModelConfig, Sweep, TrainConfig, check_precisions, config_from_dict, layer_sizes, resolve
from framebench.core.data import load_dataset
from framebench.core.seeds import seed_count, seed_ranges, seed_values
from framebench.driver import envs
from framebench.driver.executors import EXECUTORS, Executor, LocalExecutor
from framebench.driver.node import ProbeRequest
from framebench.errors import FrameBenchError
from framebench.store import job as contract
from framebench.store.job import (
    EPOCH_FIELDS,
    FORMAT_VERSION,
    NOT_RUN,
    OK,
    TABLE_NAMES,
    End,
    Epoch,
    Evaluation,
    Job,
    Setup,
    Start,
    key_columns,
)
from framebench.store.results import (
    DirectoryLock,
    append_rows,
    check_free_space,
    environment,
    load_results,
    new_run_id,
    prepare_directory,
    read_config,
    read_env,
    read_table,
    remove_empty_directory,
    replace_file,
    write_failure,
    write_json,
)
from framebench.store.tables import BUSY_FRACTION, calibration_drifted

DEVICE_CHOICES = ("cpu", "gpu", "auto", "all")
# A results directory holds one experiment: appending with any of these different is refused.
IDENTITY = ("preset", "dataset", "model", "train", "threads", "sweep", "target_acc", "floors")
SETTLED = (OK, "unsupported")  # a job whose latest attempt ended so is not run again: unsupported depends on the configuration alone
STEP_ROW_BYTES = 80  # a steps.csv row, generously, for the free-space check before a matrix starts
RUN_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2)
LARGE_PLAN_JOBS = 1_000  # a plan of more jobs is warned about
MAX_PLAN_JOBS = 100_000  # a plan of more jobs is refused unless --large-plan


@dataclass(frozen=True)
class RunRequest:
    backends: str = "numpy"  # comma-separated backends, or all (see `framebench list`)
    variants: str = "default"  # comma-separated variants, or all; each backend runs those it registers
    device: str = "cpu"  # cpu, gpu, auto (gpu where the machine or cluster has one, else cpu), all, or a list such as cpu,gpu
    preset: str = "mlp"  # the starting configuration; the model and training flags below override its fields
    dataset: str | None = None  # mnist, fashion-mnist or digits (default: the preset's)
    data_dir: str | None = None  # folder holding mnist/ and fashion-mnist/ (default: $FRAMEBENCH_DATA_DIR, the cache, ...)
    results_dir: str = "results"  # parent folder of the run's results directory
    run_id: str | None = None  # results directory name (default: the UTC time); an existing one is extended, same configuration only
    resume: str | None = None  # a results directory to finish: its recorded matrix, only the jobs without an ok row
    repeats: int = 1  # rounds over the whole matrix, each rerunning the same seeds (for timing)
    seeds: str = "0"  # seeds of the initial weights and batch order, the same for every backend: N, a list 0,3,7 or a range 0-9
    threads: int = field(default_factory=lambda: os.cpu_count() or 1)  # CPU threads for every library (default: all cores)
    oversubscribe: bool = False  # allow --threads above this machine's cores
    target_acc: float | None = None  # test accuracy that times time-to-accuracy, in (0, 1] (default: the preset's)
    precision: str = "fp32"  # numeric precision(s), a comma list of fp32, tf32 (GPU), bf16, fp16 (mixed, with loss scaling)
    floors: bool = True  # time the model's GEMMs on every node, for floor_epoch_s and the efficiencies
    timeout: float = 3600.0  # seconds one job may take before it is killed
    sweep: str | None = None  # run the matrix once per value of one field: FIELD=V1,V2,... (hidden's values split by ;)
    executor: str = "local"  # where jobs run: local (this machine, one at a time) or ray (a Ray cluster)
    address: str | None = None  # Ray cluster address, e.g. 10.0.0.1:6379 (default: start a Ray instance here)
    schedule_timeout: float = 300.0  # ray: seconds a job may wait for a node able to run it before it is unavailable
    large_plan: bool = False  # run a matrix of more than 100000 jobs anyway (repeats x seeds x sweep values x backends x variants x ...)
    env: tuple[str, ...] = ()  # NAME=REQ[;REQ...]: run the matrix in an environment of the lock with these overrides (repeatable)

    def validate(self) -> None:
        """Everything checkable before a worker starts, each mistake naming its flag."""
        if not 0 < self.timeout < math.inf:
            raise FrameBenchError(f"--timeout must be a finite number of seconds > 0, got {self.timeout}")
        if not 0 < self.schedule_timeout < math.inf:
            raise FrameBenchError(f"--schedule-timeout must be a finite number of seconds > 0, got {self.schedule_timeout}")
        seed_ranges(self.seeds)
        if self.repeats < 1:
            raise FrameBenchError(f"--repeats must be at least 1, got {self.repeats}")
        check_threads(self.threads, self.oversubscribe, "--threads ")
        if self.target_acc is not None and not 0 < self.target_acc <= 1:
            raise FrameBenchError(f"--target-acc must be in (0, 1], got {self.target_acc}")
        if self.run_id is not None and not RUN_ID_PATTERN.fullmatch(self.run_id):
            raise FrameBenchError(
                f"--run-id {self.run_id!r} must be a plain name (letters, digits, '.', '_', '-'), which stays inside --results-dir"
            )
        check_precisions(self.precision, "--precision")
        if self.sweep and Sweep.parse(self.sweep).field == "precision" and self.precision != "fp32":
            raise FrameBenchError("--sweep precision=... sets each job's precision; drop --precision (or sweep another field)")
        if self.executor not in EXECUTORS:
            raise FrameBenchError(f"unknown executor {self.executor!r}; --executor takes one of: {', '.join(EXECUTORS)}")


def framebench_version() -> str:
    """The installed framebench's version, recorded in config.json beside the tables' FORMAT_VERSION."""
    return importlib.metadata.version("framebench")


def make_executor(name: str, address: str | None, schedule_timeout: float) -> Executor:
    """The executor --executor names; Ray is imported only when it is the one."""
    if name == "ray":
        from framebench.driver.ray_executor import RayExecutor

        return RayExecutor(address, schedule_timeout)
    if address:
        raise FrameBenchError("--address needs --executor ray")
    return LocalExecutor()


def check_threads(threads: int, oversubscribe: bool, flag: str) -> None:
    """At least one thread; more threads than cores would time contention: refused unless asked for
    (`flag` names the setting)."""
    if threads < 1:
        raise FrameBenchError(f"{flag}{threads}: threads must be at least 1")
    if threads > (os.cpu_count() or 1) and not oversubscribe:
        raise FrameBenchError(
            f"{flag}{threads} is more than this machine's {os.cpu_count()} cores, which times contention, not "
            "the frameworks; pass --oversubscribe to do it anyway"
        )


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


def split_names(text: str, allowed: list[str], what: str, flag: str) -> tuple[str, ...]:
    items = tuple(dict.fromkeys(part.strip() for part in text.split(",") if part.strip()))
    if not items:
        raise FrameBenchError(f"{flag} names no {what}; choose from: {', '.join(allowed)} (or all)")
    if "all" in items:
        return tuple(allowed)
    for item in items:
        if item not in allowed:
            raise FrameBenchError(f"unknown {what} {item!r}; {flag} takes: {', '.join(allowed)} (or all)")
    return items


def resolve_devices(text: str, executor: Executor) -> tuple[str, ...]:
    """cpu/gpu as asked; auto is gpu where the executor has one, else cpu; all is cpu,gpu; no duplicates."""
    asked = split_names(text, list(DEVICE_CHOICES), "device", "--device")
    gpu = "gpu" if "auto" in asked and executor.has_gpu() else "cpu"
    expanded = [d for item in asked for d in ({"auto": [gpu], "all": ["cpu", "gpu"]}.get(item, [item]))]
    return tuple(dict.fromkeys(expanded))


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
        "implementation": entry.implementation(),
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


def probe_floors(directory: Path, executor: Executor, probes: dict[ProbeRequest, list[str]], when: str) -> None:
    """Time the GEMMs of every probe request on every node; gemm.csv keeps them, one row per GEMM."""
    for request, sweep_values in probes.items():
        for node_name, rows, skipped in executor.probe(request):
            for line in skipped:
                print(f"GEMM probe ({when}): {node_name}: {line}: not measured", file=sys.stderr)
            append_rows(
                directory,
                "gemm",
                [{**row, "node": node_name, "sweep_value": value, "probe": when} for value in sweep_values for row in rows],
            )
            print(f"GEMM probe ({when}): {node_name} {request.device}: {len(rows)} timings", file=sys.stderr, flush=True)


def probe_requests(jobs: list[Job], input_size: int, num_classes: int, has_gpu: bool) -> dict[ProbeRequest, list[str]]:
    """The distinct GEMM probes the jobs need (one per device, precision and shape set), each with its sweep values."""
    requests: dict[ProbeRequest, list[str]] = {}
    for job in jobs:
        if job.device == "gpu" and not has_gpu:
            continue
        model, train = config_from_dict(job.config)
        request = ProbeRequest(job.device, job.threads, job.precision, layer_sizes(input_size, model, num_classes), train.batch_size)
        values = requests.setdefault(request, [])
        if job.sweep_value not in values:
            values.append(job.sweep_value)
    return requests


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
        "matrices": [],
    }


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


def plan_size(request: RunRequest, sweep: Sweep) -> int:
    """The most jobs the request can plan, by arithmetic (every device it lists, every backend x
    variant pair), before a single job is built."""
    backends = split_names(request.backends, registry.backend_names(), "backend", "--backends")
    variants = split_names(request.variants, registry.variant_names(), "variant", "--variants")
    devices = min(len(split_names(request.device, list(DEVICE_CHOICES), "device", "--device")), 2)  # cpu and gpu at most
    return request.repeats * len(sweep.values) * len(backends) * len(variants) * devices * seed_count(request.seeds)


def check_plan_size(request: RunRequest) -> None:
    """An absurd matrix (e.g. --repeats 1000000000) is refused in one line rather than built in
    memory; a large one is warned about."""
    jobs = plan_size(request, Sweep.parse(request.sweep))
    if jobs > MAX_PLAN_JOBS and not request.large_plan:
        raise FrameBenchError(
            f"this matrix plans up to {jobs:,} jobs (more than {MAX_PLAN_JOBS:,}); lower --repeats, --seeds or the lists, "
            "or pass --large-plan to run it anyway"
        )
    if jobs > LARGE_PLAN_JOBS:
        print(f"warning: this matrix plans up to {jobs:,} jobs", file=sys.stderr)


def resumed_config(directory: Path, request: RunRequest) -> dict:
    """config.json of a directory to resume, checked against what this framebench can run."""
    if not (directory / "config.json").is_file():
        raise FrameBenchError(f"--resume {directory}: not a results directory (no config.json)")
    config = read_config(directory)
    read_env(directory)  # a damaged env.json is refused now, not after the first rows
    if config.get("format_version") != FORMAT_VERSION or not {"matrices", "sweep", "envs", *IDENTITY} <= set(config):
        raise FrameBenchError(
            f"--resume {directory}: its config.json was written by another framebench version; rerun the matrix into a new --run-id"
        )
    config["data_dir"] = request.data_dir or config.get("data_dir")
    unknown = sorted({b for m in config["matrices"] for b in m["axes"]["backend"]} - set(registry.backend_names()))
    if unknown:
        raise FrameBenchError(
            f"--resume {directory}: its matrix names backend(s) not registered here ({', '.join(unknown)}); "
            "set FRAMEBENCH_PLUGINS as it was when the run started"
        )
    return config


def run(request: RunRequest, model_overrides: dict, train_overrides: dict) -> int:
    """`framebench run`: plan, probe, run, report. Returns the exit status. A run refused before its
    config.json is written leaves no directory behind that it created."""
    request.validate()
    created = False
    if request.resume:
        directory = Path(request.resume)
        config = resumed_config(directory, request)
    else:
        config = new_config(request, model_overrides, train_overrides)
        check_plan_size(request)
        directory = Path(request.results_dir) / (request.run_id or new_run_id())
        created = not directory.exists()
        directory = prepare_directory(request.results_dir, directory.name)
    try:
        return run_locked(directory, request, config)
    except FrameBenchError:
        if created and not (directory / "config.json").exists():
            remove_empty_directory(directory)
        raise


def run_locked(directory: Path, request: RunRequest, config: dict) -> int:
    data = load_dataset(config["dataset"], data_dir=config.get("data_dir"))  # fails fast, once, on missing or bad data
    config["data_source"] = data.source
    with DirectoryLock(directory):
        if not request.resume and (directory / "config.json").exists():
            check_same_experiment(directory, config)
            recorded = read_config(directory)
            config = {
                **config,
                "matrices": recorded.get("matrices", []),
                "envs": merged_envs(directory, recorded.get("envs", {}), config["envs"]),
            }
        executor = make_executor(request.executor, request.address, request.schedule_timeout)
        try:
            return run_in(directory, request, config, executor, data)
        except BaseException:
            executor.stop()  # whatever went wrong, no worker outlives the driver's run
            raise
        finally:
            executor.close()


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


def table_attempts(rows) -> list[tuple[tuple, int]]:
    """(job key, attempt) of every row of a table holding both."""
    keys = rows[key_columns()].astype({"repeat": int}).itertuples(index=False, name=None)
    return [(key, int(attempt)) for key, attempt in zip(keys, rows["attempt"], strict=True)]


def run_in(directory: Path, request: RunRequest, config: dict, executor: Executor, data) -> int:
    if not request.resume:
        recorded = json.loads(json.dumps(dataclasses.asdict(matrix_of(request, executor))))  # as config.json holds it
        if recorded not in config["matrices"]:
            config["matrices"].append(recorded)
    if skipped := unregistered(config["matrices"]):
        print(
            f"not registered, so not run (a variant a backend does not register would repeat its default): {', '.join(skipped)}",
            file=sys.stderr,
        )
    planned = recorded_jobs(directory.name, config)
    supersede_unfinished(directory, planned)
    previous = done_keys(directory)
    jobs = [
        dataclasses.replace(job, attempt=previous.get(job.key(), ("", 0))[1] + 1)
        for job in planned
        if previous.get(job.key(), ("",))[0] not in SETTLED
    ]
    already_ok = sum(1 for status, _ in previous.values() if status == OK)
    if previous:
        print(f"{already_ok} job(s) already ok in {directory}; {len(jobs)} to run", file=sys.stderr)
    steps = sum(
        math.ceil(
            (j.config["train"]["steps_per_epoch"] * j.config["train"]["batch_size"] or len(data.y_train)) / j.config["train"]["batch_size"]
        )
        * j.config["train"]["epochs"]
        for j in jobs
    )
    check_free_space(directory, steps * STEP_ROW_BYTES + 1_000_000)  # before anything is written
    earlier = read_env(directory)
    write_json(directory, "config.json", config)
    for table in TABLE_NAMES:  # every table exists (with its header) from the start, whatever happens next
        append_rows(directory, table, [])
    built, broken = prepare_environments(config["envs"], jobs)
    record = environment(config["threads"], executor.nodes(config["threads"]), earlier)
    write_json(directory, "env.json", {**record, "environments": environment_records(built, earlier)})
    probes = probe_requests(jobs, data.input_size, data.num_classes, executor.has_gpu()) if config["floors"] else {}
    states: dict = {}
    interrupts = Interrupts()
    handlers = {name: signal.signal(name, interrupts.handle) for name in STOP_SIGNALS}
    try:
        try:
            probe_floors(directory, executor, probes, "start")
            rows = run_jobs(directory, jobs, executor, request.timeout, states, interrupts, broken)
            probe_floors(directory, executor, probes, "end")
        except Stopped as stop:
            executor.stop()
            for state in states.values():
                finish_job(directory, state, End("interrupted", f"stopped by {stop} after {len(state.epochs)} epoch(s)"))
            report(directory)  # no signal interrupts it: Interrupts.handle ignores them from now on
            print(
                f"interrupted by {stop}: rows measured so far are kept; finish with `framebench run --resume {directory}`", file=sys.stderr
            )
            return 128 + stop.signum
        report(directory)
    except Stopped as stop:
        print(
            f"interrupted by {stop} while writing the report: every row is kept; write it with `framebench plot {directory}`",
            file=sys.stderr,
        )
        return 128 + stop.signum
    finally:
        for name, handler in handlers.items():
            signal.signal(name, handler)
    statuses = {row["status"] for row in rows}
    if not jobs or statuses <= {OK, *NOT_RUN}:
        return 0 if OK in statuses or already_ok or not jobs else 1
    return 1


def prepare_environments(specs: dict[str, list[str]], jobs: list[Job]) -> tuple[list[envs.Environment], dict[str, str]]:
    """Build (or reuse) every environment the jobs need, before anything is timed: (the environments
    built, {name: why} of those that cannot be). A node of a cluster builds its own as its jobs arrive."""
    built, broken = [], {}
    for name in dict.fromkeys(job.env for job in jobs if job.env != envs.CURRENT):
        requirements = specs[name]
        if not envs.is_built(requirements):
            print(f"building environment {name} ({'; '.join(requirements) or 'the lock'}) with uv", file=sys.stderr, flush=True)
        try:
            built_env = envs.ensure(name, requirements)
        except envs.EnvironmentUnavailable as exc:
            print(f"{exc}; its jobs are unavailable", file=sys.stderr, flush=True)
            broken[name] = str(exc)
            continue
        if built_env.reused:
            print(f"reusing environment {name} ({built_env.path})", file=sys.stderr, flush=True)
        built.append(built_env)
    return built, broken


def environment_records(built: list[envs.Environment], earlier: dict | None) -> dict[str, dict]:
    """env.json's `environments`: each one's overrides, folder and full package list (earlier ones kept)."""
    records = dict((earlier or {}).get("environments", {}))
    for built_env in built:
        records[built_env.name] = {
            "requirements": list(built_env.requirements),
            "path": str(built_env.path),
            "packages": built_env.packages(),
        }
    return records


def report(directory: Path) -> None:
    """report.md and the figures from what the tables hold, the summary on stdout, the directory last."""
    from framebench.core.gemm import unreliable_warnings
    from framebench.reports.report import write_report
    from framebench.store.tables import format_table, not_run, summary

    write_report(directory)
    runs = load_results(directory)["runs"]
    print(format_table(summary(runs)))
    for line in not_run(runs):
        print(f"not run: {line}")
    for line in unreliable_warnings(runs):
        print(f"warning: {line}", file=sys.stderr)
    print(directory)
