"""One benchmark run in its own process: `python -m framebench.driver.worker` reads a job (JSON) on stdin and
reports events as JSON lines on its event channel, a pipe the node opened for it alone (file
descriptor $FRAMEBENCH_EVENT_FD), so frameworks never share a process, a thread pool or a GPU
allocator. stdout and stderr are only the job's log: whatever a framework or backend prints there,
in whatever bytes, cannot be mistaken for a result.

In lockstep (framebench.driver.lockstep) the node passes a second pipe, the control pipe
($FRAMEBENCH_CONTROL_FD, read here): before each epoch, outside the epoch's clock, the worker waits
for a GO line on it, so two workers alive at once take turns epoch by epoch. `--protocol` prints
the version of this wire (store.events.PROTOCOL_VERSION): a driver runs only workers that speak its own."""

from __future__ import annotations

import ctypes
import dataclasses
import json
import os
import resource
import signal
import sys
import time
import traceback

from framebench.core import registry
from framebench.core.config import config_from_dict, precision_mismatch, samples_per_epoch
from framebench.core.data import load_dataset
from framebench.core.harness import DivergedError, initial_weights, peak_rss_mb, train_epochs
from framebench.errors import FrameBenchError
from framebench.store.events import DRIVER_OWNED, PROTOCOL_VERSION, End, Epoch, Evaluation, Setup, Start, to_wire
from framebench.store.job import Job
from framebench.store.schema import EPOCH_FIELDS

CHANNEL_VARIABLE = "FRAMEBENCH_EVENT_FD"  # the write end of the event channel, set by the node
CONTROL_VARIABLE = "FRAMEBENCH_CONTROL_FD"  # the read end of the control pipe, set by the node in lockstep only
GO = b"go\n"  # the control pipe's one message: run the next epoch
JOB_TOKEN_VARIABLE = "FRAMEBENCH_JOB"  # marks every process of the job, so the node finds those that left its process group
PARENT_PID_VARIABLE = "FRAMEBENCH_PARENT_PID"  # the process that started this worker; the worker dies with it
PR_SET_PDEATHSIG = 1  # Linux prctl option: signal this process when its parent dies


channel = None  # the event channel, opened by main() (a text file on the node's pipe)


def open_channel():
    """The event channel the node passed, kept from this process's children: a process a backend
    starts never holds it (nor learns its number from the environment)."""
    number = os.environ.pop(CHANNEL_VARIABLE, None)
    if number is None:
        sys.exit(f"framebench.driver.worker is started by framebench, which passes ${CHANNEL_VARIABLE}")
    fd = int(number)
    os.set_inheritable(fd, False)
    return os.fdopen(fd, "w", encoding="utf-8")


def open_control():
    """The control pipe's read end where the node passed one (lockstep), kept from this process's
    children like the event channel; None otherwise."""
    number = os.environ.pop(CONTROL_VARIABLE, None)
    if number is None:
        return None
    fd = int(number)
    os.set_inheritable(fd, False)
    return os.fdopen(fd, "rb")


def turn_taker(control):
    """The harness's `before_epoch` for a worker in lockstep: block until the node says GO. A closed
    pipe means the node is gone; anything else on it is not this protocol's."""

    def wait_for_turn(epoch: int) -> None:
        message = control.readline()
        if not message:
            sys.exit(f"the node closed the control pipe before epoch {epoch}")
        if message != GO:
            raise FrameBenchError(f"the control pipe sent {message[:40]!r} before epoch {epoch}, not {GO!r}")

    return wait_for_turn


def send(message: dict) -> None:
    channel.write(json.dumps(message) + "\n")
    channel.flush()


def emit(event) -> None:
    send(to_wire(event))


def die_with_parent() -> None:
    """Ask Linux to kill this worker if the process that started it dies (a driver killed with -9
    must not leave a benchmark running); exit at once if that parent is already gone."""
    parent = int(os.environ.get(PARENT_PID_VARIABLE, "0"))
    if not parent or not sys.platform.startswith("linux"):
        return
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:
        sys.exit("the process that started this worker is gone")


