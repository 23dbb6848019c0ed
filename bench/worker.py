"""One benchmark run in its own process: `python -m bench.worker` reads a job (JSON) on stdin and
reports events as prefixed JSON lines on stdout, so frameworks never share a process, a thread
pool or a GPU allocator, and whatever a framework prints cannot be mistaken for a result."""

from __future__ import annotations

import dataclasses
import json
import sys
import time
import traceback
from dataclasses import dataclass

from bench.config import PRESETS, config_from_dict
from bench.data import load_dataset
from bench.errors import FrameBenchError
from bench.harness import DivergedError, initial_weights, peak_rss_mb, train_epochs

EVENT_PREFIX = "@framebench-event "


@dataclass(frozen=True)
class Job:
    run_id: str  # results directory name
    backend: str  # registry name
    variant: str  # implementation variant of the backend
    device: str  # "cpu" or "gpu"
    dataset: str  # dataset name
    data_dir: str | None  # --data-dir, if given
    preset: str  # preset the configuration started from
    config: dict  # {"model": ..., "train": ...} as dataclasses.asdict gives them
    repeat: int  # 0-based repeat number
    seed: int  # seed of weights and batch order
    threads: int  # CPU threads for every library in the process
    tf32: bool  # whether GPU float32 matrix products may use TensorFloat-32
    target_acc: float  # test accuracy for the time-to-accuracy column

    def keys(self) -> dict:
        """The identifying columns every table row of this run starts with."""
        return {k: getattr(self, k) for k in ("run_id", "backend", "variant", "device", "dataset", "preset", "repeat", "seed")}


def emit(event: dict) -> None:
    print(EVENT_PREFIX + json.dumps(event), flush=True)


def run_job(job: Job) -> None:
    """Run one job, emitting setup, epoch and end events; every outcome ends in exactly one `end`."""
    from impls import load_backend

    model, train = config_from_dict(job.config)
    try:
        cls = load_backend(job.backend)
    except FrameBenchError as exc:
        emit({"type": "end", "status": "unavailable", "error": str(exc)})
        return
    if job.device == "auto":
        job = dataclasses.replace(job, device="gpu" if cls.available("gpu")[0] else "cpu")
    emit({"type": "start", "device": job.device})
    ok, reason = cls.available(job.device)
    if not ok:
        emit({"type": "end", "status": "unavailable", "error": reason})
        return
    reason = unsupported_reason(cls, model, train, job.variant, job.device)
    if reason:
        emit({"type": "end", "status": "unsupported", "error": reason})
        return
    classifier = None
    try:
        cls.configure(threads=job.threads, tf32=job.tf32)
        data = load_dataset(job.dataset, data_dir=job.data_dir, allow_download=False)
        start = time.perf_counter()
        classifier = cls(
            model=model, train=train, input_size=data.input_size, num_classes=data.num_classes,
            device=job.device, seed=job.seed, variant=job.variant,
        )
        classifier.set_weights(initial_weights(classifier.sizes, model, job.seed))
        classifier.prepare(data.x_train, data.y_train)
        classifier.sync()
        emit({"type": "setup", "setup_s": time.perf_counter() - start, "framework_version": classifier.framework_version(),
              "samples_per_epoch": samples_per_epoch(train, len(data.y_train))})
        for result in train_epochs(classifier, data, model, train, job.seed):
            event = dataclasses.asdict(result)
            event["step_losses"] = result.step_losses.tolist()
            emit({"type": "epoch", **event, "peak_rss_mb": peak_rss_mb()})
        end = {"status": "ok", "error": ""}
    except DivergedError as exc:
        end = {"status": "diverged", "error": str(exc)}
    except Exception as exc:  # recorded in runs.csv, traceback kept in the run's log
        traceback.print_exc()
        end = {"status": "failed", "error": f"{type(exc).__name__}: {exc}"}
    gpu_mb = classifier.peak_gpu_memory_mb() if classifier is not None else None
    emit({"type": "end", **end, "peak_rss_mb": peak_rss_mb(), "peak_gpu_mb": gpu_mb})


def samples_per_epoch(train, n_train: int) -> int:
    return train.steps_per_epoch * train.batch_size if train.sampling == "with_replacement" else n_train


def unsupported_reason(cls, model, train, variant: str, device: str) -> str | None:
    if variant not in cls.variants:
        return f"variant {variant!r} is not implemented (has: {', '.join(cls.variants)})"
    return cls.lacks(model, train, variant, device)


def describe(name: str) -> dict:
    """What `framebench list` shows for one backend, gathered in that backend's own process."""
    from bench.config import resolve
    from impls import load_backend

    try:
        cls = load_backend(name)
    except FrameBenchError as exc:
        return {"name": name, "error": str(exc)}
    presets = {}
    for preset in PRESETS:
        model, train = resolve(preset, {}, {})
        presets[preset] = cls.lacks(model, train, "default", "cpu") or "ok"
    return {
        "name": name,
        "variants": list(cls.variants),
        "devices": {device: cls.available(device)[1] or "ok" for device in ("cpu", "gpu")},
        "adam_form": cls.adam_form,
        "presets": presets,
    }


def main() -> None:
    if sys.argv[1:2] == ["--describe"]:
        emit(describe(sys.argv[2]))
        return
    run_job(Job(**json.loads(sys.stdin.read())))


if __name__ == "__main__":
    main()
