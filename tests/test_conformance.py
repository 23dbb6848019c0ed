"""The one conformance suite: every registered backend against the NumPy oracle, one pytest item per
backend x check. Same initial weights and batches go in; the same numbers must come out, within
float32 tolerances stated (and justified) next to each check.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import pytest

from bench.config import PRESETS, ModelConfig, TrainConfig
from bench.errors import FrameBenchError
from bench.harness import epoch_order, initial_weights
from impls import load_backend
from tests.conftest import case_id, conformance_cases, needs_own_process
from tests.oracle import Float64Numpy

# float32 GEMMs summed in different orders (BLAS blocking, oneDNN, Eigen) differ by ~1e-7 relative
# per product; logits sum 784 * 512 * 256 such products, so 1e-5 relative to the logits' scale.
LOGITS_RTOL = 1e-5
# After a few SGD/momentum updates the same bound holds for the weights, relative to each tensor's scale.
WEIGHTS_RTOL = 2e-5
# Adam moves every weight by about lr whatever its gradient, so a gradient entry near zero (border
# pixels) whose float32 noise is comparable to epsilon gets a noisy step: measured up to 0.6% of lr
# after 3 steps. Any formula error (bias correction, epsilon, betas) is off by O(lr) on most entries.
ADAM_UPDATE_TOL_IN_LR = 2e-2
# Over 200 steps each float32 backend drifts from the float64 oracle in two ways that are not
# errors: a ReLU whose input is within rounding of 0 flips (measured: SGD stays <= 3.4e-7 relative
# for 175 steps on every backend, then one such flip in NumPy float32 gives 2.5e-4), and Adam divides
# near-zero gradient entries by sqrt(v) + 1e-7, turning their float32 noise into O(lr) steps
# (measured: <= 4.3e-5 through step 25, 2.1e-3 through 50, 5.7e-2 by step 200, TensorFlow worst).
# The bounds are (last step, relative tolerance) pairs: tight early, where a wrong formula, order or
# hyperparameter shows at once (>1e-2 by step 2), and looser late, where only the drift grows.
TRAJECTORY_RTOL = {"sgd": [(150, 1e-5), (200, 1e-3)], "adam": [(25, 1e-4), (50, 5e-3), (200, 1e-1)]}
PRESET_STEPS_RTOL = 1e-4  # 20 steps of each preset's own configuration
MLP = PRESETS["mlp"]


@dataclass(frozen=True)
class Case:
    cls: type  # the backend's Classifier subclass
    variant: str  # the implementation variant under test


@pytest.fixture(params=conformance_cases(), ids=case_id, scope="module")
def backend(request):
    """The backend's class and variant; a backend needing another process environment
    (KERAS_BACKEND) is run by conftest's pytest_pyfunc_call in a child pytest instead, so here
    only its name is given."""
    name, variant = request.param
    if needs_own_process(name):
        return name
    try:
        return Case(load_backend(name), variant)
    except FrameBenchError as exc:
        pytest.skip(str(exc))


def build(case: Case, model: ModelConfig, train: TrainConfig, data, *, seed: int = 0, n_train: int | None = None):
    """A backend instance with the harness's initial weights, prepared on (a prefix of) `data`."""
    reason = case.cls.lacks(model, train, case.variant, "cpu")
    if reason:
        pytest.skip(f"{case.cls.__name__}/{case.variant} declares: {reason}")
    classifier = case.cls(model=model, train=train, input_size=data.input_size, num_classes=data.num_classes, device="cpu",
                          seed=seed, variant=case.variant)
    classifier.set_weights(initial_weights(classifier.sizes, model, seed))
    classifier.prepare(data.x_train[:n_train], data.y_train[:n_train])
    return classifier


def oracle_for(case: Case, model, train, data, **kwargs) -> Float64Numpy:
    """The float64 NumPy oracle, with Adam in the form the case's framework uses."""
    oracle = build(Case(Float64Numpy, "default"), model, train, data, **kwargs)
    oracle.adam_form = case.cls.adam_form
    return oracle


def relative_error(actual: np.ndarray, expected: np.ndarray) -> float:
    return float(np.abs(actual - expected).max() / max(np.abs(expected).max(), 1e-30))


@pytest.mark.parametrize("activation", ["relu", "sigmoid", "tanh"])
def test_same_weights_give_the_same_logits(backend, mnist, activation):
    model = dataclasses.replace(MLP.model, hidden_activation=activation)
    logits = build(backend, model, MLP.train, mnist).predict_logits(mnist.x_test[:2000])
    expected = oracle_for(backend, model, MLP.train, mnist).predict_logits(mnist.x_test[:2000])
    assert logits.dtype == np.float32 and logits.shape == expected.shape
    assert relative_error(logits, expected) < LOGITS_RTOL


