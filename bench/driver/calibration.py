"""The machine measured beside every job: a short fixed workload timed just before and just after it,
and the share of CPU time the hypervisor stole meanwhile. A shared host can run at two speeds for tens
of seconds at a time, a change no process on this machine causes or sees; a job timed in the slow
state looks like a regression unless the machine's own speed is recorded with it."""

from __future__ import annotations

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


def cpu_counters() -> tuple[int, int] | None:
    """(steal ticks, all ticks) of the whole machine since boot (None where /proc/stat is absent)."""
    try:
        with open("/proc/stat") as handle:
            ticks = [int(v) for v in handle.readline().split()[1:9]]
    except (OSError, ValueError):
        return None
    return ticks[7], sum(ticks)


def steal_fraction(before: tuple[int, int] | None, after: tuple[int, int] | None) -> float | None:
    """Share of the machine's CPU time the hypervisor gave to other guests between two counters."""
    if before is None or after is None or after[1] <= before[1]:
        return None
    return (after[0] - before[0]) / (after[1] - before[1])
