"""What runs on the machine that runs a job, whichever executor sent it there: a fresh worker process,
its events as they come, its log, and how busy the machine was meanwhile. Nothing here writes a
table: events go back to the driver, which alone writes the results directory.

Events come on a pipe of their own (the worker's "event channel"), never on stdout or stderr: both of
those go to the job's log, whatever a backend or framework prints there, in whatever bytes. A message
on the channel that is not an event of the job contract, or an event that cannot be true of the job
(framebench.store.sense.Sense), ends the job `failed`; nothing of the job (a process it started with
setsid, or forked without exec, included) outlives it. Everything a worker says is bounded: a line's
length (event_line_cap), the lines waiting to be recorded (QUEUE_LINES), and the job's time, however
much it talks. A job ends when its worker closes the channel after its end, or when the worker exits
(a process it forked, still holding the channel, is killed then rather than waited for).

A second way to run workers (two at once, say) reuses the pieces: start_worker, read_lines into a
bounded queue with event_line_cap, follow (or decode_event and a Sense per worker), stop_job."""

from __future__ import annotations

import dataclasses
import json
import math
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
from collections.abc import Generator, Iterator
from dataclasses import dataclass

from framebench.core import registry
from framebench.driver.calibration import busy_seconds, calibrate, cpu_ticks, steal_fraction
from framebench.driver.envbuild import ensure
from framebench.driver.envs import CURRENT, EnvironmentUnavailable
from framebench.driver.worker import CHANNEL_VARIABLE, CONTROL_VARIABLE, JOB_TOKEN_VARIABLE, PARENT_PID_VARIABLE
from framebench.store.events import End, MalformedEvent, from_wire
from framebench.store.job import Job
from framebench.store.sense import RULE_ORDER, Sense, SenseViolation, most_samples_per_epoch

THREAD_ENV_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "TF_NUM_INTRAOP_THREADS")
LOG_TAIL_BYTES = 64_000  # the end of a worker's stderr kept in logs/ (a traceback, framework warnings)
LIVE_GROUPS: set[int] = set()  # process groups of running workers, killed at once if the driver is stopped
EXIT_GRACE_S = 10.0  # how long a worker that closed its event channel has to exit, or an exited one's last lines take, at most
LINE_CAP_BYTES = 1 << 20  # the longest event line, beyond an epoch's step losses (event_line_cap)
STEP_LOSS_BYTES = 32  # room per step loss in an epoch's line (a float's JSON, a separator)
QUEUE_LINES = 64  # lines read but not yet recorded: a worker that talks faster than the driver records waits on its pipe
POLL_S = 0.1  # how often a job waiting for its worker's next line looks whether the worker has exited


def thread_variables(threads: int) -> dict[str, str]:
    env = dict(os.environ)
    env.update({name: str(threads) for name in THREAD_ENV_VARS})
    env["TF_NUM_INTEROP_THREADS"] = "1"
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return env


def device_variables(device: str, threads: int) -> dict[str, str]:
    """The environment of a process timing `device` with `threads`: a CPU process sees no GPU, so it
    cannot touch one (Ray leaves CUDA_VISIBLE_DEVICES unset for tasks without a GPU)."""
    env = thread_variables(threads)
    if device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
    return env


def worker_variables(job: Job) -> dict[str, str]:
    """The job's device and threads, and its entry's environment variables."""
    return {
        **device_variables(job.device, job.threads),
        **registry.lookup(job.backend, job.variant).variables,
        PARENT_PID_VARIABLE: str(os.getpid()),
    }


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


@dataclass(frozen=True)
class Overlong:
    """A line longer than the channel's cap (its bytes are not kept): the job fails."""

    cap: int  # the cap it broke, in bytes


@dataclass(frozen=True)
class Torn:
    """The channel's last bytes, without their newline: the worker died while writing them."""

    text: bytes  # what came


def event_line_cap(job: Job) -> int:
    """The longest line `job`'s worker may send: LINE_CAP_BYTES, plus room for the step losses of
    the longest epoch the job's configuration can draw."""
    train = job.config["train"]
    return LINE_CAP_BYTES + STEP_LOSS_BYTES * math.ceil(most_samples_per_epoch(train) / train["batch_size"])


def read_lines(channel, lines: queue.Queue, cap: int, done: threading.Event, tag=None) -> None:
    """Pass the channel's lines on as (tag, line), then (tag, None) once it ends (every process holding
    its write end is gone): a line over `cap` bytes as Overlong (the reading stops; no more than `cap`
    bytes are ever held), a last line cut short as Torn. `lines` is bounded, so a worker that talks
    faster than the driver records waits; once `done` is set (the job is over) nothing more is passed
    on. The tag tells the workers of a lockstep pair apart on one queue."""

    def put(item) -> bool:
        while not done.is_set():
            try:
                lines.put((tag, item), timeout=POLL_S)
                return True
            except queue.Full:
                continue
        return False

    with channel:
        while line := channel.readline(cap + 1):
            if len(line) > cap:
                put(Overlong(cap))
                return
            if not put(line if line.endswith(b"\n") else Torn(line)):
                return
    put(None)


def decode_event(line: bytes):
    """The event one channel line holds; MalformedEvent for anything else (bytes that are not UTF-8,
    not JSON, JSON nested past reason, or JSON that is not an event of the contract)."""
    try:
        return from_wire(json.loads(line.decode("utf-8")))
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError and json's errors are ValueErrors
        raise MalformedEvent(f"{type(exc).__name__}: {str(exc)[:120]}") from None


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


def stop_job(process: subprocess.Popen, token: str) -> None:
    """Kill the worker's process group, then every process carrying the job's token (those that left
    the group): nothing of the job outlives it, and no process holds its event channel any more."""
    kill_group(process.pid)
    process.wait()
    kill_strays(token)


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
    done: threading.Event  # set once the job is over: its channel's reader passes nothing more on


