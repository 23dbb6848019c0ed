"""The hardware limit, measured in the same run: GEMM time at the model's own shapes (framebench.core.flops)
and in the run's precision (float32; TF32 products; bfloat16 or float16 operands for mixed precision),
per library, in a fresh process per library with the run's thread count, on every node that runs jobs.
Each shape's time is the fastest of ROUNDS rounds (the floor is a best case). The probes run at the
start and again at the end of a matrix; framebench.reports.floors turns them into floors and efficiencies.

`python -m framebench.driver.probe` is one library's probe process: it reads {library, device, threads,
precision, shapes} as JSON on stdin and prints {shape: seconds}."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from dataclasses import dataclass

from framebench.core import registry
from framebench.core.config import PRECISIONS
from framebench.core.flops import key, step_gemms
from framebench.driver.node import device_variables, kill_group

ROUNDS = 5  # timed rounds per shape; the fastest is kept (the floor is a best case)
MIN_ROUND_S = 0.02  # each round repeats the GEMM until it lasts at least this long
PROBE_TIMEOUT_S = 600.0  # the longest one library's probe process runs (a framework may hang on import), less if --timeout is


@dataclass(frozen=True)
class ProbeRequest:
    device: str  # "cpu" or "gpu"
    threads: int  # CPU threads, as the jobs it stands for use
    precision: str  # of the jobs it stands for: the GEMMs run in its compute dtype (framebench.core.config.PRECISIONS)
    sizes: tuple[int, ...]  # layer widths whose GEMMs to time
    batch: int  # batch size of those GEMMs
    timeout_s: float  # the run's --timeout: one library's probe never holds the run longer than one job may


def probe_one(request: str, env: dict[str, str], timeout_s: float) -> tuple[dict, str]:
    """One library's timings ({shape key: seconds}) from its own process (killed with whatever it
    started after `timeout_s`), or why there are none."""
    process = subprocess.Popen(
        [sys.executable, "-m", "framebench.driver.probe"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        errors="replace",
        env=env,
        start_new_session=True,
    )
    try:
        stdout, stderr = process.communicate(request, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return {}, f"no answer within {timeout_s:g} s, killed"
    finally:
        kill_group(process.pid)
        process.communicate()
    if process.returncode != 0:
        return {}, (stderr.strip().splitlines() or ["no output"])[-1]
    try:
        seconds = json.loads(stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        return {}, "the probe printed no timings"
    if not isinstance(seconds, dict):
        return {}, "the probe printed no timings"
    return seconds, ""


def probe(
    libraries: tuple[str, ...],
    device: str,
    threads: int,
    precision: str,
    sizes: tuple[int, ...],
    batch: int,
    env: dict[str, str],
    timeout_s: float = math.inf,
) -> tuple[list[dict], list[str]]:
    """Time one step's GEMMs in each library (a process each, given at most `timeout_s` and never more
    than PROBE_TIMEOUT_S) on this node: (gemm.csv rows without node/sweep/probe columns, one line per
    library that could not be measured)."""
    gemms = step_gemms(sizes, batch)
    shapes = sorted({(g.m, g.k, g.n) for g in gemms})
    rows, skipped = [], []
    for library in libraries:
        request = json.dumps({"library": library, "device": device, "threads": threads, "precision": precision, "shapes": shapes})
        seconds, failure = probe_one(request, env, min(timeout_s, PROBE_TIMEOUT_S))
        if failure:
            skipped.append(f"{library} on {device}: {failure}")
            continue
        rows += [
            {
                "library": library,
                "device": device,
                "precision": precision,
                "threads": threads,
                "kind": g.kind,
                "layer": g.layer,
                "m": g.m,
                "k": g.k,
                "n": g.n,
                "seconds": seconds[key(g)],
                "gflops": g.flops / seconds[key(g)] / 1e9,
            }
            for g in gemms
        ]
    return rows, skipped


def run_probe(request: ProbeRequest) -> tuple[list[dict], list[str]]:
    """Time the request's GEMMs in every library here, in the process variables its jobs would have."""
    return probe(
        tuple(registry.GEMM_LIBRARIES),
        request.device,
        request.threads,
        request.precision,
        request.sizes,
        request.batch,
        device_variables(request.device, request.threads),
        request.timeout_s,
    )


