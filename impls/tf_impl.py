"""TensorFlow's low-level API as in seeds 000 and 001: tf.Variable weights, a GradientTape, updates
applied with assign ops, optimiser state in tf.Variables.

`default`: one tf.function runs a whole epoch (AutoGraph turns the batch loop into a
tf.while_loop), so Python is not on the per-step path, and each step inside it is XLA-compiled
(jit_compile; XLA compiles once per batch shape, so the short last batch costs one more compile).
`graph`: the same epoch function with plain TensorFlow kernels, no XLA (`make bench-perf` on 2 CPU
cores: 0.88 s vs 0.39 s per seed003 epoch, 1.11 s vs 0.71 s on mlp; on seed000 the two are within
the noise, 0.38 s vs 0.42 s in that run and 0.37 s vs 0.34 s in the one before).
`tutorial`: seed 000's loop: eager GradientTape steps on batches sliced from host NumPy arrays.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from bench.config import PROB_CLIP
from impls.base import Classifier

ACTIVATIONS = {"relu": tf.nn.relu, "sigmoid": tf.sigmoid, "tanh": tf.tanh}


def tf_gpu_devices() -> list:
    return tf.config.list_physical_devices("GPU")


class TFClassifier(Classifier):
    variants = ("default", "graph", "tutorial")

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.tf_device = "/GPU:0" if self.device == "gpu" else "/CPU:0"
        self.traces = 0  # Python-side count of epoch-function traces (a test checks it stays at 1)
        with tf.device(self.tf_device):
            self.params = [tf.Variable(tf.zeros(shape), name=f"p{i}") for i, shape in enumerate(self.param_shapes())]
            self.slots = [[tf.Variable(tf.zeros_like(p)) for p in self.params] for _ in range(2)]
            self.step_count = tf.Variable(0, dtype=tf.int64)
        self.epoch_fn = tf.function(
            self.run_epoch,
            input_signature=[tf.TensorSpec([None], tf.int64), tf.TensorSpec([], tf.int64)],
        )
        self.epoch_step = tf.function(self.train_step, jit_compile=True) if self.variant == "default" else self.train_step

    def param_shapes(self) -> list[tuple[int, ...]]:
        shapes = []
        for fan_in, fan_out in zip(self.sizes[:-1], self.sizes[1:]):
            shapes += [(fan_in, fan_out), (fan_out,)]
        return shapes

    @classmethod
    def available(cls, device: str) -> tuple[bool, str]:
        if device == "cpu" or tf_gpu_devices():
            return True, ""
        return False, f"TensorFlow {tf.__version__} sees no GPU (tensorflow-cpu, or no CUDA build/driver)"

    @classmethod
    def configure(cls, *, threads: int, tf32: bool) -> None:
        super().configure(threads=threads, tf32=tf32)
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)
        tf.config.experimental.enable_tensor_float_32_execution(tf32)

    def framework_version(self) -> str:
        return tf.__version__

    def set_weights(self, weights: list[np.ndarray]) -> None:
        for variable, value in zip(self.params, weights):
            variable.assign(value)
        for slot in self.slots:
            for variable in slot:
                variable.assign(tf.zeros_like(variable))
        self.step_count.assign(0)

    def get_weights(self) -> list[np.ndarray]:
        return [p.numpy() for p in self.params]

    def prepare(self, x_train: np.ndarray, y_train: np.ndarray) -> None:
        self.x_host, self.y_host = x_train, y_train  # the tutorial slices these, as seed 000 does
        with tf.device(self.tf_device):
            self.x_train = tf.constant(x_train)
            self.y_train = tf.constant(y_train)

    def forward(self, x: tf.Tensor, *, training: bool) -> tf.Tensor:
        h = x
        layers = len(self.params) // 2
        for layer in range(layers):
            h = tf.matmul(h, self.params[2 * layer]) + self.params[2 * layer + 1]
            if layer < layers - 1:
                h = ACTIVATIONS[self.model.hidden_activation](h)
                if training and self.model.dropout > 0:
                    h = self.dropout(h, layer)
        return h

    def dropout(self, h: tf.Tensor, layer: int) -> tf.Tensor:
        """Inverted dropout from stateless draws keyed by (seed, step, layer): repeatable, no RNG state."""
        keep = 1.0 - self.model.dropout
        draws = tf.random.stateless_uniform(tf.shape(h), seed=tf.stack([tf.cast(self.seed, tf.int64), self.step_count * 16 + layer]))
        return h * tf.cast(draws < keep, h.dtype) / keep

    def loss(self, z: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
        """bench.metrics' definitions in TF ops."""
        if self.train.loss == "cross_entropy":
            if self.model.output_activation == "softmax":
                p_true = tf.gather(tf.nn.softmax(z), y, batch_dims=1)
                return -tf.reduce_mean(tf.math.log(tf.clip_by_value(p_true, PROB_CLIP, 1 - PROB_CLIP)))
            return tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=z))
        out = {"softmax": tf.nn.softmax, "relu": tf.nn.relu, "none": tf.identity}[self.model.output_activation](z)
        return tf.reduce_mean(tf.square(out - tf.one_hot(y, self.sizes[-1])))

    def apply_gradients(self, grads: list[tf.Tensor]) -> None:
        t = self.train
        self.step_count.assign_add(1)
        step = tf.cast(self.step_count, tf.float64)  # bias corrections in float64, as the "torch" form states
        for p, g, m, v in zip(self.params, grads, *self.slots):
            if t.optimizer == "sgd":
                p.assign_sub(t.lr * g)
            elif t.optimizer == "momentum":
                m.assign(t.momentum * m + g)
                p.assign_sub(t.lr * m)
            else:
                m.assign_add((g - m) * (1 - t.beta1))
                v.assign_add((tf.square(g) - v) * (1 - t.beta2))
                step_size = tf.cast(t.lr / (1 - tf.pow(tf.constant(t.beta1, tf.float64), step)), tf.float32)
                correction2_sqrt = tf.cast(tf.sqrt(1 - tf.pow(tf.constant(t.beta2, tf.float64), step)), tf.float32)
                p.assign_sub(step_size * m / (tf.sqrt(v) / correction2_sqrt + t.adam_eps))

    def train_step(self, idx: tf.Tensor) -> tf.Tensor:
        return self.step(tf.gather(self.x_train, idx), tf.gather(self.y_train, idx))

    def step(self, x: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
        with tf.GradientTape() as tape:
            loss = self.loss(self.forward(x, training=True), y)
        self.apply_gradients(tape.gradient(loss, self.params))
        return loss

    def run_epoch(self, order: tf.Tensor, batch_size: tf.Tensor) -> tf.Tensor:
        self.traces += 1
        n = tf.shape(order, out_type=tf.int64)[0]
        steps = (n + batch_size - 1) // batch_size
        losses = tf.TensorArray(tf.float32, size=tf.cast(steps, tf.int32))
        for step in tf.range(steps):
            start = step * batch_size
            losses = losses.write(tf.cast(step, tf.int32), self.epoch_step(order[start : tf.minimum(start + batch_size, n)]))
        return losses.stack()

    def train_epoch(self, order: np.ndarray, batch_size: int) -> np.ndarray:
        with tf.device(self.tf_device):
            if self.variant == "tutorial":
                batches = (order[i : i + batch_size] for i in range(0, len(order), batch_size))
                return np.array([float(self.step(self.x_host[idx], self.y_host[idx])) for idx in batches])
            return self.epoch_fn(tf.constant(order, tf.int64), tf.constant(batch_size, tf.int64)).numpy()

    def predict_logits(self, x: np.ndarray) -> np.ndarray:
        with tf.device(self.tf_device):
            return self.forward(tf.constant(x), training=False).numpy()
