"""The hardware limit, measured in the same run: float32 GEMM time at the model's own shapes, per
library, in a fresh process per library with the run's thread count.

An epoch's training FLOPs are exactly: forward 2·N·Σ in·out, the weight gradients the same again,
and the input gradients of every layer but the first. Dividing each GEMM's FLOPs by the measured
time of that shape gives the epoch's floor: `floor_epoch_s` with the fastest library at each shape,
`own_floor_epoch_s` with the backend's own framework."""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass

LIBRARIES = ("numpy", "torch", "tf", "jax")
ROUNDS = 5  # timed rounds per shape; the fastest is kept (the floor is a best case)
MIN_ROUND_S = 0.02  # each round repeats the GEMM until it lasts at least this long


@dataclass(frozen=True)
class Gemm:
    kind: str  # "forward", "weight_grad" or "input_grad"
    layer: int  # 1-based layer number
    m: int  # rows of the left operand
    k: int  # shared dimension
    n: int  # columns of the right operand

    @property
    def flops(self) -> int:
        return 2 * self.m * self.k * self.n


def step_gemms(sizes: tuple[int, ...], batch: int) -> list[Gemm]:
    """The GEMMs of one training step of `batch` samples (no input gradient for the first layer)."""
    gemms = []
    for layer, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:]), start=1):
        gemms.append(Gemm("forward", layer, batch, fan_in, fan_out))
        gemms.append(Gemm("weight_grad", layer, fan_in, batch, fan_out))
        if layer > 1:
            gemms.append(Gemm("input_grad", layer, batch, fan_out, fan_in))
    return gemms


def epoch_flops(sizes: tuple[int, ...], samples: int) -> int:
    return sum(g.flops for g in step_gemms(sizes, 1)) * samples


def floor_epoch_s(gemm_seconds: dict[str, float], sizes: tuple[int, ...], batch: int, samples: int) -> float:
    """Seconds an epoch of `samples` would take if it did nothing but its GEMMs at the measured speed."""
    per_step = sum(gemm_seconds[key(g)] for g in step_gemms(sizes, batch))
    return per_step * samples / batch


def key(gemm: Gemm) -> str:
    return f"{gemm.m}x{gemm.k}x{gemm.n}"


def timer(library: str, device: str):
    """A function (m, k, n) -> seconds of one float32 (m x k) @ (k x n) in `library` on `device`."""
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
            a, b = (torch.from_numpy(x).to(target) for x in operands(m, k, n))
            out = torch.empty((m, n), device=target)
            return lambda: torch.mm(a, b, out=out), sync
    elif library == "tf":
        import tensorflow as tf

        def run(m, k, n):
            with tf.device("/GPU:0" if device == "gpu" else "/CPU:0"):
                a, b = (tf.constant(x) for x in operands(m, k, n))
            last = [None]  # waiting for the last product waits for all: one stream, in order

            def call():
                last[0] = tf.linalg.matmul(a, b)

            return call, lambda: last[0].numpy()
    else:
        import jax

        target = jax.devices("gpu" if device == "gpu" else "cpu")[0]
        matmul = jax.jit(lambda a, b: a @ b)

        def run(m, k, n):
            a, b = (jax.device_put(x, target) for x in operands(m, k, n))
            if device == "cpu":  # XLA:CPU may run queued independent products side by side: wait for each
                return lambda: matmul(a, b).block_until_ready(), lambda: None
            last = [None]

            def call():
                last[0] = matmul(a, b)

            return call, lambda: last[0].block_until_ready()
    return run


def measure(library: str, device: str, shapes: list[tuple[int, int, int]]) -> dict[str, float]:
    """Fastest of ROUNDS rounds per shape, each round long enough for the clock to be exact."""
    make = timer(library, device)
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
    """`python -m bench.gemm` reads {library, device, threads, shapes} as JSON on stdin."""
    request = json.loads(sys.stdin.read())
    from impls import load_backend

    library = load_backend(request["library"])
    ok, reason = library.available(request["device"])
    if not ok:
        sys.exit(reason)
    library.configure(threads=request["threads"], tf32=request["tf32"])
    print(json.dumps(measure(request["library"], request["device"], [tuple(s) for s in request["shapes"]])))


if __name__ == "__main__":
    main()