def cpu_seconds() -> float:
    """CPU time of this process and its waited-for children, to tell its own load from other processes'."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def run_job(job: Job, before_epoch=None) -> None:
    """Run one job, emitting start, setup, epoch and end events; every outcome ends in exactly one `end`.
    `before_epoch` (lockstep) runs before each epoch, outside its clock."""
    model, train = config_from_dict(job.config)
    emit(Start())
    try:
        entry = registry.lookup(job.backend, job.variant)
        cls = registry.load(entry)
    except FrameBenchError as exc:
        emit(End("unavailable", str(exc), cpu_s=cpu_seconds()))
        return
    ok, reason = cls.available(job.device)
    if not ok:
        emit(End("unavailable", reason, cpu_s=cpu_seconds()))
        return
    reason = cls.lacks(model, train) or cls.lacks_precision(job.precision, job.device)
    if reason:
        emit(End("unsupported", reason, cpu_s=cpu_seconds()))
        return
    classifier, compute_dtype = None, ""
    try:
        cls.configure(threads=job.threads)
        data = load_dataset(job.dataset, data_dir=job.data_dir, allow_download=False)
        start = time.perf_counter()
        classifier = cls(
            model=model,
            train=train,
            input_size=data.input_size,
            num_classes=data.num_classes,
            device=job.device,
            seed=job.seed_number,
            precision=job.precision,
        )
        classifier.set_weights(initial_weights(classifier.sizes, model, job.seed_number))
        classifier.prepare(data.x_train, data.y_train)
        classifier.sync()
        samples = samples_per_epoch(train, len(data.y_train))
        emit(Setup(time.perf_counter() - start, classifier.framework_version(), samples, implementation=entry.implementation()))
        for result in train_epochs(classifier, data, model, train, job.seed_number, before_epoch):
            if not compute_dtype:  # verified once, after the first epoch: a precision that did not take effect measures nothing
                compute_dtype = classifier.compute_dtype()
                if mismatch := precision_mismatch(job.precision, compute_dtype):
                    raise FrameBenchError(mismatch)
            for evaluation in result.evaluations:
                emit(Evaluation(**dataclasses.asdict(evaluation)))
            measured = {name: getattr(result, name) for name in EPOCH_FIELDS if name not in DRIVER_OWNED}
            emit(Epoch(**measured, step_losses=result.step_losses.tolist(), peak_rss_mb=peak_rss_mb()))
        status, error = "ok", ""
    except DivergedError as exc:
        status, error = "diverged", str(exc)
    except Exception as exc:  # recorded in runs.csv, traceback kept in the run's log
        traceback.print_exc()
        status, error = "failed", f"{type(exc).__name__}: {exc}".splitlines()[0]
    gpu_mb = classifier.peak_gpu_memory_mb() if classifier is not None else None
    emit(End(status, error, peak_rss_mb=peak_rss_mb(), peak_gpu_mb=gpu_mb, cpu_s=cpu_seconds(), compute_dtype=compute_dtype))


def describe(backend: str, variant: str) -> dict:
    """What `framebench list` shows for one entry, gathered in that entry's own process."""
    from framebench.core.config import PRECISIONS, PRESETS

    entry = registry.lookup(backend, variant)
    try:
        cls = registry.load(entry)
    except FrameBenchError as exc:
        return {"error": str(exc)}
    return {
        "devices": {
            device: (cls.available(device)[1] or "ok") if device in entry.devices else "not supported" for device in registry.DEVICES
        },
        "adam_form": cls.adam_form,
        "presets": {name: cls.lacks(preset.model, preset.train) or "ok" for name, preset in PRESETS.items()},
        "precisions": {
            device: {p: cls.lacks_precision(p, device) or "ok" for p in PRECISIONS}
            for device in registry.DEVICES
            if device in entry.devices
        },
    }


def main() -> None:
    global channel
    if sys.argv[1:2] == ["--protocol"]:
        print(PROTOCOL_VERSION)
        return
    die_with_parent()
    channel = open_channel()
    with channel:  # closed after the last message: the node takes the job as ended then, not once the interpreter is done
        if sys.argv[1:2] == ["--describe"]:
            send(describe(sys.argv[2], sys.argv[3]))
            return
        control = open_control()
        run_job(Job.from_wire(json.loads(sys.stdin.read())), turn_taker(control) if control else None)


if __name__ == "__main__":
    main()
