"""What runs on the machine that runs a job, whichever executor sent it there: a fresh worker process,
its events as they come, its log, and how busy the machine was meanwhile. Nothing here writes a
table: events go back to the driver, which alone writes the results directory.

Events come on a pipe of their own (the worker's "event channel"), never on stdout or stderr: both of
those go to the job's log, whatever a backend or framework prints there, in whatever bytes. A message
on the channel that is not an event of the job contract ends the job `failed`; nothing of the job
(a process it started with setsid included) outlives it."""

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
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

from framebench.core import registry
from framebench.core.gemm import LIBRARIES, probe
from framebench.driver.calibration import busy_seconds, calibrate, cpu_ticks, steal_fraction
from framebench.driver.envs import CURRENT, EnvironmentUnavailable, ensure
from framebench.driver.worker import CHANNEL_VARIABLE, CONTROL_VARIABLE, JOB_TOKEN_VARIABLE, PARENT_PID_VARIABLE
from framebench.store.job import End, Job, MalformedEvent, from_wire

THREAD_ENV_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "TF_NUM_INTRAOP_THREADS")
LOG_TAIL_BYTES = 64_000  # the end of a worker's stderr kept in logs/ (a traceback, framework warnings)
LIVE_GROUPS: set[int] = set()  # process groups of running workers, killed at once if the driver is stopped
EXIT_GRACE_S = 10.0  # how long a worker that closed its event channel has to exit before it is killed


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
    precision: str  # of the jobs it stands for: the GEMMs run in its compute dtype (framebench.core.config.PRECISIONS)
    sizes: tuple[int, ...]  # layer widths whose GEMMs to time
    batch: int  # batch size of those GEMMs


def run_probe(request: ProbeRequest) -> tuple[list[dict], list[str]]:
    """Time the request's GEMMs in every library here, in the environment its jobs would have."""
    return probe(
        LIBRARIES,
        request.device,
        request.threads,
        request.precision,
        request.sizes,
        request.batch,
        device_env(request.device, request.threads),
    )


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


def worker_process(python: str, *args: str) -> list[str]:
    """The command line of a worker process run by `python` (this interpreter or an environment's)."""
    return [python, "-m", "framebench.driver.worker", *args]


def start_worker(command: list[str], env: dict[str, str], log, control_fd: int | None = None) -> tuple[subprocess.Popen, object]:
    """The worker `command` in a session of its own, stdout and stderr into `log`, and the read end of
    its event channel (binary): a pipe only the harness in the worker writes. `control_fd`, where
    given, is the read end of its control pipe (lockstep), passed on to it alone."""
    read_fd, write_fd = os.pipe()
    control = {CONTROL_VARIABLE: str(control_fd)} if control_fd is not None else {}
    try:
        process = subprocess.Popen(
            command,
            stdin=subprocess.PIPE,
            stdout=log,
            stderr=log,
            env={**env, CHANNEL_VARIABLE: str(write_fd), **control},
            pass_fds=(write_fd,) if control_fd is None else (write_fd, control_fd),
            start_new_session=True,
        )
    except BaseException:
        os.close(read_fd)
        raise
    finally:
        os.close(write_fd)  # the worker holds the only write end: its exit is the channel's end
    return process, os.fdopen(read_fd, "rb")


def read_lines(channel, lines: queue.Queue, tag=None) -> None:
    """Pass the channel's lines on as (tag, line) until it ends (every process holding its write end
    is gone), then (tag, None); the tag tells the workers of a lockstep pair apart on one queue."""
    with channel:
        for line in channel:
            lines.put((tag, line))
    lines.put((tag, None))


def decode_event(line: bytes):
    """The event one channel line holds; MalformedEvent for anything else (bytes that are not UTF-8,
    not JSON, JSON nested past reason, or JSON that is not an event of the contract)."""
    try:
        return from_wire(json.loads(line.decode("utf-8")))
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError and json's errors are ValueErrors
        raise MalformedEvent(f"{type(exc).__name__}: {str(exc)[:120]}") from None


@dataclass(frozen=True)
class Span:
    """The machine when a measurement window opened (a job's, or a lockstep pair's): how busy the
    machine was over the window is told from these at its end."""

    started: float  # perf_counter
    load: float  # 1-minute load average
    ticks: tuple[int, ...] | None  # the machine's CPU ticks by kind (calibration.cpu_ticks)

    @classmethod
    def now(cls) -> Span:
        return cls(time.perf_counter(), os.getloadavg()[0], cpu_ticks())


@dataclass
class Worker:
    """A job's worker process, started by `start_job`: what ending and measuring it needs."""

    job: Job  # the job it runs
    process: subprocess.Popen  # the worker, leader of a session of its own
    log: object  # a temporary file holding its stdout and stderr
    token: str  # marks every process of the job, for kill_strays
    control: object | None  # the write end of its control pipe (lockstep), None otherwise
    started_at: float  # wall clock when it started
    span: Span  # the window its machine load is measured over


