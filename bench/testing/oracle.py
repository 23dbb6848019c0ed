"""The float64 oracle and the checks against it (framebench.testing): what a backend must compute,
each check with its tolerance stated and justified beside it. Apart from the suite's generation of
pytest items (framebench.testing) because these are plain functions of a subject and a configuration,
which other tests call too (the finite-difference gradients use the oracle).
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass

import numpy as np

from framebench.core import registry
from framebench.core.classifier import Classifier
from framebench.core.config import ModelConfig, TrainConfig, precision_mismatch
from framebench.core.data import Dataset, load_dataset
from framebench.core.harness import epoch_order, initial_weights
from framebench.core.metrics import TRAJECTORY_RTOL
from framebench.errors import FrameBenchError

# float32 GEMMs summed in different orders (BLAS blocking, oneDNN, Eigen) differ by ~1e-7 relative
# per product; logits sum 784 * 512 * 256 such products, so 1e-5 relative to the logits' scale.
LOGITS_RTOL = 1e-5
# After a few SGD/momentum updates the same bound holds for the weights, relative to each tensor's scale.
WEIGHTS_RTOL = 2e-5
# Adam moves every weight by about lr whatever its gradient, so a gradient entry near zero (border
# pixels) whose float32 noise is comparable to epsilon gets a noisy step: measured up to 0.6% of lr
# after 3 steps. Any formula error (bias correction, epsilon, betas) is off by O(lr) on most entries.
ADAM_UPDATE_TOL_IN_LR = 2e-2
PRESET_STEPS_RTOL = 1e-4  # 20 steps of each preset's own configuration
# Reduced precision (tf32, bf16, fp16) against the same float64 oracle, by the rule PyTorch's
# compiler benchmarks apply to low-precision runs (torch._dynamo.utils.same with an fp64 reference):
# the low-precision run's error against float64 may be PRECISION_MULTIPLIER times the fp32 run's
# error plus a tolerance of its own, here the largest relative step-loss error over the first
# PRECISION_STEPS Adam steps (fewer than fp32's 200: rounding noise, not a formula error, grows after).
# The tolerance is PRECISION_ROUNDOFFS unit roundoffs of the format (bf16 2^-8: 7 stored mantissa
# bits; fp16 and TF32 2^-11: 10 bits): 3.1e-2 for bf16, measured 6.0e-3 (Keras) to 1.8e-2 (TF) over
# the 30 steps on this CPU, the fp32 runs 2e-7 to 1.1e-5; <= 1.1e-3 over the first 5 steps, where a
# wrong formula, order or hyperparameter is off by > 1e-2 (TRAJECTORY_RTOL's note). A path that
# silently stayed fp32 passes this rule, so the check also asks the backend's `compute_dtype`.
PRECISION_STEPS = 30
PRECISION_MULTIPLIER = 3.0
PRECISION_ROUNDOFFS = 8
UNIT_ROUNDOFF = {"tf32": 2.0**-11, "bf16": 2.0**-8, "fp16": 2.0**-11}
PRECISION_RTOL = {precision: PRECISION_ROUNDOFFS * u for precision, u in UNIT_ROUNDOFF.items()}
TEST_SAMPLES = 2000  # test images whose logits are compared


@functools.cache
def mnist() -> Dataset:
    """MNIST by the documented resolution (--data-dir/$FRAMEBENCH_DATA_DIR, cache, ...), once per process."""
    return load_dataset("mnist")


@functools.cache
def float64_oracle(adam_form: str = "torch") -> type[Classifier]:
    """The NumPy backend in float64, with Adam in `adam_form`: the reference a backend is compared
    against, so that only the backend's own float32 rounding counts against it, not the oracle's."""
    numpy_classifier = registry.load(registry.lookup("numpy"))
    return type("Float64Numpy", (numpy_classifier,), {"dtype": np.float64, "adam_form": adam_form})


@dataclass(frozen=True)
class Subject:
    """A Classifier subclass under test, under its registry name, environment and devices."""

    name: str
    cls: type[Classifier] | None  # None when it cannot be loaded (`error` says why)
    variables: dict[str, str]  # the environment variables its process needs (registry.Entry.variables)
    devices: tuple[str, ...]
    hosted: bool  # whether this process can run it; otherwise a child pytest with `env` does
    error: str = ""

    @property
    def device(self) -> str:
        return "cpu" if "cpu" in self.devices else "gpu"

    def build(self, model: ModelConfig, train: TrainConfig, data: Dataset, *, seed: int = 0, precision: str = "fp32") -> Classifier:
        """An instance with the harness's initial weights, prepared on `data`."""
        return build(self.cls, model, train, data, device=self.device, seed=seed, precision=precision)


def build(
    cls: type[Classifier], model: ModelConfig, train: TrainConfig, data: Dataset, *, device: str, seed: int, precision: str = "fp32"
) -> Classifier:
    classifier = cls(
        model=model, train=train, input_size=data.input_size, num_classes=data.num_classes, device=device, seed=seed, precision=precision
    )
    classifier.set_weights(initial_weights(classifier.sizes, model, seed))
    classifier.prepare(data.x_train, data.y_train)
    return classifier


