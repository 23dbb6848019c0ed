"""TensorFlow's low-level API as in tutorials 000 and 001: tf.Variable weights, a GradientTape, updates
applied with assign ops, optimiser state in tf.Variables.

`TFClassifier`: one tf.function runs a whole epoch (AutoGraph turns the batch loop into a
tf.while_loop), so Python is not on the per-step path, and each step inside it is XLA-compiled
(jit_compile; XLA compiles once per batch shape, so the short last batch costs one more compile).
XLA fuses a step's small elementwise ops (bias, activation, the optimiser update) that plain
kernels run one by one; `TFGraph` keeps the same epoch function on plain TensorFlow kernels so
`make bench-perf` can measure what XLA buys on each preset.
`TFTutorial`: tutorial 000's loop: eager GradientTape steps on batches sliced from host NumPy arrays.

Mixed precision is written out with casts, as the low-level API has no policy: the forward pass
casts the fp32 variables (once per step) and the batch to bf16 (products, biases, activations), the
logits back to fp32 for the loss; the tape's gradients reach the fp32 variables through the casts,
and the optimiser's state stays fp32. On the CPU a bf16 step is not XLA-compiled: XLA:CPU converts
bf16 products to fp32 and multiplies in fp32 (slower than fp32 itself, with the converts on top;
the precision study's profile shows them), while TensorFlow's own kernels multiply bf16 with
oneDNN, whose graph rewrite also fuses each product with its bias and activation. `compute_dtype`
is the dtype of the first matmul's result in the traced (or eagerly run) forward pass.

The optimiser is written out, not TensorFlow's fused ResourceApplyAdam: that kernel computes 1 - β2
in float32 (1 - 0.999 is then off by 1.3e-5), which takes the scaling preset's losses outside the
conformance suite's tolerance of the float64 oracle.
"""

from __future__ import annotations

import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import ClassVar

import numpy as np
import tensorflow as tf

from framebench.core import optim
from framebench.core.classifier import Classifier
from framebench.core.harness import steps_in
from framebench.core.losses import Ops, loss_function
from framebench.core.opprofile import Event, OpTime, is_cast, op_times

COMPUTE_DTYPES = {"bf16": tf.bfloat16}  # mixed precisions -> the dtype of the products and activations
ACTIVATIONS = {"relu": tf.nn.relu, "sigmoid": tf.sigmoid, "tanh": tf.tanh}
OPS = Ops(
    softmax=tf.nn.softmax,
    relu=tf.nn.relu,
    log=tf.math.log,
    clip=tf.clip_by_value,
    pick=lambda m, y: tf.gather(m, y, batch_dims=1),
    one_hot=lambda y, like: tf.one_hot(y, like.shape[-1], dtype=like.dtype),
    mean=tf.reduce_mean,
    logits_cross_entropy=lambda z, y: tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=z)),
)


# The scopes of a graph kernel's name that say where it runs rather than what it is: AutoGraph's loops
# and conditionals, function-call wrappers.
CALL_SCOPES = re.compile(r"(?:^|(?<=/))(?:(?:while|cond)(?:/(?:body|then|else)/_\d+)?|StatefulPartitionedCall(?:_\d+)?)/")
CALLER_THREAD = "python"  # the profiler's name for the thread that called `run`: it waits for the work, mostly


def tf_gpu_devices() -> list:
    return tf.config.list_physical_devices("GPU")


def tf_op_name(event_name: str) -> str:
    """A kernel as "node:Type" without CALL_SCOPES; an XLA thunk as XLA names it."""
    return CALL_SCOPES.sub("", event_name)


def tf_is_cast(name: str) -> bool:
    """A graph kernel is a cast by its type (after the colon); an XLA thunk by its name."""
    return name.rpartition(":")[2] == "Cast" if ":" in name else is_cast(name)


def tf_profile(run: Callable[[], object]) -> list[OpTime]:
    """`run` under TensorFlow's profiler (tf.profiler.experimental, its XSpace trace): the self time of
    every kernel, XLA thunk and executor frame on the host's threads other than the caller's."""
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    with tempfile.TemporaryDirectory() as logdir:
        tf.profiler.experimental.start(logdir)
        try:
            run()
        finally:
            tf.profiler.experimental.stop()
        space = xplane_pb2.XSpace()
        space.ParseFromString(next(Path(logdir).rglob("*.xplane.pb")).read_bytes())
    threads = [
        [
            Event(tf_op_name(plane.event_metadata[e.metadata_id].name), line.timestamp_ns * 1000 + e.offset_ps, e.duration_ps)
            for e in line.events
        ]
        for plane in space.planes
        if plane.name == "/host:CPU"
        for line in plane.lines
        if line.name != CALLER_THREAD
    ]
    return op_times(threads, 1e-12, tf_is_cast)


