"""Runs the benchmark matrix: one fresh worker process per (backend, variant, device, repeat),
round-robin over backends, writing every measured row the moment its event arrives."""

from __future__ import annotations

import dataclasses
import json
import os
import queue
import signal
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from bench.results import append_rows
from bench.worker import EVENT_PREFIX, Job
from impls import backend_spec

THREAD_ENV_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "TF_NUM_INTRAOP_THREADS")


@dataclass(frozen=True)
class Matrix:
    backends: tuple[str, ...]  # registry names, in the order each round visits them
    variants: tuple[str, ...]  # variants to run for every backend
    devices: tuple[str, ...]  # "cpu", "gpu" or "auto"
    repeats: int  # rounds over all backends
    seed: int  # seed of the first repeat
    vary_seed: bool  # repeat r uses seed + r when True, else the same seed every repeat


def plan(matrix: Matrix, template: Job) -> list[Job]:
    """Jobs in round-robin order (A B C, A B C, ...) so a shared machine's drift spreads evenly."""
    return [
        dataclasses.replace(
            template, backend=backend, variant=variant, device=device, repeat=repeat,
            seed=matrix.seed + repeat if matrix.vary_seed else matrix.seed,
        )
        for repeat in range(matrix.repeats)
        for device in matrix.devices
        for backend in matrix.backends
        for variant in matrix.variants
    ]


def worker_env(job: Job) -> dict[str, str]:
    env = dict(os.environ)
    env.update({name: str(job.threads) for name in THREAD_ENV_VARS})
    env["TF_NUM_INTEROP_THREADS"] = "1"
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env.update(backend_spec(job.backend).env)
    return env


def read_lines(stream, lines: queue.Queue) -> None:
    for line in stream:
        lines.put(line)
    lines.put(None)


def summarize(keys: dict, events: list[dict], end: dict, threads: int) -> dict:
    """The runs.csv row: what the epochs measured, whatever the outcome."""
    setup = next((e for e in events if e["type"] == "setup"), {})
    epochs = [e for e in events if e["type"] == "epoch"]
    times = [e["epoch_s"] for e in epochs]
    steady = times[1:] or times
    median = statistics.median(steady) if steady else None
    return {
        **keys,
        "status": end["status"],
        "error": end.get("error", ""),
        "epochs_done": len(epochs),
        "setup_s": setup.get("setup_s"),
        "first_epoch_s": times[0] if times else None,
        "median_epoch_s": median,
        "total_train_s": sum(times) if times else None,
        "samples_per_s": setup["samples_per_epoch"] / median if median else None,
        "final_test_acc": epochs[-1]["test_acc"] if epochs else None,
        "final_test_loss": epochs[-1]["test_loss"] if epochs else None,
        "peak_rss_mb": end.get("peak_rss_mb") or (epochs[-1]["peak_rss_mb"] if epochs else None),
        "framework_version": setup.get("framework_version", ""),
        "threads": threads,
    }


def record_epoch(directory: Path, keys: dict, event: dict) -> None:
    append_rows(directory, "epochs", [{**keys, **{k: event[k] for k in ("epoch", "epoch_s", "train_loss", "test_loss", "test_acc", "eval_s")}}])
    step_keys = {k: keys[k] for k in ("run_id", "backend", "variant", "device", "repeat")}
    append_rows(directory, "steps", [
        {**step_keys, "epoch": event["epoch"], "step": step, "loss": loss}
        for step, loss in enumerate(event["step_losses"], start=1)
    ])


def execute(job: Job, directory: Path, timeout_s: float, label: str) -> dict:
    """Run one job in a fresh process; always returns (and appends) its runs.csv row."""
    log_dir = directory / "logs"
    log_dir.mkdir(exist_ok=True)
    log_path = log_dir / f"{job.backend}-{job.variant}-{job.device}-r{job.repeat}.log"
    keys = job.keys()
    events: list[dict] = []
    end = None
    with log_path.open("a") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "bench.worker"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=log, text=True, env=worker_env(job), start_new_session=True,
        )
        process.stdin.write(json.dumps(dataclasses.asdict(job)))
        process.stdin.close()
        lines: queue.Queue = queue.Queue()
        threading.Thread(target=read_lines, args=(process.stdout, lines), daemon=True).start()
        deadline = time.monotonic() + timeout_s
        while end is None:
            try:
                line = lines.get(timeout=max(deadline - time.monotonic(), 0))
            except queue.Empty:
                os.killpg(process.pid, signal.SIGKILL)
                end = {"status": "timeout", "error": f"no result within --timeout {timeout_s:g} s; raise --timeout or use fewer epochs"}
                break
            if line is None:
                break
            if not line.startswith(EVENT_PREFIX):
                log.write(line)
                continue
            event = json.loads(line[len(EVENT_PREFIX):])
            events.append(event)
            if event["type"] == "start":
                keys["device"] = event["device"]
            elif event["type"] == "epoch":
                record_epoch(directory, keys, event)
                print(f"{label}: epoch {event['epoch']}: {event['epoch_s']:.3f} s, train loss {event['train_loss']:.4f}, "
                      f"test acc {event['test_acc']:.4f}", file=sys.stderr, flush=True)
            elif event["type"] == "end":
                end = event
        returncode = process.wait()
    if end is None:
        end = {"status": "failed", "error": crash_message(returncode, log_path)}
    row = summarize(keys, events, end, job.threads)
    append_rows(directory, "runs", [row])
    print(f"{label}: {row['status']}" + (f" ({row['error']})" if row["error"] else ""), file=sys.stderr, flush=True)
    return row


def crash_message(returncode: int, log_path: Path) -> str:
    """Why a worker died without reporting: its signal (SIGKILL usually means out of memory) or last log line."""
    if returncode < 0:
        name = signal.Signals(-returncode).name
        hint = " (killed, likely out of memory)" if name == "SIGKILL" else ""
        return f"worker died with {name}{hint}; see {log_path}"
    lines = [line.strip() for line in log_path.read_text(errors="replace").splitlines() if line.strip()]
    return f"worker exited with status {returncode}: {lines[-1] if lines else 'no output'}; see {log_path}"


def run_matrix(jobs: list[Job], directory: Path, timeout_s: float) -> list[dict]:
    rows = []
    for number, job in enumerate(jobs, start=1):
        label = f"[{number}/{len(jobs)}] {job.backend}/{job.variant} on {job.device}, repeat {job.repeat + 1}"
        print(f"{label}: starting", file=sys.stderr, flush=True)
        rows.append(execute(job, directory, timeout_s, label))
    return rows
