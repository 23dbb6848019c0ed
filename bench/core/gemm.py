"""The hardware limit, measured in the same run: GEMM time at the model's own shapes and in the
run's precision (float32; TF32 products; bfloat16 or float16 operands for mixed precision), per
library, in a fresh process per library with the run's thread count, on every node that runs jobs.

An epoch's training FLOPs are exactly: forward 2·N·Σ in·out, the weight gradients the same again,
and the input gradients of every layer but the first. Dividing each GEMM's FLOPs by the measured
time of that shape gives the epoch's floor: `floor_epoch_s` with the fastest library at each shape,
`own_floor_epoch_s` with the backend's own framework.

The probes run at the start and again at the end of a matrix; each shape keeps its faster time. A
step whose GEMMs take more than PROBE_DISAGREEMENT times as long in one probe as in the other, or a
run that would come out faster than MAX_CREDIBLE_EFFICIENCY of its floor, says the machine was
disturbed while a probe ran: those efficiencies are left empty, with the reason in `floor_note`,
rather than reported wrong."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import dataclass

import pandas as pd

LIBRARIES = ("numpy", "torch", "tf", "jax")
PROBE_DISAGREEMENT = 1.5  # start and end probe of one shape further apart than this: the machine was disturbed
MAX_CREDIBLE_EFFICIENCY = 1.2  # a run this much faster than its GEMM floor means the floor's probe was slowed
FLOOR_COLUMNS = ["floor_epoch_s", "efficiency", "own_floor_epoch_s", "overhead_efficiency", "floor_note"]
ROUNDS = 5  # timed rounds per shape; the fastest is kept (the floor is a best case)
MIN_ROUND_S = 0.02  # each round repeats the GEMM until it lasts at least this long
PROBE_TIMEOUT_S = 600.0  # one library's probe process is killed after this long (a framework may hang on import)


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
    for layer, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=False), start=1):
        gemms.append(Gemm("forward", layer, batch, fan_in, fan_out))
        gemms.append(Gemm("weight_grad", layer, fan_in, batch, fan_out))
        if layer > 1:
            gemms.append(Gemm("input_grad", layer, batch, fan_out, fan_in))
    return gemms


def key(gemm: Gemm) -> str:
    return f"{gemm.m}x{gemm.k}x{gemm.n}"


def probe_one(request: str, env: dict[str, str]) -> tuple[dict, str]:
    """One library's timings ({shape key: seconds}) from its own process, or why there are none."""
    try:
        result = subprocess.run(
            [sys.executable, "-m", "framebench.core.gemm"],
            input=request,
            capture_output=True,
            text=True,
            errors="replace",
            env=env,
            timeout=PROBE_TIMEOUT_S,
        )
    except subprocess.TimeoutExpired:
        return {}, f"no answer within {PROBE_TIMEOUT_S:g} s, killed"
    if result.returncode != 0:
        return {}, (result.stderr.strip().splitlines() or ["no output"])[-1]
    try:
        seconds = json.loads(result.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        return {}, "the probe printed no timings"
    if not isinstance(seconds, dict):
        return {}, "the probe printed no timings"
    return seconds, ""


def probe(
    libraries: tuple[str, ...], device: str, threads: int, precision: str, sizes: tuple[int, ...], batch: int, env: dict[str, str]
) -> tuple[list[dict], list[str]]:
    """Time one step's GEMMs in each library (a process each) on this node: (gemm.csv rows without
    node/sweep/probe columns, one line per library that could not be measured)."""
    gemms = step_gemms(sizes, batch)
    shapes = sorted({(g.m, g.k, g.n) for g in gemms})
    rows, skipped = [], []
    for library in libraries:
        request = json.dumps({"library": library, "device": device, "threads": threads, "precision": precision, "shapes": shapes})
        seconds, failure = probe_one(request, env)
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


def with_efficiencies(runs: pd.DataFrame, gemm: pd.DataFrame) -> pd.DataFrame:
    """`runs` with FLOOR_COLUMNS derived from gemm.csv: each run against its own node's probes for its
    device, precision and sweep value (a bf16 run against bf16 GEMMs). Derived when read, so the end-of-matrix probe counts for every row.

    Each floor keeps, shape by shape, the faster of its probes. A floor whose step time differs
    between the probes by more than PROBE_DISAGREEMENT (judged on the whole step, as the floor uses
    it, not on one microsecond-sized product) leaves its efficiency empty, as does one above
    MAX_CREDIBLE_EFFICIENCY; `floor_note` says why."""
    runs = runs.copy()
    for column in FLOOR_COLUMNS:
        runs[column] = "" if column == "floor_note" else float("nan")
    if runs.empty or gemm.empty:
        return runs
    where = ["node", "device", "precision", "sweep_value"]
    shape = ["kind", "layer"]
    fastest_by_probe = gemm.groupby(where + ["probe"] + shape)["seconds"].min().groupby(where + ["probe"]).sum()
    own_by_probe = gemm.groupby(where + ["library", "probe"])["seconds"].sum()
    best = gemm.groupby(where + ["library"] + shape, as_index=False)["seconds"].min()
    floors = pd.DataFrame(
        {
            "step_s": best.groupby(where + shape)["seconds"].min().groupby(where).sum(),
            "disagreement": fastest_by_probe.groupby(where).max() / fastest_by_probe.groupby(where).min(),
            "probes": fastest_by_probe.groupby(where).size(),
        }
    ).reset_index()
    own = (
        pd.DataFrame(
            {
                "own_step_s": best.groupby(where + ["library"])["seconds"].sum(),
                "own_disagreement": own_by_probe.groupby(where + ["library"]).max() / own_by_probe.groupby(where + ["library"]).min(),
            }
        )
        .reset_index()
        .rename(columns={"library": "gemm_library"})
    )
    merged = runs[where + ["gemm_library"]].merge(floors, on=where, how="left").merge(own, on=where + ["gemm_library"], how="left")
    steps = (runs["samples_per_epoch"] / runs["batch_size"]).to_numpy()
    median = runs["median_epoch_s"].to_numpy()
    runs["floor_epoch_s"] = merged["step_s"].to_numpy() * steps
    runs["own_floor_epoch_s"] = merged["own_step_s"].to_numpy() * steps
    runs["efficiency"] = runs["floor_epoch_s"] / median
    runs["overhead_efficiency"] = runs["own_floor_epoch_s"] / median
    notes = [
        floor_note(*row)
        for row in zip(
            merged["disagreement"],
            merged["own_disagreement"],
            runs["efficiency"],
            runs["overhead_efficiency"],
            merged["probes"],
            strict=True,
        )
    ]
    runs["floor_note"] = notes
    unreliable = runs["floor_note"].str.startswith("unreliable")
    runs.loc[unreliable & ~runs["floor_note"].str.contains("own floor"), "efficiency"] = float("nan")
    runs.loc[unreliable, "overhead_efficiency"] = float("nan")
    return runs


def floor_note(disagreement: float, own_disagreement: float, efficiency: float, overhead_efficiency: float, probes: float) -> str:
    """Why a run's efficiencies are empty, or what to know about its floors ("" when nothing)."""
    if disagreement > PROBE_DISAGREEMENT:
        return f"unreliable: the start and end GEMM probes of the floor disagree by {disagreement:.2f}x (> {PROBE_DISAGREEMENT}x)"
    if max(efficiency, overhead_efficiency) > MAX_CREDIBLE_EFFICIENCY:
        return f"unreliable: efficiency above {MAX_CREDIBLE_EFFICIENCY} (a GEMM probe was slowed)"
    if own_disagreement > PROBE_DISAGREEMENT:
        return f"unreliable own floor: its start and end probes disagree by {own_disagreement:.2f}x (> {PROBE_DISAGREEMENT}x)"
    return "one GEMM probe (no end probe)" if probes == 1 else ""


def unreliable_warnings(runs: pd.DataFrame) -> list[str]:
    """One line per (node, device, sweep value) whose efficiencies were left empty, with the reason."""
    bad = runs[runs["floor_note"].str.startswith("unreliable")]
    return [
        f"{r.node} {r.device}{' ' + r.sweep_field + '=' + r.sweep_value if r.sweep_field else ''}: efficiencies {r.floor_note}"
        for r in bad.drop_duplicates(["node", "device", "sweep_value", "floor_note"]).itertuples()
    ]


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
        # The product as framebench.impls.jax_impl runs it: 16-bit operands accumulate into an fp32
        # result (XLA:CPU runs a 16-bit result in fp32, converting the operands first).
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
    """`python -m framebench.core.gemm` reads {library, device, threads, precision, shapes} as JSON on
    stdin. A library whose backend lacks the precision is not probed (it has no such products to time)."""
    from framebench.core import registry
    from framebench.core.config import PRECISIONS

    request = json.loads(sys.stdin.read())
    library = registry.load(registry.lookup(request["library"]))
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
