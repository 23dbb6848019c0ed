"""Where an epoch's time goes, op by op: one epoch of each (backend, precision) under its framework's own
profiler (`Classifier.profile_epoch`), each in a fresh process with the run's thread count and the
environment a benchmark job of it gets, as JSON.

    framebench ops --backends tf,keras,jax,torch --precision fp32,bf16 \\
        --preset scaling --batch-size 1024 --threads 1 --output ops.json

A process trains the harness's first epoch untimed (compilation, warm-up), checks that its products
ran in the precision's dtype, then profiles the second. Its answer is a file of its own, so nothing a
framework prints can be mistaken for it. A backend that cannot run, cannot train the precision or has
no profiler is a profile with that status and the reason; `framebench.reports.opprofile` summarises.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from framebench.core import registry
from framebench.core.config import PRESETS, check_precisions, config_from_dict, precision_mismatch, resolve
from framebench.core.harness import epoch_order, initial_weights, steps_in
from framebench.driver.node import device_variables
from framebench.errors import FrameBenchError
from framebench.reports.markdown import write_output

DEVICE = "cpu"  # the profiles are of CPU epochs: a framework's host-side trace is where a CPU epoch's time goes
PROFILED_EPOCH = 1  # the harness's epoch that is profiled (0-based); epoch 0 compiles and warms up
TIMEOUT_S = 900.0  # one profile's process is killed after this long


@dataclass(frozen=True)
class ProfileRequest:
    backend: str  # registry backend name
    variant: str  # registry variant name
    precision: str  # framebench.core.config.PRECISIONS key
    config: dict  # {"model": ..., "train": ...} as dataclasses.asdict gives them
    dataset: str  # dataset name
    data_dir: str | None  # where the dataset's files are (None: the documented resolution)
    threads: int  # CPU threads for every library
    seed: int  # initial weights and batch order, as a run's
    answer: str  # the file the child writes its Profile to


@dataclass(frozen=True)
class Profile:
    backend: str  # registry backend name
    variant: str  # registry variant name
    precision: str  # the precision it trained at
    batch_size: int  # samples per step
    steps: int  # steps in the profiled epoch
    threads: int  # CPU threads it ran with
    status: str  # "ok", "unavailable", "unsupported" (the precision, or no profiler) or "failed"
    reason: str = ""  # why not ok
    epoch_s: float | None = None  # wall time of the profiled epoch, the profiler's own cost included
    ops: list[dict] = field(default_factory=list)  # framebench.core.opprofile.OpTime rows, largest first


def profile_one(request: ProfileRequest) -> Profile:
    """In this process: build the backend as a benchmark job does, warm it up, profile one epoch."""
    model, train = config_from_dict(request.config)
    common = {"backend": request.backend, "variant": request.variant, "precision": request.precision, "threads": request.threads}
    common |= {"batch_size": train.batch_size, "steps": 0}
    cls = registry.load(registry.lookup(request.backend, request.variant))
    ok, reason = cls.available(DEVICE)
    if not ok:
        return Profile(**common, status="unavailable", reason=reason)
    if reason := cls.lacks(model, train) or cls.lacks_precision(request.precision, DEVICE):
        return Profile(**common, status="unsupported", reason=reason)
    from framebench.core.data import load_dataset

    cls.configure(threads=request.threads)
    data = load_dataset(request.dataset, data_dir=request.data_dir, allow_download=False)
    classifier = cls(
        model=model,
        train=train,
        input_size=data.input_size,
        num_classes=data.num_classes,
        device=DEVICE,
        seed=request.seed,
        precision=request.precision,
    )
    classifier.set_weights(initial_weights(classifier.sizes, model, request.seed))
    classifier.prepare(data.x_train, data.y_train)
    classifier.train_epoch(epoch_order(train, len(data.y_train), request.seed, 0), train.batch_size)
    classifier.sync()
    if mismatch := precision_mismatch(request.precision, classifier.compute_dtype()):
        return Profile(**common, status="failed", reason=mismatch)
    order = epoch_order(train, len(data.y_train), request.seed, PROFILED_EPOCH)
    common["steps"] = steps_in(order, train.batch_size)
    start = time.perf_counter()
    try:
        ops = classifier.profile_epoch(order, train.batch_size)
    except FrameBenchError as exc:  # the backend declares it has no profiler
        return Profile(**common, status="unsupported", reason=str(exc))
    return Profile(**common, status="ok", epoch_s=time.perf_counter() - start, ops=[dataclasses.asdict(op) for op in ops])


def child_main() -> None:
    """`python -m framebench.driver.opprofile`: a ProfileRequest on stdin, the Profile into its answer file."""
    request = ProfileRequest(**json.loads(sys.stdin.read()))
    Path(request.answer).write_text(json.dumps(dataclasses.asdict(profile_one(request))))


def run_child(request: ProfileRequest, timeout_s: float) -> Profile:
    """One request in a fresh process with the job environment of its entry; a crash or a hang is a failed profile."""
    entry = registry.lookup(request.backend, request.variant)
    _, train = config_from_dict(request.config)
    failed = Profile(request.backend, request.variant, request.precision, train.batch_size, 0, request.threads, "failed")
    env = {**device_variables(DEVICE, request.threads), **entry.variables}
    try:
        result = subprocess.run(
            [sys.executable, "-m", "framebench.driver.opprofile"],
            input=json.dumps(dataclasses.asdict(request)),
            capture_output=True,
            text=True,
            errors="replace",
            env=env,
            timeout=timeout_s,
        )
    except subprocess.TimeoutExpired:
        return dataclasses.replace(failed, reason=f"no profile within {timeout_s:g} s, killed")
    answer = Path(request.answer)
    if result.returncode != 0 or not answer.exists():
        return dataclasses.replace(failed, reason=(result.stderr.strip().splitlines() or ["no output"])[-1][:500])
    return Profile(**json.loads(answer.read_text()))


def profiles(
    entries: list[tuple[str, str]],
    precisions: list[str],
    preset: str,
    train_overrides: dict,
    *,
    threads: int,
    dataset: str | None,
    data_dir: str | None,
) -> list[Profile]:
    """Every (entry, precision), one fresh process each, in that order; progress on stderr."""
    model, train = resolve(preset, {}, train_overrides)
    config = {"model": dataclasses.asdict(model), "train": dataclasses.asdict(train)}
    results = []
    with tempfile.TemporaryDirectory() as folder:
        for backend, variant in entries:
            for precision in precisions:
                answer = str(Path(folder) / f"{len(results)}.json")
                request = ProfileRequest(
                    backend, variant, precision, config, dataset or PRESETS[preset].dataset, data_dir, threads, 0, answer
                )
                profile = run_child(request, TIMEOUT_S)
                print(f"{backend}:{variant} {precision}: {profile.status} {profile.reason}".rstrip(), file=sys.stderr, flush=True)
                results.append(profile)
    return results


def parse_entries(text: str) -> list[tuple[str, str]]:
    """'tf,keras:auto' -> [("tf", "default"), ("keras", "auto")], each looked up in the registry."""
    entries = []
    for name in filter(None, (part.strip() for part in text.split(","))):
        backend, _, variant = name.partition(":")
        entries.append((backend, registry.lookup(backend, variant or "default").variant))
    if not entries:
        raise FrameBenchError("--backends takes a comma list of backend[:variant] names (see `framebench list`)")
    return entries


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """`framebench ops`'s flags."""
    parser.add_argument("--backends", required=True, help="comma list of backend[:variant] (see `framebench list`)")
    parser.add_argument("--precision", default="fp32,bf16", help="comma list of precisions (default fp32,bf16)")
    parser.add_argument("--preset", default="mlp", choices=list(PRESETS), help="the configuration, as `framebench run --preset`")
    parser.add_argument("--batch-size", type=int, default=None, help="the preset's batch size replaced")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads for every library (default 1)")
    parser.add_argument("--dataset", default=None, help="default: the preset's")
    parser.add_argument("--data-dir", default=None, help="where the dataset's files are (default: $FRAMEBENCH_DATA_DIR, the cache)")
    parser.add_argument("--output", default=None, help="the JSON file to write (default: stdout)")


def run_ops(args: argparse.Namespace) -> int:
    """`framebench ops`: the profiles as JSON, on stdout or into --output."""
    if args.threads < 1:
        raise FrameBenchError("--threads must be at least 1")
    overrides = {"batch_size": args.batch_size} if args.batch_size is not None else {}
    entries, precisions = parse_entries(args.backends), check_precisions(args.precision, "--precision")
    found = profiles(entries, precisions, args.preset, overrides, threads=args.threads, dataset=args.dataset, data_dir=args.data_dir)
    if args.output is None:
        sys.stdout.write(to_json(found))
    else:
        write_output(args.output, "--output", to_json(found))
    return 0


def to_json(found: list[Profile]) -> str:
    return json.dumps([dataclasses.asdict(p) for p in found], indent=1) + "\n"


if __name__ == "__main__":  # the child of run_child: python -m framebench.driver.opprofile --child
    child_main()
