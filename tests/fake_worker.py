"""A stand-in for `python -m framebench.driver.worker` that speaks its wire (the job on stdin, events on
the event channel, GO lines on the control pipe) without training anything, for the lockstep tests.

Each side behaves as $FAKE_PAIR_<ENV> says (ENV: its job's environment): ok (the default),
crash@N (dies after its turn for epoch N begins), hang@N (never ends epoch N), unannounced (sends an
epoch before its first turn). Every epoch lasts $FAKE_PAIR_EPOCH_S seconds; with $FAKE_PAIR_TRACE
set, each epoch appends "ENV EPOCH BEGIN END" (monotonic clock, shared by every process) to that file,
and each worker its pid to $FAKE_PAIR_TRACE.pids. Without a control pipe it runs its epochs straight
through (a job alone)."""

from __future__ import annotations

import json
import os
import sys
import time

from framebench.store.events import End, Epoch, Setup, Start, to_wire


def main() -> None:
    channel = os.fdopen(int(os.environ["FRAMEBENCH_EVENT_FD"]), "w")
    control_fd = os.environ.get("FRAMEBENCH_CONTROL_FD")
    control = os.fdopen(int(control_fd), "rb") if control_fd else None
    job = json.loads(sys.stdin.read())
    env = job["point"]["env"]
    mode, _, at = os.environ.get(f"FAKE_PAIR_{env}", "ok").partition("@")
    trace = os.environ.get("FAKE_PAIR_TRACE")
    if trace:
        with open(trace + ".pids", "a") as pids:
            pids.write(f"{os.getpid()}\n")

    def emit(event) -> None:
        channel.write(json.dumps(to_wire(event)) + "\n")
        channel.flush()

    emit(Start())
    emit(Setup(0.01, "fake", 10, implementation=f"fake-{env}"))
    if mode == "unannounced":
        emit(Epoch(1, 0.0, [1.0], 1.0, 1.0, 0.5, 0.0, 1.0))
    for epoch in range(1, job["config"]["train"]["epochs"] + 1):
        if control is not None and control.readline() != b"go\n":
            sys.exit("no GO")
        begin = time.monotonic()
        if mode == "crash" and epoch == int(at):
            os._exit(3)
        if mode == "hang" and epoch == int(at):
            time.sleep(600)
        time.sleep(float(os.environ.get("FAKE_PAIR_EPOCH_S", "0.01")))
        end = time.monotonic()
        if trace:
            with open(trace, "a") as lines:
                lines.write(f"{env} {epoch} {begin} {end}\n")
        emit(Epoch(epoch, end - begin, [1.0 / epoch], 1.0 / epoch, 1.0 / epoch, 0.5, 0.001, 1.0))
    emit(End("ok", cpu_s=0.01, compute_dtype="float32"))


if __name__ == "__main__":
    main()