def subject_of(target: type[Classifier] | registry.Entry) -> Subject:
    """What the suite needs to know about a class or a registry entry. A foreign-environment entry's
    class is imported here without its environment: only its configuration-only `lacks()` is read."""
    if isinstance(target, type):
        return Subject(name=target.__name__, cls=target, variables={}, devices=registry.DEVICES, hosted=True)
    hosted = not registry.needs_own_process(target)
    try:
        cls = registry.load(target if hosted else dataclasses.replace(target, variables={}))
    except FrameBenchError as exc:
        return Subject(name=target.name, cls=None, variables=target.variables, devices=target.devices, hosted=hosted, error=str(exc))
    return Subject(name=target.name, cls=cls, variables=target.variables, devices=target.devices, hosted=hosted)


@functools.cache
def oracle_logits(model: ModelConfig, train: TrainConfig) -> np.ndarray:
    """The float64 oracle's logits of the compared test images, computed once per process."""
    return build(float64_oracle(), model, train, mnist(), device="cpu", seed=0).predict_logits(mnist().x_test[:TEST_SAMPLES])


@functools.cache
def oracle_training(model: ModelConfig, train: TrainConfig, adam_form: str, steps: int) -> tuple[np.ndarray, tuple[np.ndarray, ...]]:
    """The float64 oracle's step losses and final weights over `first_steps(train, steps)`, with Adam
    in `adam_form`; computed once per process, as every subject is compared with the same numbers."""
    oracle = build(float64_oracle(adam_form), model, train, mnist(), device="cpu", seed=0)
    return oracle.train_epoch(first_steps(train, steps), train.batch_size), tuple(oracle.get_weights())


def relative_error(actual: np.ndarray, expected: np.ndarray) -> float:
    return float(np.abs(actual - expected).max() / max(np.abs(expected).max(), 1e-30))


def first_steps(train: TrainConfig, steps: int) -> np.ndarray:
    """The sample order of the first `steps` steps of epoch 0 on MNIST."""
    return epoch_order(train, len(mnist().y_train), seed=0, epoch=0)[: steps * train.batch_size]


def check_logits(subject: Subject, model: ModelConfig, train: TrainConfig) -> None:
    logits = subject.build(model, train, mnist()).predict_logits(mnist().x_test[:TEST_SAMPLES])
    expected = oracle_logits(model, train)
    assert logits.dtype == np.float32 and logits.shape == expected.shape
    error = relative_error(logits, expected)
    assert error < LOGITS_RTOL, f"logits off by {error:.3g} relative (tolerance {LOGITS_RTOL:g})"


def check_optimizer_steps(subject: Subject, model: ModelConfig, train: TrainConfig) -> None:
    """Three steps (so momentum and Adam's moments carry state) from the same weights and batches."""
    classifier = subject.build(model, train, mnist())
    start = classifier.get_weights()
    losses = classifier.train_epoch(first_steps(train, 3), train.batch_size)
    expected_losses, expected_weights = oracle_training(model, train, subject.cls.adam_form, 3)
    np.testing.assert_allclose(losses, expected_losses, rtol=LOGITS_RTOL)
    for index, (weight, expected, before) in enumerate(zip(classifier.get_weights(), expected_weights, start, strict=True)):
        assert weight.shape == expected.shape and weight.dtype == np.float32
        assert not np.array_equal(expected, before), "the oracle's step changed nothing"
        if train.optimizer == "adam":
            error = np.abs((weight - before) - (expected - before)).max() / train.lr
            assert error < ADAM_UPDATE_TOL_IN_LR, f"parameter {index}: update off by {error:.3g} lr"
        else:
            error = relative_error(weight, expected)
            assert error < WEIGHTS_RTOL, f"parameter {index} off by {error:.3g} relative (tolerance {WEIGHTS_RTOL:g})"


def check_trajectory(subject: Subject, model: ModelConfig, train: TrainConfig) -> None:
    """200 steps, the loss compared at every step against TRAJECTORY_RTOL's schedule."""
    losses = subject.build(model, train, mnist()).train_epoch(first_steps(train, 200), train.batch_size)
    expected, _ = oracle_training(model, train, subject.cls.adam_form, 200)
    assert losses.shape == expected.shape == (200,)
    assert expected[-20:].mean() < 0.5 * expected[:20].mean(), "the reference did not learn"
    step_errors = np.abs(losses - expected) / np.abs(expected)
    first = 0
    for last, rtol in TRAJECTORY_RTOL[train.optimizer]:
        worst = first + int(step_errors[first:last].argmax())
        assert step_errors[worst] < rtol, f"step {worst + 1}: relative error {step_errors[worst]:.3g} >= {rtol:g}"
        first = last


