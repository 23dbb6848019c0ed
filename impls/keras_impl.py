"""Keras 3 as in tutorials 001 and 003: a Sequential of Dense (and Dropout) layers, compiled with Keras
optimisers and losses and trained by `fit`, fed the harness's batch order unshuffled.

The same code runs on whichever backend KERAS_BACKEND names; the registry gives it one name per
backend and starts each in its own process. Per-step losses are collected by a metric that writes
each step's loss into a device-side buffer, read once per epoch, because Keras's own logs only
carry the running mean and would force a host sync per step.

Mixed precision is Keras's: every layer gets the `mixed_bfloat16` or `mixed_float16` dtype policy
(fp32 variables, products and activations in the 16-bit type), the loss is computed in fp32 (a Keras
loss casts its inputs to its own dtype, float32), and fp16 wraps the optimiser in a
`LossScaleOptimizer` (dynamic loss scaling). `compute_dtype` is the dtype of the first Dense layer's
output on a sample.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable

import keras
import numpy as np
from keras import ops

from framebench.core import registry
from framebench.core.classifier import Classifier
from framebench.core.losses import Ops, loss_function
from framebench.core.opprofile import OpTime

OPS = Ops(
    softmax=lambda z: ops.softmax(z, axis=-1),
    relu=ops.relu,
    log=ops.log,
    clip=ops.clip,
    pick=lambda m, y: ops.take_along_axis(m, ops.expand_dims(y, 1), axis=1)[:, 0],
    one_hot=lambda y, like: ops.one_hot(y, like.shape[-1], dtype=like.dtype),
    mean=ops.mean,
    logits_cross_entropy=lambda z, y: ops.mean(keras.losses.sparse_categorical_crossentropy(y, z, from_logits=True)),
)
NATIVE = {"tensorflow": "tf", "torch": "torch", "jax": "jax"}  # Keras backend -> framebench backend
POLICIES = {"fp32": "float32", "tf32": "float32", "bf16": "mixed_bfloat16", "fp16": "mixed_float16"}  # precision -> dtype policy


class ProjectLoss(keras.losses.Loss):
    """framebench.core.losses' definition on the model's pre-activation output, in keras.ops. Not Keras's
    own crossentropy on a softmax output: on TensorFlow it silently swaps in the logits and skips
    the clipping that the project's definition (and Keras's docs) promise."""

    def __init__(self, *, model, train) -> None:
        super().__init__(name=f"{train.loss}_{model.output_activation}")
        self.loss = loss_function(OPS, model, train)

    def call(self, y_true, z):
        return self.loss(ops.cast(z, "float32"), ops.cast(ops.reshape(y_true, (-1,)), "int32"))


class StepLosses(keras.metrics.Metric):
    """Records every training step's loss in a buffer; `result()` is the latest one. The latest is
    kept in its own variable: reading it back from the buffer at a dynamic index made XLA's compile
    of one step (Keras on TensorFlow, jit_compile=True) take longer than whole runs."""

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
    """XLA (`jit_compile=True`) on TensorFlow and JAX, eager on torch, STEPS_PER_EXECUTION steps per
    call (one on torch, the most Keras allows there). On TensorFlow, `fit` reads a dataset of whole
    batches (`batched_dataset`)."""

    adam_form = "keras"
    precisions = {"fp32": ("cpu", "gpu"), "bf16": ("cpu", "gpu"), "tf32": ("gpu",), "fp16": ("gpu",)}
    precision_gaps = {"fp16": "fp16 (with loss scaling) is run on the GPU only; bf16 is the CPU's 16-bit training format"}
    STEPS_PER_EXECUTION = 64  # steps per compiled call; the step-loss metric still records each step
    # jit_compile per Keras backend. XLA fuses a step's small ops on TensorFlow (where Keras's own
    # "auto" means no XLA on a CPU; `KerasAuto` keeps that) and Keras uses it on JAX anyway. On
    # torch, True means torch.compile, whose compile time in the first epoch a short run does not
    # win back, so the default stays eager (`KerasXLA` keeps the compiled one). `make bench-perf`
    # measures each pair.
    JIT_COMPILE = {"tensorflow": True, "jax": True, "torch": "auto"}

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        keras.utils.set_random_seed(self.seed)
        self.keras_device = self.device  # "cpu"/"gpu": with an index ("cpu:0") Keras's torch backend loses the gradients
        with keras.device(self.keras_device):
            self.net = keras.Sequential([keras.Input(shape=(self.sizes[0],)), *self.layers()])
        self.loss_fn = ProjectLoss(model=self.model, train=self.train)
        self.step_losses: StepLosses | None = None

    def layers(self) -> list[keras.layers.Layer]:
        layers, policy = [], POLICIES[self.precision]
        for index, width in enumerate(self.sizes[1:-1]):
            layers.append(keras.layers.Dense(width, activation=self.model.hidden_activation, dtype=policy))
            if self.model.dropout > 0:
                layers.append(keras.layers.Dropout(self.model.dropout, seed=self.seed + index, dtype=policy))
        layers.append(keras.layers.Dense(self.sizes[-1], dtype=policy))  # pre-activation output; the loss applies the rest
        return layers

    @classmethod
    def native(cls) -> type[Classifier]:
        """The framework backend Keras runs on here; device checks and process settings are its."""
        return registry.load(registry.lookup(NATIVE[keras.backend.backend()]))

    @classmethod
    def available(cls, device: str) -> tuple[bool, str]:
        return cls.native().available(device)

    @classmethod
    def configure(cls, *, threads: int) -> None:
        cls.native().configure(threads=threads)

    @classmethod
    def use_tf32(cls, allowed: bool) -> None:
        cls.native().use_tf32(allowed)

    @classmethod
    def tf32_enabled(cls) -> bool:
        return cls.native().tf32_enabled()

    def compute_dtype(self) -> str:
        with keras.device(self.keras_device):
            output = self.net.layers[0](self.x_train[:1])
        dtype = keras.backend.standardize_dtype(output.dtype)
        return super().compute_dtype() if dtype == "float32" else dtype

    @classmethod
    def gpu_peak_mb(cls) -> float | None:
        return cls.native().gpu_peak_mb()

    @classmethod
    def profile_ops(cls, run: Callable[[], object]) -> list[OpTime]:
        """The profiler of the framework Keras runs on: Keras's own work shows as that framework's ops."""
        return cls.native().profile_ops(run)

    def framework_version(self) -> str:
        """Keras's version and its backend's: a run comparing framework versions needs both."""
        backend = keras.backend.backend()
        return f"keras {keras.__version__} on {backend} {importlib.import_module(backend).__version__}"

    def make_optimizer(self) -> keras.optimizers.Optimizer:
        t = self.train
        if t.optimizer == "adam":
            optimizer = keras.optimizers.Adam(learning_rate=t.lr, beta_1=t.beta1, beta_2=t.beta2, epsilon=t.adam_eps)
        else:
            optimizer = keras.optimizers.SGD(learning_rate=t.lr, momentum=t.momentum if t.optimizer == "momentum" else 0.0)
        return keras.optimizers.LossScaleOptimizer(optimizer) if self.precision == "fp16" else optimizer

    def compile(self) -> None:
        """(Re)compile: a fresh optimiser (its state reset) and a step-loss buffer for an epoch."""
        capacity = max(-(-len(self.x_train) // self.train.batch_size), self.train.steps_per_epoch)
        self.step_losses = StepLosses(self.loss_fn, capacity)
        self.net.compile(
            optimizer=self.make_optimizer(),
            loss=self.loss_fn,
            metrics=self.metrics(),
            jit_compile=self.jit_compile(),
            steps_per_execution=self.steps_per_execution(),
        )

    def metrics(self) -> list:
        return [self.step_losses]

    def jit_compile(self) -> bool | str:
        """JIT_COMPILE's choice, but no XLA for bf16 on a TensorFlow CPU: XLA:CPU converts bf16
        products to fp32 and multiplies in fp32, while TensorFlow's own kernels multiply bf16 with
        oneDNN (framebench.impls.tf_impl, the precision study's profile)."""
        backend = keras.backend.backend()
        if backend == "tensorflow" and self.device == "cpu" and self.precision == "bf16":
            return False
        return self.JIT_COMPILE[backend]

    def steps_per_execution(self) -> int:
        return 1 if keras.backend.backend() == "torch" else self.STEPS_PER_EXECUTION

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
            self.fit_epoch(order, batch_size)
        return self.step_losses.read()

    def fit_epoch(self, order: np.ndarray, batch_size: int) -> None:
        if self.feeds_batched_dataset():
            self.net.fit(self.batched_dataset(order, batch_size), epochs=1, shuffle=False, verbose=0)
        else:
            x = self.epoch_buffer(len(order))
            np.take(self.x_train, order, axis=0, out=x)
            self.net.fit(x, self.y_train[order], batch_size=batch_size, epochs=1, shuffle=False, verbose=0)

    def feeds_batched_dataset(self) -> bool:
        """Whether `fit` reads `batched_dataset` (and `prepare` keeps the training set as tensors for it)."""
        return keras.backend.backend() == "tensorflow"

    def batched_dataset(self, order: np.ndarray, batch_size: int):
        """The epoch's batches as a tf.data.Dataset whose elements are already whole batches: one
        gather of the epoch in TensorFlow, then slices of it. Fed NumPy arrays, Keras on TensorFlow
        slices and gathers every batch in tf.data, which is slower on every preset with identical
        step losses; on JAX the arrays were as fast or faster, so other Keras backends keep them
        (measured side by side, two models in one process, alternating epochs)."""
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
        """The epoch's inputs in batch order, gathered into one reused array (no fresh epoch-sized allocation per epoch)."""
        if getattr(self, "x_epoch", None) is None or len(self.x_epoch) != n:
            self.x_epoch = np.empty((n, self.sizes[0]), np.float32)
        return self.x_epoch

    def predict_logits(self, x: np.ndarray) -> np.ndarray:
        with keras.device(self.keras_device):
            return np.asarray(self.net.predict(x, batch_size=len(x), verbose=0), dtype=np.float32)


class KerasAuto(KerasClassifier):
    """Keras's own choice of compilation, jit_compile="auto" (on a TensorFlow CPU: no XLA)."""

    def jit_compile(self) -> bool | str:
        return "auto"


class KerasXLA(KerasClassifier):
    """jit_compile=True where the default is eager (on torch this means torch.compile)."""

    def jit_compile(self) -> bool | str:
        return True


class KerasTutorial(KerasAuto):
    """Tutorial 003's way: a tf.data pipeline mapped element by element and batched, one `fit` per epoch
    that executes one step per call (steps_per_execution=1), with the tutorial's accuracy metric and
    Keras's default compilation."""

    def metrics(self) -> list:
        return [self.step_losses, "accuracy"]

    def steps_per_execution(self) -> int:
        return 1

    def feeds_batched_dataset(self) -> bool:
        return False

    def fit_epoch(self, order: np.ndarray, batch_size: int) -> None:
        """Tutorial 003's input pipeline: from_tensor_slices, a per-element map to float32, batch."""
        import tensorflow as tf

        def normalize(images, labels):
            return tf.cast(images, tf.float32), labels

        dataset = tf.data.Dataset.from_tensor_slices((self.x_train[order], self.y_train[order])).map(normalize).batch(batch_size)
        self.net.fit(dataset, epochs=1, verbose=0)