def start_job(job: Job, command: list[str], lines: queue.Queue, span: Span, tag=None, lockstep: bool = False) -> Worker:
    """Start `job`'s worker (`command`, from worker_command), its event channel's lines going to
    `lines` tagged `tag`, the job written on its stdin; with `lockstep`, a control pipe on which it
    waits for its turn before each epoch."""
    log = tempfile.TemporaryFile()
    token = uuid.uuid4().hex
    control_read, control_write = os.pipe() if lockstep else (None, None)
    env = {**worker_variables(job), JOB_TOKEN_VARIABLE: token}
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
    done = threading.Event()
    threading.Thread(target=read_lines, args=(channel, lines, event_line_cap(job), done, tag), daemon=True).start()
    try:
        process.stdin.write(json.dumps(job.to_wire()).encode())
        process.stdin.close()
    except BrokenPipeError:  # the worker died at once: its exit status and log say why
        pass
    control = os.fdopen(control_write, "wb", buffering=0) if control_write is not None else None
    return Worker(job, process, log, token, control, started_at, span, done)


def stop_worker(worker: Worker) -> None:
    """End the job: its worker and every process of it (stop_job), its channel's reader, its control pipe."""
    worker.done.set()
    stop_job(worker.process, worker.token)
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


def follow(process: subprocess.Popen, token: str, lines: queue.Queue, sense: Sense, timeout_s: float) -> Generator:
    """Yield the worker's events from `lines` (read_lines') as they come, each held to the job
    contract and to `sense`; return how the job ended: the worker's `end` once its channel has ended
    or the worker has exited (so a message after it, as the real outcome after a forged end, breaks
    the contract), the node's verdict (timeout, a malformed or impossible event, an overlong line), or
    None when the worker exited without an end (a crash: its exit status says how). The worker's exit
    ends the job even while a process it forked still holds the channel: that process is killed."""
    deadline = time.monotonic() + timeout_s
    end, exited, settle = None, False, math.inf  # settle: when the lines a worker wrote before it exited are all in
    while True:
        now = time.monotonic()
        if now >= settle:
            return end
        if now >= deadline and not exited:  # an end whose channel a stray keeps open still stands
            return end or End("timeout", f"no result within --timeout {timeout_s:g} s; raise --timeout or use fewer epochs")
        try:
            _, item = lines.get(timeout=max(min(settle - now, deadline - now, POLL_S), 0))
        except queue.Empty:
            if not exited and process.poll() is not None:
                exited, settle = True, now + EXIT_GRACE_S
                stop_job(process, token)  # what it forked dies with it, so its channel ends
            continue
        if item is None:  # the channel ended: the worker exited, or closed it after its end
            if end is None:
                try:
                    process.wait(timeout=max(min(settle, now + EXIT_GRACE_S) - now, 0))
                except subprocess.TimeoutExpired:
                    return End("failed", "the worker closed its event channel without reporting how the job ended; see its log")
            return end
        if isinstance(item, Overlong):
            return End("failed", f"the worker sent an event line longer than {item.cap:,} bytes; see its log")
        if end is not None:
            return End("failed", f"the worker's events cannot be true of this job: {RULE_ORDER}: a message after end; see its log")
        if isinstance(item, Torn):
            settle = min(settle, now + EXIT_GRACE_S)  # it died writing: its exit status says how
            continue
        try:
            event = decode_event(item)
            sense.check(event)
        except SenseViolation as exc:
            return End("failed", f"the worker's events cannot be true of this job: {exc}; see its log")
        except MalformedEvent as exc:
            return End("failed", f"the worker sent a malformed event ({exc}); see its log")
        if isinstance(event, End):
            end = event
        else:
            yield event


def execute(job: Job, timeout_s: float) -> Iterator:
    """Run `job` in a fresh worker process and yield its events; the last one is always `end`, carrying
    the outcome, the log's tail and how much CPU other processes used while the job ran."""
    try:
        command = worker_command(job)  # before the clock starts: building an environment is never timed
    except EnvironmentUnavailable as exc:
        yield End("unavailable", str(exc), host=socket.gethostname())
        return
    calib_before = calibrate(job.threads)
    lines: queue.Queue = queue.Queue(QUEUE_LINES)
    worker = start_job(job, command, lines, Span.now())
    try:
        end = yield from follow(worker.process, worker.token, lines, Sense(job), timeout_s)
    finally:
        stop_worker(worker)  # the job is over, or the driver stopped it: nothing of it may outlive it
    end = measured_end(worker, end)
    yield dataclasses.replace(end, calib_before_s=calib_before, calib_after_s=calibrate(job.threads))


def crash_message(returncode: int, log: str) -> str:
    """Why a worker died without reporting: its signal (SIGKILL usually means out of memory) or exit
    status, and the last line it wrote."""
    if returncode < 0:
        name = signal_name(-returncode)
        return f"worker died with {name}" + (" (killed, likely out of memory)" if name == "SIGKILL" else "") + "; see its log"
    lines = [line.strip() for line in log.splitlines() if line.strip()]
    return f"worker exited with status {returncode}: {lines[-1] if lines else 'no output'}; see its log"


def signal_name(number: int) -> str:
    """SIGKILL, SIGSEGV, ...; a signal Python has no name for (a real-time one) by its number."""
    try:
        return signal.Signals(number).name
    except ValueError:
        realtime = f"SIGRTMIN+{number - signal.SIGRTMIN}" if signal.SIGRTMIN <= number <= signal.SIGRTMAX else "unnamed"
        return f"signal {number} ({realtime})"
