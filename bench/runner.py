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

from bench import gemm
from bench.results import append_rows
from bench.worker import EVENT_PREFIX, Job
from impls import backend_spec

THREAD_ENV_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "TF_NUM_INTRAOP_THREADS")


@dataclass(frozen=True)
class Matrix:
    backends: tuple[str, ...]  # registry names, in the order each round visits them
    variants: dict[str, tuple[str, ...]]  # backend -> the variants to run for it
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
        for variant in matrix.variants[backend]
    ]


def thread_env(threads: int) -> dict[str, str]:
    env = dict(os.environ)
    env.update({name: str(threads) for name in THREAD_ENV_VARS})
    env["TF_NUM_INTEROP_THREADS"] = "1"
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return env


def worker_env(job: Job) -> dict[str, str]:
    return {**thread_env(job.threads), **backend_spec(job.backend).env}


@dataclass(frozen=True)
class Floors:
    """GEMM times measured in this run, per (library, device), and the model's shapes."""

    sizes: tuple[int, ...]  # layer widths, input to output
    batch: int  # batch size of the run
    seconds: dict[tuple[str, str], dict[str, float]]  # (library, device) -> {"MxKxN": seconds}

    def epoch_floors(self, library: str, device: str, samples: int) -> tuple[float | None, float | None]:
        """(fastest library's floor, `library`'s floor) for an epoch of `samples` on `device`."""
        measured = {lib: s for (lib, dev), s in self.seconds.items() if dev == device}
        if not measured:
            return None, None
        best = {shape: min(s[shape] for s in measured.values()) for shape in next(iter(measured.values()))}
        own = measured.get(library)
        return (gemm.floor_epoch_s(best, self.sizes, self.batch, samples),
                gemm.floor_epoch_s(own, self.sizes, self.batch, samples) if own else None)


def probe_gemms(directory: Path, sizes: tuple[int, ...], batch: int, devices: tuple[str, ...], threads: int, tf32: bool) -> Floors:
    """Time the model's GEMM shapes in every library present, each in its own process; gemm.csv keeps them."""
    gemms = gemm.step_gemms(sizes, batch)
    shapes = sorted({(g.m, g.k, g.n) for g in gemms})
    seconds = {}
    for device in devices:
        for library in gemm.LIBRARIES:
            request = json.dumps({"library": library, "device": device, "threads": threads, "tf32": tf32, "shapes": shapes})
            result = subprocess.run([sys.executable, "-m", "bench.gemm"], input=request, capture_output=True, text=True,
                                    env=thread_env(threads))
            if result.returncode != 0:
                print(f"GEMM probe: {library} on {device} not measured ({(result.stderr.strip().splitlines() or ['?'])[-1]})",
                      file=sys.stderr)
                continue
            seconds[(library, device)] = json.loads(result.stdout.strip().splitlines()[-1])
            append_rows(directory, "gemm", [
                {"library": library, "device": device, "threads": threads, "kind": g.kind, "layer": g.layer, "m": g.m, "k": g.k,
                 "n": g.n, "seconds": seconds[(library, device)][gemm.key(g)],
                 "gflops": g.flops / seconds[(library, device)][gemm.key(g)] / 1e9}
                for g in gemms
            ])
            print(f"GEMM probe: {library} on {device} measured", file=sys.stderr, flush=True)
    return Floors(sizes=sizes, batch=batch, seconds=seconds)


def read_lines(stream, lines: queue.Queue) -> None:
    for line in stream:
        lines.put(line)
    lines.put(None)


def time_to_target(epochs: list[dict], target: float) -> float | None:
    """Training seconds (evaluation excluded) until test accuracy first reaches `target`."""
    elapsed = 0.0
    for epoch in epochs:
        elapsed += epoch["epoch_s"]
        if epoch["test_acc"] >= target:
            return elapsed
    return None


def summarize(keys: dict, events: list[dict], end: dict, job: Job, floors: Floors | None) -> dict:
    """The runs.csv row: what the epochs measured, whatever the outcome."""
    setup = next((e for e in events if e["type"] == "setup"), {})
    epochs = [e for e in events if e["type"] == "epoch"]
    times = [e["epoch_s"] for e in epochs]
    steady = times[1:] or times
    median = statistics.median(steady) if steady else None
    floor, own_floor = (None, None)
    if floors and median:
        floor, own_floor = floors.epoch_floors(backend_spec(job.backend).gemm_library, keys["device"], setup["samples_per_epoch"])
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
        "target_acc": job.target_acc,
        "time_to_target_s": time_to_target(epochs, job.target_acc),
        "floor_epoch_s": floor,
        "efficiency": floor / median if floor else None,
        "own_floor_epoch_s": own_floor,
        "overhead_efficiency": own_floor / median if own_floor else None,
        "peak_rss_mb": end.get("peak_rss_mb") or (epochs[-1]["peak_rss_mb"] if epochs else None),
        "peak_gpu_mb": end.get("peak_gpu_mb"),
        "framework_version": setup.get("framework_version", ""),
        "threads": job.threads,
    }


def record_epoch(directory: Path, keys: dict, event: dict) -> None:
    append_rows(directory, "epochs", [{**keys, **{k: event[k] for k in ("epoch", "epoch_s", "train_loss", "test_loss", "test_acc", "eval_s")}}])
    step_keys = {k: keys[k] for k in ("run_id", "backend", "variant", "device", "repeat")}
    append_rows(directory, "steps", [
        {**step_keys, "epoch": event["epoch"], "step": step, "loss": loss}
        for step, loss in enumerate(event["step_losses"], start=1)
    ])


def execute(job: Job, directory: Path, timeout_s: float, label: str, floors: Floors | None) -> dict:
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
    row = summarize(keys, events, end, job, floors)
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


def run_matrix(jobs: list[Job], directory: Path, timeout_s: float, floors: Floors | None) -> list[dict]:
    rows = []
    for number, job in enumerate(jobs, start=1):
        label = f"[{number}/{len(jobs)}] {job.backend}/{job.variant} on {job.device}, repeat {job.repeat + 1}"
        print(f"{label}: starting", file=sys.stderr, flush=True)
        rows.append(execute(job, directory, timeout_s, label, floors))
    return rows
