"""`framebench run`: plan, probe, run, report. One fresh worker process per job, jobs interleaved
(A B C, A B C) so a shared machine's drift spreads evenly, every measured row written the moment its
event arrives (framebench.driver.recorder). The driver alone writes the results directory (under a
lock), whichever executor runs the jobs. A run stopped by a signal kills its workers, records the job
in flight as `interrupted`, writes its report and says how to finish it: `framebench run --resume DIR`
runs only the jobs not yet settled (framebench.driver.plan)."""

from __future__ import annotations

import dataclasses
import json
import math
import signal
import sys
from pathlib import Path

from framebench.core.config import config_from_dict, layer_sizes
from framebench.core.data import load_dataset
from framebench.driver import envbuild, envs
from framebench.driver.executors import Executor, LocalExecutor
from framebench.driver.machine import machine_record
from framebench.driver.plan import (
    SETTLED,
    check_same_experiment,
    done_keys,
    matrix_of,
    merged_envs,
    new_config,
    recorded_jobs,
    resumed_config,
    supersede_unfinished,
    unregistered,
)
from framebench.driver.probe import ProbeRequest
from framebench.driver.recorder import STOP_SIGNALS, Interrupts, Stopped, finish_job, run_jobs
from framebench.driver.request import RunRequest, check_plan_size
from framebench.errors import FrameBenchError
from framebench.reports.floors import load_with_floors
from framebench.store.events import End
from framebench.store.files import (
    DirectoryLock,
    append_rows,
    check_free_space,
    new_run_id,
    prepare_directory,
    remove_empty_directory,
    write_json,
)
from framebench.store.job import NOT_RUN, OK, Job
from framebench.store.metadata import MACHINE_FILE, read_config, read_machine
from framebench.store.schema import TABLE_NAMES

STEP_ROW_BYTES = 80  # a steps.csv row, generously, for the free-space check before a matrix starts


def make_executor(name: str, address: str | None, schedule_timeout: float, lockstep: bool = False) -> Executor:
    """The executor --executor names; Ray is imported only when it is the one. Ray runs whole jobs
    wherever a slot is free, so a lockstep run there alternates whole jobs (compare then reads it unpaired)."""
    if name == "ray":
        from framebench.driver.ray_executor import RayExecutor

        if lockstep:
            print("lockstep: the ray executor runs whole jobs, so the environments alternate job by job, unpaired", file=sys.stderr)
        return RayExecutor(address, schedule_timeout)
    if address:
        raise FrameBenchError("--address needs --executor ray")
    return LocalExecutor(lockstep)


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
            envs.check_recorded(recorded.get("envs", {}), request.trust_environments, f"{directory}/config.json")
            config = {
                **config,
                "matrices": recorded.get("matrices", []),
                "envs": merged_envs(directory, recorded.get("envs", {}), config["envs"]),
            }
        executor = make_executor(request.executor, request.address, request.schedule_timeout, config.get("lockstep", False))
        try:
            return run_in(directory, request, config, executor, data)
        except BaseException:
            executor.stop()  # whatever went wrong, no worker outlives the driver's run
            raise
        finally:
            executor.close()


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
    earlier = read_machine(directory)
    write_json(directory, "config.json", config)
    for table in TABLE_NAMES:  # every table exists (with its header) from the start, whatever happens next
        append_rows(directory, table, [])
    states: dict = {}
    interrupts = Interrupts()
    handlers = {name: signal.signal(name, interrupts.handle) for name in STOP_SIGNALS}  # from the first build on
    try:
        try:
            built, broken = prepare_environments(config["envs"], jobs)
            record = machine_record(config["threads"], executor.nodes(config["threads"]), earlier)
            with interrupts:
                write_json(directory, MACHINE_FILE, {**record, "environments": environment_records(built, earlier)})
            probes = {}
            if config["floors"]:
                probes = probe_requests(jobs, data.input_size, data.num_classes, executor.has_gpu(), request.timeout)
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
            built_env = envbuild.ensure(name, requirements)
        except envs.EnvironmentUnavailable as exc:
            print(f"{exc}; its jobs are unavailable", file=sys.stderr, flush=True)
            broken[name] = str(exc)
            continue
        if built_env.reused:
            print(f"reusing environment {name} ({built_env.path})", file=sys.stderr, flush=True)
        built.append(built_env)
    return built, broken


def environment_records(built: list[envs.Environment], earlier: dict | None) -> dict[str, dict]:
    """machine.json's `environments`: each one's overrides, folder and full package list (earlier ones kept)."""
    records = dict((earlier or {}).get("environments", {}))
    for built_env in built:
        records[built_env.name] = {
            "requirements": list(built_env.requirements),
            "path": str(built_env.path),
            "packages": built_env.packages(),
        }
    return records


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


def probe_requests(jobs: list[Job], input_size: int, num_classes: int, has_gpu: bool, timeout_s: float) -> dict[ProbeRequest, list[str]]:
    """The distinct GEMM probes the jobs need (one per device, precision and shape set), each with its sweep
    values; a library's probe given no longer than a job (`timeout_s`, the run's --timeout)."""
    requests: dict[ProbeRequest, list[str]] = {}
    for job in jobs:
        if job.device == "gpu" and not has_gpu:
            continue
        model, train = config_from_dict(job.config)
        sizes = layer_sizes(input_size, model, num_classes)
        request = ProbeRequest(job.device, job.threads, job.precision, sizes, train.batch_size, timeout_s)
        values = requests.setdefault(request, [])
        if job.sweep_value not in values:
            values.append(job.sweep_value)
    return requests


def report(directory: Path) -> None:
    """report.md and the figures from what the tables hold, the summary on stdout, the directory last."""
    from framebench.reports.floors import unreliable_warnings
    from framebench.reports.markdown import format_table
    from framebench.reports.report import write_report
    from framebench.reports.summary import not_run, summary

    write_report(directory)
    runs = load_with_floors(directory)["runs"]
    print(format_table(summary(runs)))
    for line in not_run(runs):
        print(f"not run: {line}")
    for line in unreliable_warnings(runs):
        print(f"warning: {line}", file=sys.stderr)
    print(directory)