def check_precision(subject: Subject, model: ModelConfig, train: TrainConfig, *, precision: str) -> None:
    """PRECISION_STEPS steps at `precision` and at fp32, each against the float64 oracle; the products
    must have run in the precision's dtype."""
    order = first_steps(train, PRECISION_STEPS)
    expected, _ = oracle_training(model, train, subject.cls.adam_form, PRECISION_STEPS)
    low = subject.build(model, train, mnist(), precision=precision)
    low_losses = low.train_epoch(order, train.batch_size)
    full_losses = subject.build(model, train, mnist()).train_epoch(order, train.batch_size)
    assert (mismatch := precision_mismatch(precision, low.compute_dtype())) is None, mismatch
    low_error, full_error = (float((np.abs(losses - expected) / np.abs(expected)).max()) for losses in (low_losses, full_losses))
    bound = PRECISION_MULTIPLIER * full_error + PRECISION_RTOL[precision]
    assert low_error <= bound, (
        f"{precision} loss off the float64 oracle by {low_error:.3g} relative over {PRECISION_STEPS} steps; the bound is "
        f"{PRECISION_MULTIPLIER:g} x fp32's {full_error:.3g} + {PRECISION_RTOL[precision]:.3g}"
    )


def check_preset(subject: Subject, model: ModelConfig, train: TrainConfig) -> None:
    """A preset's own activations, loss, init and optimiser, 20 steps, losses compared per step."""
    losses = subject.build(model, train, mnist()).train_epoch(first_steps(train, 20), train.batch_size)
    expected, _ = oracle_training(model, train, subject.cls.adam_form, 20)
    np.testing.assert_allclose(losses, expected, rtol=PRESET_STEPS_RTOL)


def check_determinism(subject: Subject, model: ModelConfig, train: TrainConfig) -> None:
    """The same seed twice, dropout included, gives bit-identical losses."""
    order = first_steps(train, 30)
    first = subject.build(model, train, mnist(), seed=5).train_epoch(order, train.batch_size)
    second = subject.build(model, train, mnist(), seed=5).train_epoch(order, train.batch_size)
    np.testing.assert_array_equal(first, second)


CHUNKS = (7, 1, 22)  # steps per train_epoch call in the chunked check: uneven, one of a single step


def check_chunked(subject: Subject, model: ModelConfig, train: TrainConfig) -> None:
    """An epoch trained in chunks, as --eval-every trains it (one train_epoch call per consecutive slice
    of the order, the test set predicted between them), gives bit for bit the losses and weights of one
    call over the whole order: evaluations at any step then time the training they would have seen."""
    order = first_steps(train, sum(CHUNKS))
    whole = subject.build(model, train, mnist(), seed=3)
    expected = whole.train_epoch(order, train.batch_size)
    chunked = subject.build(model, train, mnist(), seed=3)
    losses, done = [], 0
    for steps in CHUNKS:
        losses.append(np.asarray(chunked.train_epoch(order[done * train.batch_size : (done + steps) * train.batch_size], train.batch_size)))
        chunked.predict_logits(mnist().x_test[:TEST_SAMPLES])
        done += steps
    np.testing.assert_array_equal(np.concatenate(losses), expected)
    for index, (weight, reference) in enumerate(zip(chunked.get_weights(), whole.get_weights(), strict=True)):
        np.testing.assert_array_equal(weight, reference, err_msg=f"parameter {index} differs after chunked training")


def check_dropout(subject: Subject, model: ModelConfig, train: TrainConfig) -> None:
    """A probe network whose loss reveals how many of H hidden units a step kept.

    Hidden units are constant 1 (W1 = 0, b1 = 1); output 0 sums them / H, the label is never 0,
    MSE on logits: per-sample loss = (z0^2 + 1) / C with z0 = kept / ((1 - rate) H). With batch
    size 1, each step's loss gives one sample's kept count exactly; the learning rate is so small
    the weights cannot move. Kept counts must be integers (inverted dropout scales by 1/(1-rate)),
    their mean within 5 standard errors of (1 - rate) H, and evaluation must give z0 = 1 exactly.
    """
    rate, hidden, steps, classes = model.dropout, model.hidden[0], 400, 10
    x, y = np.zeros((steps, 4), np.float32), np.ones(steps, np.int64)
    probe = dataclasses.replace(mnist(), x_train=x, y_train=y)
    classifier = subject.build(model, train, probe)
    w2 = np.zeros((hidden, classes), np.float32)
    w2[:, 0] = 1.0 / hidden
    classifier.set_weights([np.zeros((4, hidden), np.float32), np.ones(hidden, np.float32), w2, np.zeros(classes, np.float32)])
    losses = classifier.train_epoch(np.arange(steps), 1)
    kept = np.sqrt(np.maximum(losses * classes - 1, 0)) * (1 - rate) * hidden
    np.testing.assert_allclose(kept, np.round(kept), atol=1e-2)
    mean, stderr = (1 - rate) * hidden, np.sqrt(rate * (1 - rate) * hidden / steps)
    assert abs(kept.mean() - mean) < 5 * stderr, f"kept {kept.mean():.2f} of {hidden}, expected {mean:.2f}"
    assert kept.std() > 0, "the same units were kept at every step"
    np.testing.assert_allclose(classifier.predict_logits(x[:5])[:, 0], 1.0, rtol=1e-6)
