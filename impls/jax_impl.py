"""JAX: parameters as a pytree of jax.numpy arrays, the loss differentiated with jax.value_and_grad,
SGD/momentum/Adam written against the NumPy oracle's formulas (no optax), and a whole epoch's full
batches compiled into one jax.lax.scan; only a short last batch takes a separate compiled step.

Mixed precision is written out, as JAX has no autocast: the batch and each fp32 weight are cast to
bf16 once per step for the products, which accumulate into and return fp32 (`preferred_element_type`,
`mixed_product`); the fp32 bias is added to that and the sum cast to bf16 for the activation, and the
logits stay fp32 for the loss, so the gradients, the parameters and the optimiser state stay fp32. A
product written as bf16 @ bf16 -> bf16 instead runs slower than fp32 on XLA's CPU backend: XLA
converts its operands to f32 and multiplies in f32 (the precision study's profile shows the converts
and the slower dots), whereas bf16 operands with an f32 result run in bf16 (YNNPACK's kernels).
`compute_dtype` reads the dtype of the products' operands (`dot_general`) from the step's traced
program (its jaxpr)."""

from __future__ import annotations

import functools
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from framebench.core import optim
from framebench.core.classifier import Classifier
from framebench.core.harness import steps_in
from framebench.core.losses import Ops, loss_function
from framebench.core.opprofile import Event, OpTime, op_times

COMPUTE_DTYPES = {"bf16": jnp.bfloat16}  # mixed precisions -> the dtype of the products and activations
ACTIVATIONS = {"relu": jax.nn.relu, "sigmoid": jax.nn.sigmoid, "tanh": jnp.tanh}


def pick(m: jnp.ndarray, y: jnp.ndarray) -> jnp.ndarray:
    return jnp.take_along_axis(m, y[:, None], axis=1)[:, 0]


OPS = Ops(
    softmax=jax.nn.softmax,
    relu=jax.nn.relu,
    log=jnp.log,
    clip=jnp.clip,
    pick=pick,
    one_hot=lambda y, like: jax.nn.one_hot(y, like.shape[-1], dtype=like.dtype),
    mean=jnp.mean,
    logits_cross_entropy=lambda z, y: -jnp.mean(pick(jax.nn.log_softmax(z), y)),
)


CALLER_THREAD = "python"  # the profiler's name for the thread that called `run`: it dispatches and waits


def jax_profile(run: Callable[[], object]) -> list[OpTime]:
    """`run` under jax.profiler (its XSpace trace, read with jax.profiler.ProfileData): the self time of
    every XLA thunk (a fusion, a dot, a copy) and runtime frame on the host's threads other than the caller's."""
    with tempfile.TemporaryDirectory() as logdir:
        with jax.profiler.trace(logdir):
            run()
        profile = jax.profiler.ProfileData.from_file(str(next(Path(logdir).rglob("*.xplane.pb"))))
    threads = [
        [Event(e.name, int(e.start_ns), int(e.duration_ns)) for e in line.events]
        for plane in profile.planes
        if plane.name == "/host:CPU"
        for line in plane.lines
        if line.name != CALLER_THREAD
    ]
    return op_times(threads, 1e-9)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def mixed_product(h: jnp.ndarray, w: jnp.ndarray, row_major: bool) -> jnp.ndarray:
    """h @ w with h in the 16-bit compute dtype and w an fp32 weight: w cast to h's dtype once, the
    product accumulated and returned in fp32. Its derivative multiplies in the 16-bit type too, and
    gives w its gradient in fp32 straight from the product, never rounded to 16 bits. `row_major`:
    the derivative's transposed operands are made row-major arrays (`row_major_transpose`), as
    XLA:CPU needs; a GPU's products take them transposed in place."""
    return jax.lax.dot(h, w.astype(h.dtype), preferred_element_type=jnp.float32)


def mixed_product_forward(h: jnp.ndarray, w: jnp.ndarray, row_major: bool) -> tuple[jnp.ndarray, tuple]:
    w16 = w.astype(h.dtype)
    return jax.lax.dot(h, w16, preferred_element_type=jnp.float32), (h, w16)