@pytest.mark.parametrize("optimizer", ["sgd", "momentum", "adam"])
def test_optimizer_steps_give_the_same_weights(backend, mnist, optimizer):
    """Three steps (so momentum and Adam's moments carry state) from the same weights and batches."""
    train = dataclasses.replace(MLP.train, optimizer=optimizer, lr=1e-3 if optimizer == "adam" else 0.05)
    order = epoch_order(train, len(mnist.y_train), seed=0, epoch=0)[: 3 * train.batch_size]
    classifier, oracle = build(backend, MLP.model, train, mnist), oracle_for(backend, MLP.model, train, mnist)
    start = classifier.get_weights()
    losses, expected_losses = classifier.train_epoch(order, train.batch_size), oracle.train_epoch(order, train.batch_size)
    np.testing.assert_allclose(losses, expected_losses, rtol=LOGITS_RTOL)
    for index, (weight, expected, before) in enumerate(zip(classifier.get_weights(), oracle.get_weights(), start)):
        assert weight.shape == expected.shape and weight.dtype == np.float32
        assert not np.array_equal(expected, before), "the oracle's step changed nothing"
        if optimizer == "adam":
            error = np.abs((weight - before) - (expected - before)).max() / train.lr
            assert error < ADAM_UPDATE_TOL_IN_LR, f"parameter {index}: update off by {error:.3g} lr"
        else:
            assert relative_error(weight, expected) < WEIGHTS_RTOL, f"parameter {index}"


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_two_hundred_steps_follow_numpy_at_every_step(backend, mnist, optimizer):
    train = dataclasses.replace(MLP.train, optimizer=optimizer, lr=0.05 if optimizer == "sgd" else 1e-3)
    order = epoch_order(train, len(mnist.y_train), seed=0, epoch=0)[: 200 * train.batch_size]
    losses = build(backend, MLP.model, train, mnist).train_epoch(order, train.batch_size)
    expected = oracle_for(backend, MLP.model, train, mnist).train_epoch(order, train.batch_size)
    assert losses.shape == expected.shape == (200,)
    assert expected[-20:].mean() < 0.5 * expected[:20].mean(), "the reference did not learn"
    step_errors = np.abs(losses - expected) / np.abs(expected)
    first = 0
    for last, rtol in TRAJECTORY_RTOL[optimizer]:
        worst = first + int(step_errors[first:last].argmax())
        assert step_errors[worst] < rtol, f"step {worst + 1}: relative error {step_errors[worst]:.3g} >= {rtol:g}"
        first = last


@pytest.mark.parametrize("preset", [p for p in PRESETS if p != "mlp"])
def test_every_preset_configuration_follows_numpy(backend, mnist, preset):
    """Each preset's own activations, loss, init and optimiser, 20 steps, losses compared per step."""
    model, train = PRESETS[preset].model, PRESETS[preset].train
    order = epoch_order(train, len(mnist.y_train), seed=0, epoch=0)[: 20 * train.batch_size]
    losses = build(backend, model, train, mnist).train_epoch(order, train.batch_size)
    expected = oracle_for(backend, model, train, mnist).train_epoch(order, train.batch_size)
    np.testing.assert_allclose(losses, expected, rtol=PRESET_STEPS_RTOL)


def test_same_seed_twice_gives_identical_losses(backend, mnist):
    if not backend.cls.deterministic_on_cpu:
        pytest.xfail(f"{backend.cls.__name__} declares its CPU results non-deterministic")
    model = dataclasses.replace(MLP.model, dropout=0.2)
    order = epoch_order(MLP.train, len(mnist.y_train), seed=0, epoch=0)[: 30 * MLP.train.batch_size]
    first = build(backend, model, MLP.train, mnist, seed=5).train_epoch(order, MLP.train.batch_size)
    second = build(backend, model, MLP.train, mnist, seed=5).train_epoch(order, MLP.train.batch_size)
    np.testing.assert_array_equal(first, second)


def test_dropout_keeps_the_right_fraction_and_evaluation_keeps_all(backend, mnist):
    """A probe network whose loss reveals how many of H hidden units a step kept.

    Hidden units are constant 1 (W1 = 0, b1 = 1); output 0 sums them / H, the label is never 0,
    MSE on logits: per-sample loss = (z0^2 + 1) / C with z0 = kept / ((1 - rate) H). With batch
    size 1, each step's loss gives one sample's kept count exactly; the learning rate is so small
    the weights cannot move. Kept counts must be integers (inverted dropout scales by 1/(1-rate)),
    their mean within 5 standard errors of (1 - rate) H, and evaluation must give z0 = 1 exactly.
    """
    rate, hidden, steps, classes = 0.3, 64, 400, 10
    model = ModelConfig(hidden=(hidden,), dropout=rate, init="normal(0)")
    train = TrainConfig(optimizer="sgd", lr=1e-30, loss="mse", batch_size=1)
    x, y = np.zeros((steps, 4), np.float32), np.ones(steps, np.int64)
    probe = dataclasses.replace(mnist, x_train=x, y_train=y)
    classifier = build(backend, model, train, probe)
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
