"""What a user asks `framebench run` for (RunRequest: one field per flag, its help the field's comment),
checked before any worker starts: every mistake is one line naming its flag, an absurd matrix is
refused by arithmetic before it is built."""

from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass, field

from framebench.core import registry
from framebench.core.config import Sweep, check_precisions
from framebench.core.seeds import seed_count, seed_ranges
from framebench.driver.executors import EXECUTORS, Executor
from framebench.errors import FrameBenchError

DEVICE_CHOICES = ("cpu", "gpu", "auto", "all")
RUN_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
LARGE_PLAN_JOBS = 1_000  # a plan of more jobs is warned about
MAX_PLAN_JOBS = 100_000  # a plan of more jobs is refused unless --large-plan
PRECISION_SWEPT = "--sweep precision=... sets each job's precision; drop --precision (or sweep another field)"
MAX_WAIT_S = 7 * 24 * 3600.0  # the longest --timeout or --schedule-timeout: a week (a longer wait is a typo, and overflows clocks)


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
    lockstep: bool = False  # run each two jobs that differ only in --env as a pair taking turns epoch by epoch (ABBA): paired timings
    trust_environments: bool = False  # build URL requirements (NAME @ URL) a results directory names (--resume, an existing --run-id)

    def validate(self) -> None:
        """Everything checkable before a worker starts, each mistake naming its flag."""
        for flag, seconds in (("--timeout", self.timeout), ("--schedule-timeout", self.schedule_timeout)):
            if not 0 < seconds <= MAX_WAIT_S:
                raise FrameBenchError(f"{flag} must be a finite number of seconds > 0 and at most {MAX_WAIT_S:g} (a week), got {seconds:g}")
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
            raise FrameBenchError(PRECISION_SWEPT)
        if self.executor not in EXECUTORS:
            raise FrameBenchError(f"unknown executor {self.executor!r}; --executor takes one of: {', '.join(EXECUTORS)}")


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