def mixed_product_backward(row_major: bool, saved: tuple, g: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
    h, w16 = saved
    g16 = g.astype(h.dtype)
    transpose = row_major_transpose if row_major else jnp.transpose
    dh = jax.lax.dot(g16, transpose(w16), preferred_element_type=jnp.float32).astype(h.dtype)
    dw = jax.lax.dot(transpose(h), g16, preferred_element_type=jnp.float32)
    return dh, dw


def row_major_transpose(a: jnp.ndarray) -> jnp.ndarray:
    """a.T as a new row-major array. XLA:CPU multiplies 16-bit operands only where both are row-major
    and the left one is contracted over its last axis (its YNNPACK dot); any other product it converts
    to fp32 first. A plain a.T reaches the product as a column-major view, so the transpose is taken
    as a gather (whose result is row-major), behind a barrier that keeps XLA from folding it back."""
    return jax.lax.optimization_barrier(jnp.take(a.T, jnp.arange(a.shape[0]), axis=1))


mixed_product.defvjp(mixed_product_forward, mixed_product_backward)


def equations(jaxpr) -> list:
    """Every equation of a jaxpr and of the programs nested in its equations (custom derivatives, jits)."""
    found = []
    for eqn in jaxpr.eqns:
        found.append(eqn)
        for value in eqn.params.values():
            inner = getattr(value, "jaxpr", value)
            if hasattr(inner, "eqns"):
                found += equations(inner)
    return found


def gpu_devices() -> list:
    try:
        return jax.devices("gpu")
    except RuntimeError:
        return []


class JaxClassifier(Classifier):
    precisions = {"fp32": ("cpu", "gpu"), "bf16": ("cpu", "gpu"), "tf32": ("gpu",)}
    precision_gaps = {"fp16": "fp16 needs dynamic loss scaling, which this hand-written JAX step does not implement; use bf16"}

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.jax_device = gpu_devices()[0] if self.device == "gpu" else jax.devices("cpu")[0]
        self.key = jax.random.PRNGKey(self.seed)
        self.loss_fn = loss_function(OPS, self.model, self.train)
        self.scan_epoch = jax.jit(self.scan_steps, donate_argnums=(0, 1))
        self.single_step = jax.jit(self.step, donate_argnums=(0, 1))
        self.logits = jax.jit(lambda params, x: self.forward(params, x, key=None))

    @classmethod
    def available(cls, device: str) -> tuple[bool, str]:
        if device == "cpu" or gpu_devices():
            return True, ""
        return False, f"JAX {jax.__version__} sees no GPU (CPU-only jaxlib, or no CUDA plugin)"

    @classmethod
    def configure(cls, *, threads: int) -> None:
        """XLA has no thread-count setting once running: its CPU pool is sized from the CPU affinity
        mask when the backend starts, so the process is pinned to `threads` cores before that."""
        super().configure(threads=threads)
        cores = sorted(os.sched_getaffinity(0))
        os.sched_setaffinity(0, cores[:threads])

    @classmethod
    def use_tf32(cls, allowed: bool) -> None:
        jax.config.update("jax_default_matmul_precision", "tensorfloat32" if allowed else "highest")

    @classmethod
    def tf32_enabled(cls) -> bool:
        return jax.config.jax_default_matmul_precision == "tensorfloat32"

    def compute_dtype(self) -> str:
        """The operand dtype of the first `dot_general` in the traced training loss (in a custom
        derivative's program too)."""
        x, y = self.x_train[:1], self.y_train[:1]
        dots = [
            eqn.invars[0].aval.dtype
            for eqn in equations(jax.make_jaxpr(self.loss)(self.params, x, y, None).jaxpr)
            if eqn.primitive.name == "dot_general"
        ]
        if dots[0] == jnp.float32:
            return super().compute_dtype()
        return jnp.dtype(dots[0]).name

    def framework_version(self) -> str:
        return jax.__version__

    def set_weights(self, weights: list[np.ndarray]) -> None:
        self.params = [jax.device_put(jnp.asarray(w, jnp.float32), self.jax_device) for w in weights]
        zeros = [jnp.zeros_like(p) for p in self.params]
        # Every leaf committed to the device, as the compiled epoch returns them: an uncommitted one
        # (the step counter) would make the second epoch compile again, inside the steady state.
        self.opt_state = jax.device_put(
            {"m": zeros, "v": [jnp.zeros_like(p) for p in self.params], "step": jnp.zeros((), jnp.int32)}, self.jax_device
        )
        self.adam = optim.AdamSchedule(self.train, self.adam_form)

    def get_weights(self) -> list[np.ndarray]:
        return [np.asarray(p, dtype=np.float32) for p in self.params]

    def prepare(self, x_train: np.ndarray, y_train: np.ndarray) -> None:
        self.x_train = jax.device_put(x_train, self.jax_device)
        self.y_train = jax.device_put(y_train.astype(np.int32), self.jax_device)

    def forward(self, params: list, x: jnp.ndarray, *, key) -> jnp.ndarray:
        """Pre-activation output (fp32); inverted dropout from `key` when one is given (training)."""
        layers = len(params) // 2
        dtype = COMPUTE_DTYPES.get(self.precision, jnp.float32)
        h = x.astype(dtype)
        for layer in range(layers):
            product = h @ params[2 * layer] if dtype == jnp.float32 else mixed_product(h, params[2 * layer], self.device == "cpu")
            h = product + params[2 * layer + 1]
            if layer < layers - 1:
                h = ACTIVATIONS[self.model.hidden_activation](h.astype(dtype))
                if key is not None and self.model.dropout > 0:
                    keep = 1.0 - self.model.dropout
                    h = h * jax.random.bernoulli(jax.random.fold_in(key, layer), keep, h.shape).astype(dtype) / keep
        return h

    def loss(self, params: list, x: jnp.ndarray, y: jnp.ndarray, key) -> jnp.ndarray:
        return self.loss_fn(self.forward(params, x, key=key), y)

    def update(self, params: list, grads: list, state: dict, adam: jnp.ndarray) -> tuple[list, dict]:
        """The oracle's SGD / momentum / Adam; `adam` is this step's (step_size, eps') from
        framebench.core.optim, computed on the host in the precision its form states."""
        t, step = self.train, state["step"] + 1
        if t.optimizer == "sgd":
            return [p - t.lr * g for p, g in zip(params, grads, strict=True)], {**state, "step": step}
        if t.optimizer == "momentum":
            m = [t.momentum * mi + g for mi, g in zip(state["m"], grads, strict=True)]
            return [p - t.lr * mi for p, mi in zip(params, m, strict=True)], {**state, "m": m, "step": step}
        m = [mi + (g - mi) * (1 - t.beta1) for mi, g in zip(state["m"], grads, strict=True)]
        v = [vi + (g * g - vi) * (1 - t.beta2) for vi, g in zip(state["v"], grads, strict=True)]
        new = [p - adam[0] * mi / (jnp.sqrt(vi) + adam[1]) for p, mi, vi in zip(params, m, v, strict=True)]
        return new, {"m": m, "v": v, "step": step}

    def step(self, params: list, state: dict, x_all, y_all, idx, adam, key) -> tuple[list, dict, jnp.ndarray]:
        step_key = jax.random.fold_in(key, state["step"])
        loss, grads = jax.value_and_grad(self.loss)(params, x_all[idx], y_all[idx], step_key)
        params, state = self.update(params, grads, state, adam)
        return params, state, loss

    def scan_steps(self, params: list, state: dict, x_all, y_all, batches, adam, key):
        def body(carry, step_inputs):
            params, state = carry
            params, state, loss = self.step(params, state, x_all, y_all, *step_inputs, key)
            return (params, state), loss

        (params, state), losses = jax.lax.scan(body, (params, state), (batches, adam))
        return params, state, losses

    def train_epoch(self, order: np.ndarray, batch_size: int) -> np.ndarray:
        full = len(order) // batch_size * batch_size
        adam = self.adam.next(steps_in(order, batch_size)).astype(np.float32)
        losses = []
        if full:
            batches = jax.device_put(order[:full].reshape(-1, batch_size).astype(np.int32), self.jax_device)
            scan_adam = jax.device_put(adam[: full // batch_size], self.jax_device)
            self.params, self.opt_state, scanned = self.scan_epoch(
                self.params, self.opt_state, self.x_train, self.y_train, batches, scan_adam, self.key
            )
            losses.append(scanned)
        if full < len(order):
            rest = jax.device_put(order[full:].astype(np.int32), self.jax_device)
            self.params, self.opt_state, loss = self.single_step(
                self.params, self.opt_state, self.x_train, self.y_train, rest, jax.device_put(adam[-1], self.jax_device), self.key
            )
            losses.append(loss[None])
        return np.asarray(jnp.concatenate(losses), dtype=np.float64)

    def predict_logits(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(self.logits(self.params, jax.device_put(x, self.jax_device)), dtype=np.float32)

    @classmethod
    def gpu_peak_mb(cls) -> float | None:
        stats = gpu_devices()[0].memory_stats() or {}
        return stats["peak_bytes_in_use"] / 2**20 if "peak_bytes_in_use" in stats else None

    def sync(self) -> None:
        jax.block_until_ready(self.params)

    @classmethod
    def profile_ops(cls, run: Callable[[], object]) -> list[OpTime]:
        return jax_profile(run)
