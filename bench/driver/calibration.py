"""The machine measured beside every job: a short fixed workload timed just before and just after it,
and the share of CPU time the hypervisor stole meanwhile. A shared host can run at two speeds for tens
of seconds at a time, a change no process on this machine causes or sees; a job timed in the slow
state looks like a regression unless the machine's own speed is recorded with it."""

from __future__ import annotations

import os
import statistics
import time

import numpy as np
from threadpoolctl import threadpool_limits

GEMM_SIZE = 192  # side of the float32 matrices multiplied: cache-resident, so it times the cores
GEMM_REPEATS = 8  # products per trial
STREAM_ELEMENTS = 4_000_000  # float32 values copied per trial (16 MB, beyond most caches): it times memory
TRIALS = 5  # the calibration is the median trial, so one interruption does not move it


def calibrate(threads: int) -> float:
    """Seconds of one trial of a fixed GEMM + memory-copy workload on `threads` BLAS threads (median of
    TRIALS; well under a second in all). Only ratios between calibrations mean anything."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((GEMM_SIZE, GEMM_SIZE), dtype=np.float32)
    product = np.empty_like(a)
    source = np.ones(STREAM_ELEMENTS, dtype=np.float32)
    target = np.empty_like(source)
    trials = []
    with threadpool_limits(limits=max(threads, 1)):
        for _ in range(TRIALS):
            started = time.perf_counter()
            for _ in range(GEMM_REPEATS):
                np.matmul(a, a, out=product)
            np.copyto(target, source)
            trials.append(time.perf_counter() - started)
    return statistics.median(trials)


IDLE, IOWAIT, STEAL = 3, 4, 7  # positions in cpu_ticks()


def cpu_ticks() -> tuple[int, ...] | None:
    """The whole machine's CPU time since boot by kind (user, nice, system, idle, iowait, irq, softirq,
    steal), in clock ticks, from /proc/stat (None where it is absent): one reading gives both the
    busy time and the steal."""
    try:
        with open("/proc/stat") as handle:
            return tuple(int(v) for v in handle.readline().split()[1:9])
    except (OSError, ValueError):
        return None


def busy_seconds(before: tuple[int, ...] | None, after: tuple[int, ...] | None) -> float | None:
    """CPU seconds every process of the machine used between two readings (idle and iowait left out)."""
    if before is None or after is None:
        return None
    busy = [a - b for kind, (a, b) in enumerate(zip(after, before, strict=True)) if kind not in (IDLE, IOWAIT)]
    return sum(busy) / os.sysconf("SC_CLK_TCK")


def steal_fraction(before: tuple[int, ...] | None, after: tuple[int, ...] | None) -> float | None:
    """Share of the machine's CPU time the hypervisor gave to other guests between two readings."""
    if before is None or after is None or sum(after) <= sum(before):
        return None
    return (after[STEAL] - before[STEAL]) / (sum(after) - sum(before))


def process_cpu_seconds(pid: int) -> float | None:
    """CPU seconds a live process and its waited-for children used so far, from /proc/PID/stat (None
    where it is gone): a lockstep worker's share while its partner is still running."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            fields = handle.read().rpartition(")")[2].split()
    except OSError:
        return None
    utime, stime, cutime, cstime = (int(v) for v in fields[11:15])  # fields 14-17 of proc(5), counted after the name
    return (utime + stime + cutime + cstime) / os.sysconf("SC_CLK_TCK")
