"""The one interface every backend implements. Documented here once; backends only override."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import ClassVar

import numpy as np

from framebench.core.config import PRECISIONS, ModelConfig, TrainConfig, layer_sizes
from framebench.core.opprofile import OpTime
from framebench.errors import FrameBenchError


class Classifier(ABC):
    """An MLP classifier trained by one framework, driven entirely by the harness.

    The harness owns everything that must be identical across backends: the data, the initial
    weights (`set_weights`), the order in which training samples are visited (`train_epoch`'s
    `order`), the metrics (computed from `predict_logits`) and the clock. A backend only builds
    the network, runs the optimisation steps it is told to run, and reports per-step losses.

    A variant of a backend is a subclass of the backend's default class that overrides only what
    differs, registered under its own name in `framebench.core.registry`.

    Precision (`framebench.core.config.PRECISIONS`): the constructor's `precision` says how to train,
    each backend in its framework's own idiom; `lacks_precision` declares what a backend cannot do
    (the job is then `unsupported`, with the reason); `compute_dtype` reports what its matrix
    products actually ran in, read from the computation, and a job whose dtype is not the one its
    precision names fails. Mixed precision (bf16, fp16) means: products and activations in the
    16-bit type, master weights, optimiser state and the loss in fp32; fp16 with dynamic loss
    scaling. tf32 keeps fp32 storage and lets the GPU's products round their inputs to TF32.
    """

    # The form of this backend's Adam. "torch" (Kingma & Ba): epsilon added to the bias-corrected
    # sqrt(v_hat), corrections computed in float64. "keras": epsilon added to the uncorrected
    # sqrt(v), the corrections folded into the step size and computed in float32 from float32 betas
    # (1 - 0.999 is then off by 1.3e-5 relative at step 1). `framebench.core.optim` computes either
    # form's coefficients for backends that write Adam by hand; the NumPy oracle follows either.
    adam_form: ClassVar[str] = "torch"
    # The precisions this class trains at, each with the devices it trains at it on.
    precisions: ClassVar[dict[str, tuple[str, ...]]] = {"fp32": ("cpu", "gpu")}
    # Why a precision missing above is missing, where that needs saying (it becomes the unsupported row's reason).
    precision_gaps: ClassVar[dict[str, str]] = {}
    # Whether two runs with the same seed give bit-identical losses on the CPU.
    deterministic_on_cpu: ClassVar[bool] = True
    # Whether an epoch trained in chunks (--eval-every: one train_epoch call per slice of its order) draws
    # the dropout masks of one call over the whole order; without dropout every class chunks exactly.
    chunks_dropout_exactly: ClassVar[bool] = True
    # What a plugin (FRAMEBENCH_PLUGINS) needs, read from its class when its entry is first looked up
    # (the built-in backends declare theirs in `framebench.core.registry`, which imports none of them):
    # the devices it can run on at all (`available` says whether this machine has them), the
    # environment variables its process must start with (e.g. {"KERAS_BACKEND": "torch"}; its module is imported
    # once without it, to read these), and the library whose matrix products it runs on, for its own
    # GEMM floor: numpy, torch, tf or jax.
    devices: ClassVar[tuple[str, ...]] = ("cpu", "gpu")
    variables: ClassVar[dict[str, str]] = {}
    gemm_library: ClassVar[str] = "numpy"
    # Whether its process may wait between two epochs without that changing the next epoch's time
    # (lockstep, `framebench gate`: two workers take turns epoch by epoch). Every backend the harness
    # drives epoch by epoch can; one that keeps working between epochs (a background pipeline whose
    # state a pause would change) says False, and its pairs alternate whole jobs instead.
    pauses_between_epochs: ClassVar[bool] = True

    def __init__(
        self,
        *,
        model: ModelConfig,
        train: TrainConfig,
        input_size: int,
        num_classes: int,
        device: str,
        seed: int,
        precision: str = "fp32",
    ) -> None:
        """Build the network for `device` ("cpu" or "gpu") at `precision` (one `lacks_precision`
        accepts); `seed` drives the backend's own randomness (dropout masks), which frameworks draw
        differently and is therefore not shared."""
        self.model = model
        self.train = train
        self.sizes = layer_sizes(input_size, model, num_classes)
        self.device = device
        self.seed = seed
        self.precision = precision
        self.use_tf32(precision == "tf32")

    @classmethod
    def available(cls, device: str) -> tuple[bool, str]:
        """(True, "") if the backend can run on `device` here, else (False, why not)."""
        return (device == "cpu", "" if device == "cpu" else f"{cls.__name__} runs on the CPU only")

    @classmethod
    def configure(cls, *, threads: int) -> None:
        """Process-wide settings, called once before construction: `threads` CPU threads for every
        library. Backends extend this with their framework's own switches."""
        from threadpoolctl import threadpool_limits

        threadpool_limits(limits=threads)

    @classmethod
    def use_tf32(cls, allowed: bool) -> None:
        """Process-wide: whether float32 matrix products on the GPU may use TensorFloat-32 (the
        constructor sets it from its precision, the GEMM probe from its own). Nothing to switch in
        a framework without TF32."""
        return None

    @classmethod
    def tf32_enabled(cls) -> bool:
        """Whether the framework reports float32 GPU products as allowed to use TF32, read back from it."""
        return False

    @classmethod
    def lacks_precision(cls, precision: str, device: str) -> str | None:
        """None if this class can train at `precision` on `device` (`precisions` says), else the reason
        it cannot (the job is `unsupported` with it; `framebench.testing` generates no check that needs it)."""
        if device in cls.precisions.get(precision, ()):
            return None
        if precision == "tf32" and device == "cpu":
            return "tf32 is a GPU tensor-core format; CPUs have no TF32 products"
        where = ", ".join(f"{p} on {'/'.join(devices)}" for p, devices in cls.precisions.items())
        return cls.precision_gaps.get(precision) or f"{cls.__name__} trains at {where} only"

    def compute_dtype(self) -> str:
        """The dtype the matrix products of the latest training step ran in, as `PRECISIONS` names
        it ("float32", "tfloat32", "bfloat16", "float16"), inspected from the computation (an
        output's dtype, the compiled program), never echoed from the request. Called after training."""
        return "tfloat32" if self.device == "gpu" and self.tf32_enabled() else PRECISIONS["fp32"]

    @classmethod
    def lacks(cls, model: ModelConfig, train: TrainConfig) -> str | None:
        """None if this class can train the configuration, else the reason it cannot (a run gets
        status `unsupported` with it; `framebench.testing` generates no check that needs it).
        Depends on the configuration only, so it is known before any framework starts."""
        return None

    @abstractmethod
    def set_weights(self, weights: list[np.ndarray]) -> None:
        """Load `[W1 (in x out), b1, W2, b2, ...]` (float32) and reset the optimiser state."""

    @abstractmethod
    def get_weights(self) -> list[np.ndarray]:
        """The current parameters in the layout `set_weights` takes, as float32 NumPy arrays."""

    def prepare(self, x_train: np.ndarray, y_train: np.ndarray) -> None:
        """One-time, untimed: keep (and move to the device) the training set `train_epoch` indexes."""
        self.x_train = x_train
        self.y_train = y_train

    @abstractmethod
    def train_epoch(self, order: np.ndarray, batch_size: int) -> np.ndarray:
        """Run one optimisation step per consecutive `batch_size` slice of `order` (indices into the
        prepared training set, consumed exactly in that order; the last batch may be shorter) and
        return the per-step mean training losses as a float array, one entry per step."""

    @abstractmethod
    def predict_logits(self, x: np.ndarray) -> np.ndarray:
        """The last layer's pre-activations for `x`, without dropout, as a float32 NumPy array."""

    def sync(self) -> None:
        """Block until all queued device work is done, so the harness's clock reads honest times.
        Nothing to wait for where every call returns with its work done (NumPy)."""
        return None

    @classmethod
    def gpu_peak_mb(cls) -> float | None:
        """Peak GPU memory (MiB) the framework has allocated in this process so far, by its own count
        (not what its allocator reserved); None where the framework cannot tell."""
        return None

    def peak_gpu_memory_mb(self) -> float | None:
        """Peak device memory this process allocated on the GPU so far; None on the CPU."""
        return self.gpu_peak_mb() if self.device == "gpu" else None

    def framework_version(self) -> str:
        """The framework's version string, recorded with every result."""
        return ""

    @classmethod
    def profile_ops(cls, run: Callable[[], object]) -> list[OpTime]:
        """Call `run` under the framework's own profiler and return each op's self time and calls
        (`framebench.core.opprofile`), largest first. Backends whose framework has a profiler override
        this; the rest say here that they have none."""
        raise FrameBenchError(f"{cls.__name__} has no per-op profiler (Classifier.profile_ops)")

    def profile_epoch(self, order: np.ndarray, batch_size: int) -> list[OpTime]:
        """One `train_epoch` (and its `sync`) under `profile_ops`: where an epoch's time goes, op by op."""
        return self.profile_ops(lambda: (self.train_epoch(order, batch_size), self.sync()))
