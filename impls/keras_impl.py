"""Keras 3 as in seeds 001 and 003: a Sequential of Dense (and Dropout) layers, compiled with Keras
optimisers and losses and trained by `fit`, fed the harness's batch order unshuffled.

The same code runs on whichever backend KERAS_BACKEND names; the registry gives it one name per
backend and starts each in its own process. Per-step losses are collected by a metric that writes
each step's loss into a device-side buffer, read once per epoch, because Keras's own logs only
carry the running mean and would force a host sync per step.
"""

from __future__ import annotations

import functools

import numpy as np
import keras
from keras import ops

from bench.config import PROB_CLIP
from impls.base import Classifier


class ProjectLoss(keras.losses.Loss):
    """bench.metrics' loss definitions on the model's pre-activation output, in keras.ops."""

    def __init__(self, *, loss: str, output_activation: str, classes: int) -> None:
        super().__init__(name=f"{loss}_{output_activation}")
        self.loss = loss
        self.output_activation = output_activation
        self.classes = classes

    def call(self, y_true, z):
        y = ops.cast(ops.reshape(y_true, (-1,)), "int32")
        if self.loss == "cross_entropy":
            if self.output_activation == "none":
                return keras.losses.sparse_categorical_crossentropy(y, z, from_logits=True)
            # Not Keras's own loss on softmax output: on TensorFlow it silently swaps in the logits
            # and skips the clipping that the project's definition (and Keras's docs) promise.
            p_true = ops.take_along_axis(ops.softmax(z, axis=-1), ops.expand_dims(y, 1), axis=1)[:, 0]
            return -ops.log(ops.clip(p_true, PROB_CLIP, 1 - PROB_CLIP))
        activation = {"softmax": lambda v: ops.softmax(v, axis=-1), "relu": ops.relu, "none": lambda v: v}
        return keras.losses.mean_squared_error(ops.one_hot(y, self.classes), activation[self.output_activation](z))


class StepLosses(keras.metrics.Metric):
    """Records every training step's loss in a buffer; `result()` is the latest one. The latest is
    kept in its own variable: reading it back from the buffer at a dynamic index made XLA take 41 s
    to compile one step (Keras 3.15 on TensorFlow, jit_compile=True)."""

    def __init__(self, loss_fn: keras.losses.Loss, capacity: int) -> None:
        super().__init__(name="step_loss")
        self.loss_fn = loss_fn
        self.values = self.add_variable(shape=(capacity,), initializer="zeros", name="values")
        self.count = self.add_variable(shape=(), initializer="zeros", name="count", dtype="int32")
        self.latest = self.add_variable(shape=(), initializer="zeros", name="latest")

    def update_state(self, y_true, y_pred, sample_weight=None):
        loss = ops.cast(self.loss_fn(y_true, y_pred), "float32")
        if str(getattr(loss, "device", "")) == "meta":
            # Keras's torch backend builds metrics by tracing them on torch's "meta" device without
            # a stateless scope, so an assignment here would leave the buffer without data.
            return
        self.values.assign(ops.slice_update(self.values.value, ops.reshape(self.count.value, (1,)), ops.reshape(loss, (1,))))
        self.latest.assign(loss)
        self.count.assign(self.count + 1)

    def result(self):
        return self.latest.value

    def read(self) -> np.ndarray:
        return ops.convert_to_numpy(self.values)[: int(ops.convert_to_numpy(self.count))]