def start_job(job: Job, command: list[str], lines: queue.Queue, span: Span, tag=None, lockstep: bool = False) -> Worker:
    """Start `job`'s worker (`command`, from worker_command), its event channel's lines going to
    `lines` tagged `tag`, the job written on its stdin; with `lockstep`, a control pipe on which it
    waits for its turn before each epoch."""
    log = tempfile.TemporaryFile()
    token = uuid.uuid4().hex
    control_read, control_write = os.pipe() if lockstep else (None, None)
    env = {**worker_env(job), JOB_TOKEN_VARIABLE: token}
    started_at = time.time()
    try:
        process, channel = start_worker(command, env, log, control_read)
    except BaseException:
        if control_write is not None:
            os.close(control_write)
        raise
    finally:
        if control_read is not None:
            os.close(control_read)  # the worker holds the only read end
    LIVE_GROUPS.add(process.pid)
    threading.Thread(target=read_lines, args=(channel, lines, tag), daemon=True).start()
    try:
        process.stdin.write(json.dumps(job.to_wire()).encode())
        process.stdin.close()
    except BrokenPipeError:  # the worker died at once: its exit status and log say why
        pass
    control = os.fdopen(control_write, "wb", buffering=0) if control_write is not None else None
    return Worker(job, process, log, token, control, started_at, span)


def stop_worker(worker: Worker) -> None:
    """End the worker: its process group, then every process carrying its token; its control pipe closed."""
    kill_group(worker.process.pid)
    worker.process.wait()
    kill_strays(worker.token)
    if worker.control is not None:
        worker.control.close()


def measured_end(worker: Worker, end: End | None, others_cpu_s: float = 0.0) -> End:
    """The job's last event from its stopped worker: `end` as the worker sent it (a crash when None),
    with the log's tail and the share of the CPUs that processes other than the worker (and those the
    caller accounts for with `others_cpu_s`: a lockstep partner) used over its span."""
    wall = time.perf_counter() - worker.span.started
    ticks_after = cpu_ticks()
    log = worker.log
    log.seek(0, os.SEEK_END)
    log.seek(max(log.tell() - LOG_TAIL_BYTES, 0))
    text = log.read().decode("utf-8", errors="replace")
    log.close()
    if end is None:
        end = End("failed", crash_message(worker.process.returncode, text))
    other = None
    if (busy := busy_seconds(worker.span.ticks, ticks_after)) is not None and end.cpu_s is not None:
        other = max(busy - end.cpu_s - others_cpu_s, 0.0) / (wall * (os.cpu_count() or 1))
    return dataclasses.replace(
        end,
        log=text,
        loadavg_1m=worker.span.load,
        other_cpu_frac=other,
        steal_frac=steal_fraction(worker.span.ticks, ticks_after),
        host=socket.gethostname(),
        started_at=worker.started_at,
        ended_at=time.time(),
    )


def process_environ(pid: str) -> bytes:
    try:
        with open(f"/proc/{pid}/environ", "rb") as handle:
            return handle.read()
    except OSError:  # gone, or another user's
        return b""


def kill_strays(token: str) -> None:
    """Kill every process still carrying the job's token in its environment: what a backend started
    that left the worker's process group (setsid, a daemon) and would otherwise outlive the job."""
    marker = f"{JOB_TOKEN_VARIABLE}={token}".encode() + b"\0"
    for _ in range(10):  # again while a stray forks while being killed
        strays = [int(pid) for pid in os.listdir("/proc") if pid.isdigit() and marker in process_environ(pid)]
        if not strays:
            return
        for pid in strays:
            try:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, os.WNOHANG)  # reaps it where it is our child; a no-op otherwise
            except (ProcessLookupError, PermissionError, ChildProcessError):
                pass


def worker_command(job: Job) -> list[str]:
    """The worker's command line, with the python of the job's environment (built or reused here, so a
    node of a cluster gets it too; the driver builds them before the matrix starts)."""
    return worker_process(sys.executable if job.env == CURRENT else str(ensure(job.env, job.env_requirements).python))


def execute(job: Job, timeout_s: float) -> Iterator:
    """Run `job` in a fresh worker process and yield its events; the last one is always `end`, carrying
    the outcome, the log's tail and how much CPU other processes used while the job ran."""
    try:
        command = worker_command(job)  # before the clock starts: building an environment is never timed
    except EnvironmentUnavailable as exc:
        yield End("unavailable", str(exc), host=socket.gethostname())
        return
    calib_before = calibrate(job.threads)
    lines: queue.Queue = queue.Queue()
    worker = start_job(job, command, lines, Span.now())
    end = None
    try:
        deadline = time.monotonic() + timeout_s
        while end is None:
            try:
                _, line = lines.get(timeout=max(deadline - time.monotonic(), 0))
            except queue.Empty:
                end = End("timeout", f"no result within --timeout {timeout_s:g} s; raise --timeout or use fewer epochs")
                break
            if line is None:
                try:
                    worker.process.wait(timeout=EXIT_GRACE_S)
                except subprocess.TimeoutExpired:
                    end = End("failed", "the worker closed its event channel without reporting how the job ended; see its log")
                break
            try:
                event = decode_event(line)
            except MalformedEvent as exc:
                end = End("failed", f"the worker sent a malformed event ({exc}); see its log")
                break
            if isinstance(event, End):
                end = event
            else:
                yield event
    finally:
        stop_worker(worker)  # the job is over, or the driver stopped it: nothing of it may outlive it
    end = measured_end(worker, end)
    yield dataclasses.replace(end, calib_before_s=calib_before, calib_after_s=calibrate(job.threads))


def crash_message(returncode: int, log: str) -> str:
    """Why a worker died without reporting: its signal (SIGKILL usually means out of memory) or exit
    status, and the last line it wrote."""
    if returncode < 0:
        name = signal.Signals(-returncode).name
        return f"worker died with {name}" + (" (killed, likely out of memory)" if name == "SIGKILL" else "") + "; see its log"
    lines = [line.strip() for line in log.splitlines() if line.strip()]
    return f"worker exited with status {returncode}: {lines[-1] if lines else 'no output'}; see its log"
