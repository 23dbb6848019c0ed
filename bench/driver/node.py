"""What runs on the machine that runs a job, whichever executor sent it there: a fresh worker process,
its events as they come, its log, and how busy the machine was meanwhile. Nothing here writes a
table: events go back to the driver, which alone writes the results directory."""

from __future__ import annotations

import dataclasses
import json
import os
import queue
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

from framebench.core import registry
from framebench.core.gemm import LIBRARIES, probe
from framebench.driver.envs import CURRENT, EnvironmentUnavailable, ensure
from framebench.driver.worker import EVENT_PREFIX, PARENT_PID_VARIABLE
from framebench.store.job import End, Job, MalformedEvent, from_wire

THREAD_ENV_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "TF_NUM_INTRAOP_THREADS")
LOG_TAIL_BYTES = 64_000  # the end of a worker's stderr kept in logs/ (a traceback, framework warnings)
LIVE_GROUPS: set[int] = set()  # process groups of running workers, killed at once if the driver is stopped


def thread_env(threads: int) -> dict[str, str]:
    env = dict(os.environ)
    env.update({name: str(threads) for name in THREAD_ENV_VARS})
    env["TF_NUM_INTEROP_THREADS"] = "1"
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return env


def device_env(device: str, threads: int) -> dict[str, str]:
    """The environment of a process timing `device` with `threads`: a CPU process sees no GPU, so it
    cannot touch one (Ray leaves CUDA_VISIBLE_DEVICES unset for tasks without a GPU)."""
    env = thread_env(threads)
    if device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
    return env


def worker_env(job: Job) -> dict[str, str]:
    """The job's device and threads, and its entry's environment."""
    return {**device_env(job.device, job.threads), **registry.lookup(job.backend, job.variant).env, PARENT_PID_VARIABLE: str(os.getpid())}


@dataclass(frozen=True)
class ProbeRequest:
    device: str  # "cpu" or "gpu"
    threads: int  # CPU threads, as the jobs it stands for use
    tf32: bool  # as the run
    sizes: tuple[int, ...]  # layer widths whose GEMMs to time
    batch: int  # batch size of those GEMMs


def run_probe(request: ProbeRequest) -> tuple[list[dict], list[str]]:
    """Time the request's GEMMs in every library here, in the environment its jobs would have."""
    return probe(
        LIBRARIES, request.device, request.threads, request.tf32, request.sizes, request.batch, device_env(request.device, request.threads)
    )


def busy_cpu_seconds() -> float | None:
    """CPU seconds every process on this machine has used since boot (None where /proc/stat is absent)."""
    try:
        with open("/proc/stat") as handle:
            fields = [int(v) for v in handle.readline().split()[1:9]]
    except (OSError, ValueError):
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    LIVE_GROUPS.discard(pid)


def kill_live_workers() -> None:
    """Kill every running worker's process group now (the driver is being stopped)."""
    for pid in list(LIVE_GROUPS):
        kill_group(pid)


def read_lines(stream, lines: queue.Queue) -> None:
    for line in stream:
        lines.put(line)
    lines.put(None)


def worker_command(job: Job) -> list[str]:
    """The worker's command line, with the python of the job's environment (built or reused here, so a
    node of a cluster gets it too; the driver builds them before the matrix starts)."""
    if job.env == CURRENT:
        return [sys.executable, "-m", "framebench.driver.worker"]
    return [str(ensure(job.env, job.env_requirements).python), "-m", "framebench.driver.worker"]


def execute(job: Job, timeout_s: float) -> Iterator:
    """Run `job` in a fresh worker process and yield its events; the last one is always `end`, carrying
    the outcome, the log's tail and how much CPU other processes used while the job ran."""
    try:
        command = worker_command(job)  # before the clock starts: building an environment is never timed
    except EnvironmentUnavailable as exc:
        yield End("unavailable", str(exc), host=socket.gethostname())
        return
    log = tempfile.TemporaryFile("w+", errors="replace")
    load_before, busy_before, started, started_at = os.getloadavg()[0], busy_cpu_seconds(), time.perf_counter(), time.time()
    process = subprocess.Popen(
        command,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=log,
        text=True,
        env=worker_env(job),
        start_new_session=True,
    )
    LIVE_GROUPS.add(process.pid)
    end = None
    try:
        process.stdin.write(json.dumps(job.to_wire()))
        process.stdin.close()
        lines: queue.Queue = queue.Queue()
        threading.Thread(target=read_lines, args=(process.stdout, lines), daemon=True).start()
        deadline = time.monotonic() + timeout_s
        while end is None:
            try:
                line = lines.get(timeout=max(deadline - time.monotonic(), 0))
            except queue.Empty:
                end = End("timeout", f"no result within --timeout {timeout_s:g} s; raise --timeout or use fewer epochs")
                break
            if line is None:
                break
            if not line.startswith(EVENT_PREFIX):
                log.write(line)
                continue
            try:
                event = from_wire(json.loads(line[len(EVENT_PREFIX) :]))
            except (ValueError, MalformedEvent) as exc:  # json's errors are ValueErrors
                end = End("failed", f"the worker sent a malformed event ({exc}); see its log")
                break
            if isinstance(event, End):
                end = event
            else:
                yield event
    finally:
        kill_group(process.pid)  # the job is over, or the driver stopped it: nothing of it may outlive it
    returncode = process.wait()
    wall = time.perf_counter() - started
    busy_after = busy_cpu_seconds()
    log.seek(0, os.SEEK_END)
    log.seek(max(log.tell() - LOG_TAIL_BYTES, 0))
    text = log.read()
    if end is None:
        end = End("failed", crash_message(returncode, text))
    other = None
    if busy_before is not None and busy_after is not None and end.cpu_s is not None:
        other = max(busy_after - busy_before - end.cpu_s, 0.0) / (wall * (os.cpu_count() or 1))
    yield dataclasses.replace(
        end, log=text, loadavg_1m=load_before, other_cpu_frac=other, host=socket.gethostname(), started_at=started_at, ended_at=time.time()
    )


def crash_message(returncode: int, log: str) -> str:
    """Why a worker died without reporting: its signal (SIGKILL usually means out of memory) or exit
    status, and the last line it wrote."""
    if returncode < 0:
        name = signal.Signals(-returncode).name
        return f"worker died with {name}" + (" (killed, likely out of memory)" if name == "SIGKILL" else "") + "; see its log"
    lines = [line.strip() for line in log.splitlines() if line.strip()]
    return f"worker exited with status {returncode}: {lines[-1] if lines else 'no output'}; see its log"