class KerasClassifier(Classifier):
    """`default`: XLA (`jit_compile=True`) on TensorFlow and JAX, eager on torch, STEPS_PER_EXECUTION
    steps per call (one on torch). `auto`: Keras's own choice, `jit_compile="auto"`, which on a
    TensorFlow CPU means no XLA. `xla` (torch only): `jit_compile=True`, i.e. torch.compile. On
    TensorFlow, `default` and `auto` feed `fit` a dataset of whole batches (`batched_dataset`).
    `tutorial`: seed 003's way: a tf.data pipeline mapped element by element and batched, fit one
    step per call, with the seed's accuracy metric and Keras's default compilation."""

    adam_form = "keras"
    variants = ("default", "auto", "xla", "tutorial")
    STEPS_PER_EXECUTION = 64  # steps per compiled call; the step-loss metric still records each step
    # jit_compile per Keras backend and variant; a variant missing here would repeat `default` there.
    # `make bench-perf` on 2 CPU cores (steady-state epoch): XLA on TensorFlow 0.62 s vs 0.99 s on
    # seed003, 0.65 s vs 1.16 s on mlp, 0.53 s vs 0.51 s on seed000, compiling in about 1 s; on
    # torch, torch.compile costs 11-18 s in the first epoch, which a 3-10 epoch run does not win
    # back (mlp: 2.0 s vs 2.6 s per epoch).
    JIT_COMPILE = {
        "tensorflow": {"default": True, "auto": "auto", "tutorial": "auto"},
        "jax": {"default": True, "tutorial": "auto"},  # Keras compiles every step with XLA on JAX
        "torch": {"default": "auto", "xla": True, "tutorial": "auto"},
    }

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        keras.utils.set_random_seed(self.seed)
        self.keras_device = self.device  # "cpu"/"gpu": with an index ("cpu:0") Keras's torch backend loses the gradients
        with keras.device(self.keras_device):
            self.net = keras.Sequential([keras.Input(shape=(self.sizes[0],)), *self.layers()])
        self.loss_fn = ProjectLoss(loss=self.train.loss, output_activation=self.model.output_activation, classes=self.sizes[-1])
        self.step_losses: StepLosses | None = None

    def layers(self) -> list[keras.layers.Layer]:
        layers = []
        for index, width in enumerate(self.sizes[1:-1]):
            layers.append(keras.layers.Dense(width, activation=self.model.hidden_activation))
            if self.model.dropout > 0:
                layers.append(keras.layers.Dropout(self.model.dropout, seed=self.seed + index))
        layers.append(keras.layers.Dense(self.sizes[-1]))  # pre-activation output; the loss applies the rest
        return layers

    @classmethod
    def lacks(cls, model, train, variant: str, device: str) -> str | None:
        if variant not in cls.JIT_COMPILE[keras.backend.backend()]:
            return f"on Keras's {keras.backend.backend()} backend, variant {variant} would be the same as default"
        return None

    @classmethod
    def native(cls) -> type[Classifier]:
        """The framework backend Keras runs on here; device checks and process settings are its."""
        from impls import load_backend

        return load_backend({"tensorflow": "tf", "torch": "torch", "jax": "jax"}[keras.backend.backend()])

    @classmethod
    def available(cls, device: str) -> tuple[bool, str]:
        return cls.native().available(device)

    @classmethod
    def configure(cls, *, threads: int, tf32: bool) -> None:
        cls.native().configure(threads=threads, tf32=tf32)

    def framework_version(self) -> str:
        return f"keras {keras.__version__} on {keras.backend.backend()}"

    def make_optimizer(self) -> keras.optimizers.Optimizer:
        t = self.train
        if t.optimizer == "adam":
            return keras.optimizers.Adam(learning_rate=t.lr, beta_1=t.beta1, beta_2=t.beta2, epsilon=t.adam_eps)
        return keras.optimizers.SGD(learning_rate=t.lr, momentum=t.momentum if t.optimizer == "momentum" else 0.0)

    def compile(self) -> None:
        """(Re)compile: a fresh optimiser (its state reset) and a step-loss buffer for an epoch."""
        capacity = max(-(-len(self.x_train) // self.train.batch_size), self.train.steps_per_epoch)
        self.step_losses = StepLosses(self.loss_fn, capacity)
        tutorial = self.variant == "tutorial"
        self.net.compile(optimizer=self.make_optimizer(), loss=self.loss_fn,
                         metrics=[self.step_losses, "accuracy"] if tutorial else [self.step_losses],
                         jit_compile=self.JIT_COMPILE[keras.backend.backend()][self.variant],
                         steps_per_execution=self.steps_per_execution())

    def steps_per_execution(self) -> int:
        """Several steps per call, except in the tutorial and on torch, where Keras allows only one."""
        return 1 if self.variant == "tutorial" or keras.backend.backend() == "torch" else self.STEPS_PER_EXECUTION

    def set_weights(self, weights: list[np.ndarray]) -> None:
        self.net.set_weights(weights)
        if hasattr(self, "x_train"):
            self.compile()

    def get_weights(self) -> list[np.ndarray]:
        return [np.asarray(w, dtype=np.float32) for w in self.net.get_weights()]

    def prepare(self, x_train: np.ndarray, y_train: np.ndarray) -> None:
        super().prepare(x_train, y_train)
        if self.feeds_batched_dataset():
            import tensorflow as tf

            with tf.device("/cpu:0"):  # tf.data runs on the host; fit moves each batch to the device
                self.x_resident, self.y_resident = tf.constant(x_train), tf.constant(y_train)
        self.compile()

    def train_epoch(self, order: np.ndarray, batch_size: int) -> np.ndarray:
        with keras.device(self.keras_device):
            if self.variant == "tutorial":
                self.net.fit(self.tutorial_dataset(order, batch_size), epochs=1, verbose=0)
            elif self.feeds_batched_dataset():
                self.net.fit(self.batched_dataset(order, batch_size), epochs=1, shuffle=False, verbose=0)
            else:
                x = self.epoch_buffer(len(order))
                np.take(self.x_train, order, axis=0, out=x)
                self.net.fit(x, self.y_train[order], batch_size=batch_size, epochs=1, shuffle=False, verbose=0)
        return self.step_losses.read()

    def feeds_batched_dataset(self) -> bool:
        """Whether `fit` reads `batched_dataset` (and `prepare` keeps the training set as tensors for it)."""
        return keras.backend.backend() == "tensorflow" and self.variant != "tutorial"

    def batched_dataset(self, order: np.ndarray, batch_size: int):
        """The epoch's batches as a tf.data.Dataset whose elements are already whole batches: one
        gather of the epoch in TensorFlow, then slices of it. Fed NumPy arrays, Keras on TensorFlow
        slices and gathers every batch in tf.data. Measured side by side (two models in one process,
        alternating epochs, 2 cores, steady state), arrays vs this dataset: seed000 0.57-0.88 vs
        0.43 s, seed003 0.65-0.99 vs 0.50-0.55 s, mlp 0.67 vs 0.56-0.58 s, identical step losses.
        On JAX the arrays were as fast or faster (seed000 0.39-0.51 vs 0.52-0.66 s), so other Keras
        backends keep them."""
        import tensorflow as tf

        def batches(indices: np.ndarray, size: int) -> tf.data.Dataset:
            x, y = tf.gather(self.x_resident, indices), tf.gather(self.y_resident, indices)
            return tf.data.Dataset.from_tensor_slices((tf.reshape(x, (-1, size, self.sizes[0])), tf.reshape(y, (-1, size))))

        full = len(order) // batch_size * batch_size
        parts = [(order[:full], batch_size)] if full else []
        if full < len(order):  # the shorter last batch is a dataset of its own
            parts.append((order[full:], len(order) - full))
        with tf.device("/cpu:0"):
            datasets = [batches(indices, size) for indices, size in parts]
        return functools.reduce(tf.data.Dataset.concatenate, datasets)

    def epoch_buffer(self, n: int) -> np.ndarray:
        """The epoch's inputs in batch order, gathered into one reused array (no 188 MB allocation per epoch)."""
        if getattr(self, "x_epoch", None) is None or len(self.x_epoch) != n:
            self.x_epoch = np.empty((n, self.sizes[0]), np.float32)
        return self.x_epoch

    def tutorial_dataset(self, order: np.ndarray, batch_size: int):
        """Seed 003's input pipeline: from_tensor_slices, a per-element map to float32, batch."""
        import tensorflow as tf

        def normalize(images, labels):
            return tf.cast(images, tf.float32), labels

        return tf.data.Dataset.from_tensor_slices((self.x_train[order], self.y_train[order])).map(normalize).batch(batch_size)

    def predict_logits(self, x: np.ndarray) -> np.ndarray:
        with keras.device(self.keras_device):
            return np.asarray(self.net.predict(x, batch_size=len(x), verbose=0), dtype=np.float32)