def timer(library: str, device: str, dtype: str):
    """A function (m, k, n) -> (call, sync) of one (m x k) @ (k x n) with `dtype` operands ("float32",
    "bfloat16" or "float16", as the framework names it) in `library` on `device`."""
    import numpy as np

    rng = np.random.default_rng(0)
    operands = lambda m, k, n: (rng.random((m, k), dtype=np.float32), rng.random((k, n), dtype=np.float32))  # noqa: E731
    if library == "numpy":

        def run(m, k, n):
            a, b = operands(m, k, n)
            out = np.empty((m, n), np.float32)
            return lambda: np.matmul(a, b, out=out), lambda: None
    elif library == "torch":
        import torch

        target = torch.device("cuda" if device == "gpu" else "cpu")
        sync = torch.cuda.synchronize if device == "gpu" else (lambda: None)

        def run(m, k, n):
            a, b = (torch.from_numpy(x).to(target, getattr(torch, dtype)) for x in operands(m, k, n))
            out = torch.empty((m, n), device=target, dtype=a.dtype)
            return lambda: torch.mm(a, b, out=out), sync
    elif library == "tf":
        import tensorflow as tf

        def run(m, k, n):
            with tf.device("/GPU:0" if device == "gpu" else "/CPU:0"):
                a, b = (tf.cast(tf.constant(x), dtype) for x in operands(m, k, n))
            last = [None]  # waiting for the last product waits for all: one stream, in order

            def call():
                last[0] = tf.linalg.matmul(a, b)

            return call, lambda: last[0].numpy()
    else:
        import jax

        target = jax.devices("gpu" if device == "gpu" else "cpu")[0]
        # "jax": the product as framebench's jax backend runs it, 16-bit operands accumulating into an
        # fp32 result; "jnp.matmul": as Keras's JAX backend runs it, a result in the operands' dtype
        # (XLA:CPU runs a 16-bit result in fp32, converting the operands first).
        if library == "jnp.matmul":
            matmul = jax.jit(jax.numpy.matmul)
        else:
            matmul = jax.jit(lambda a, b: jax.lax.dot(a, b, preferred_element_type=np.float32))

        def run(m, k, n):
            a, b = (jax.device_put(x.astype(dtype), target) for x in operands(m, k, n))
            if device == "cpu":  # XLA:CPU may run queued independent products side by side: wait for each
                return lambda: matmul(a, b).block_until_ready(), lambda: None
            last = [None]

            def call():
                last[0] = matmul(a, b)

            return call, lambda: last[0].block_until_ready()

    return run


def measure(library: str, device: str, dtype: str, shapes: list[tuple[int, int, int]]) -> dict[str, float]:
    """Fastest of ROUNDS rounds per shape, each round long enough for the clock to be exact."""
    make = timer(library, device, dtype)
    seconds = {}
    for m, k, n in shapes:
        call, sync = make(m, k, n)
        for _ in range(3):
            call()
        sync()
        start, repeats = time.perf_counter(), 0
        while time.perf_counter() - start < MIN_ROUND_S:
            call()
            repeats += 1
        sync()
        best = float("inf")
        for _ in range(ROUNDS):
            start = time.perf_counter()
            for _ in range(repeats):
                call()
            sync()
            best = min(best, (time.perf_counter() - start) / repeats)
        seconds[f"{m}x{k}x{n}"] = best
    return seconds


def main() -> None:
    """`python -m framebench.driver.probe` reads {library, device, threads, precision, shapes} as JSON on
    stdin. A library whose backend lacks the precision is not probed (it has no such products to time)."""
    request = json.loads(sys.stdin.read())
    library = registry.load(registry.lookup(registry.GEMM_LIBRARIES[request["library"]]))
    precision, device = request["precision"], request["device"]
    ok, reason = library.available(device)
    if not ok:
        sys.exit(reason)
    if reason := library.lacks_precision(precision, device):
        sys.exit(reason)
    library.configure(threads=request["threads"])
    library.use_tf32(precision == "tf32")
    dtype = "float32" if precision == "tf32" else PRECISIONS[precision]
    print(json.dumps(measure(request["library"], device, dtype, [tuple(s) for s in request["shapes"]])))


if __name__ == "__main__":
    main()