class TFClassifier(Classifier):
    precisions = {"fp32": ("cpu", "gpu"), "bf16": ("cpu", "gpu"), "tf32": ("gpu",)}
    precision_gaps = {
        "fp16": "fp16 needs dynamic loss scaling, which this low-level TensorFlow step does not implement; use bf16 (or keras)"
    }
    jit_compile: ClassVar[bool] = True  # whether each step inside the epoch function is XLA-compiled

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.tf_device = "/GPU:0" if self.device == "gpu" else "/CPU:0"
        self.traces = 0  # Python-side count of epoch-function traces (a test checks it stays at 1)
        self.matmul_dtype: tf.DType | None = None  # the first product's dtype in the latest forward pass built
        self.loss = loss_function(OPS, self.model, self.train)
        with tf.device(self.tf_device):
            self.params = [tf.Variable(tf.zeros(shape), name=f"p{i}") for i, shape in enumerate(self.param_shapes())]
            self.slots = [[tf.Variable(tf.zeros_like(p)) for p in self.params] for _ in range(2)]
            self.step_count = tf.Variable(0, dtype=tf.int64)
        self.epoch_fn = tf.function(
            self.run_epoch,
            input_signature=[tf.TensorSpec([None], tf.int64), tf.TensorSpec([], tf.int64), tf.TensorSpec([None, 2], tf.float32)],
        )
        self.epoch_step = tf.function(self.train_step, jit_compile=True) if self.compiles_steps() else self.train_step

    def compiles_steps(self) -> bool:
        """Whether the epoch function's steps are XLA-compiled: as the class says, but never a bf16
        step on the CPU, whose products XLA runs in fp32 (the module's docstring)."""
        return self.jit_compile and not (self.device == "cpu" and self.precision in COMPUTE_DTYPES)

    def param_shapes(self) -> list[tuple[int, ...]]:
        shapes = []
        for fan_in, fan_out in zip(self.sizes[:-1], self.sizes[1:], strict=True):
            shapes += [(fan_in, fan_out), (fan_out,)]
        return shapes

    @classmethod
    def available(cls, device: str) -> tuple[bool, str]:
        if device == "cpu" or tf_gpu_devices():
            return True, ""
        return False, f"TensorFlow {tf.__version__} sees no GPU (tensorflow-cpu, or no CUDA build/driver)"

    @classmethod
    def configure(cls, *, threads: int) -> None:
        super().configure(threads=threads)
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)

    @classmethod
    def use_tf32(cls, allowed: bool) -> None:
        tf.config.experimental.enable_tensor_float_32_execution(allowed)

    @classmethod
    def tf32_enabled(cls) -> bool:
        return tf.config.experimental.tensor_float_32_execution_enabled()

    def compute_dtype(self) -> str:
        if self.matmul_dtype is None or self.matmul_dtype == tf.float32:
            return super().compute_dtype()
        return self.matmul_dtype.name

    @classmethod
    def gpu_peak_mb(cls) -> float | None:
        return tf.config.experimental.get_memory_info("GPU:0")["peak"] / 2**20

    @classmethod
    def profile_ops(cls, run: Callable[[], object]) -> list[OpTime]:
        return tf_profile(run)

    def framework_version(self) -> str:
        return tf.__version__

    def set_weights(self, weights: list[np.ndarray]) -> None:
        for variable, value in zip(self.params, weights, strict=True):
            variable.assign(value)
        for slot in self.slots:
            for variable in slot:
                variable.assign(tf.zeros_like(variable))
        self.step_count.assign(0)
        self.adam = optim.AdamSchedule(self.train, self.adam_form)

    def get_weights(self) -> list[np.ndarray]:
        return [p.numpy() for p in self.params]

    def prepare(self, x_train: np.ndarray, y_train: np.ndarray) -> None:
        with tf.device(self.tf_device):
            self.x_train = tf.constant(x_train)
            self.y_train = tf.constant(y_train)

    def forward(self, x: tf.Tensor, *, training: bool) -> tf.Tensor:
        dtype = COMPUTE_DTYPES.get(self.precision, tf.float32)
        h = tf.cast(x, dtype)
        layers = len(self.params) // 2
        for layer in range(layers):
            h = tf.matmul(h, tf.cast(self.params[2 * layer], dtype))
            if layer == 0 and training:
                self.matmul_dtype = h.dtype
            h = h + tf.cast(self.params[2 * layer + 1], dtype)
            if layer < layers - 1:
                h = ACTIVATIONS[self.model.hidden_activation](h)
                if training and self.model.dropout > 0:
                    h = self.dropout(h, layer)
        return tf.cast(h, tf.float32)

    def dropout(self, h: tf.Tensor, layer: int) -> tf.Tensor:
        """Inverted dropout from stateless draws keyed by (seed, step, layer): repeatable, no RNG state."""
        keep = 1.0 - self.model.dropout
        draws = tf.random.stateless_uniform(tf.shape(h), seed=tf.stack([tf.cast(self.seed, tf.int64), self.step_count * 16 + layer]))
        return h * tf.cast(draws < keep, h.dtype) / keep

    def apply_gradients(self, grads: list[tf.Tensor], adam: tf.Tensor) -> None:
        """One step of the configured optimiser; `adam` is this step's (step_size, eps') from framebench.core.optim."""
        t = self.train
        self.step_count.assign_add(1)
        for p, g, m, v in zip(self.params, grads, *self.slots, strict=True):
            if t.optimizer == "sgd":
                p.assign_sub(t.lr * g)
            elif t.optimizer == "momentum":
                m.assign(t.momentum * m + g)
                p.assign_sub(t.lr * m)
            else:
                m.assign_add((g - m) * (1 - t.beta1))
                v.assign_add((tf.square(g) - v) * (1 - t.beta2))
                p.assign_sub(adam[0] * m / (tf.sqrt(v) + adam[1]))

    def adam_schedule(self, steps: int) -> tf.Tensor:
        """The next `steps` steps' Adam coefficients, as one (steps, 2) float32 tensor."""
        return tf.constant(self.adam.next(steps), tf.float32)

    def train_step(self, idx: tf.Tensor, adam: tf.Tensor) -> tf.Tensor:
        return self.step(tf.gather(self.x_train, idx), tf.gather(self.y_train, idx), adam)

    def step(self, x: tf.Tensor, y: tf.Tensor, adam: tf.Tensor) -> tf.Tensor:
        with tf.GradientTape() as tape:
            loss = self.loss(self.forward(x, training=True), y)
        self.apply_gradients(tape.gradient(loss, self.params), adam)
        return loss

    def run_epoch(self, order: tf.Tensor, batch_size: tf.Tensor, adam: tf.Tensor) -> tf.Tensor:
        self.traces += 1
        n = tf.shape(order, out_type=tf.int64)[0]
        steps = (n + batch_size - 1) // batch_size
        losses = tf.TensorArray(tf.float32, size=tf.cast(steps, tf.int32))
        for step in tf.range(steps):
            start = step * batch_size
            batch = order[start : tf.minimum(start + batch_size, n)]
            losses = losses.write(tf.cast(step, tf.int32), self.epoch_step(batch, adam[step]))
        return losses.stack()

    def train_epoch(self, order: np.ndarray, batch_size: int) -> np.ndarray:
        adam = self.adam_schedule(steps_in(order, batch_size))
        with tf.device(self.tf_device):
            return self.epoch_fn(tf.constant(order, tf.int64), tf.constant(batch_size, tf.int64), adam).numpy()

    def predict_logits(self, x: np.ndarray) -> np.ndarray:
        with tf.device(self.tf_device):
            return self.forward(tf.constant(x), training=False).numpy()


class TFGraph(TFClassifier):
    """The same epoch function on plain TensorFlow kernels, no XLA."""

    jit_compile = False


class TFTutorial(TFClassifier):
    """Tutorial 000's loop: eager GradientTape steps on batches sliced from the host arrays."""

    def prepare(self, x_train: np.ndarray, y_train: np.ndarray) -> None:
        self.x_host, self.y_host = x_train, y_train

    def train_epoch(self, order: np.ndarray, batch_size: int) -> np.ndarray:
        batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
        adam = self.adam_schedule(len(batches))
        with tf.device(self.tf_device):
            return np.array([float(self.step(self.x_host[idx], self.y_host[idx], adam[step])) for step, idx in enumerate(batches)])
