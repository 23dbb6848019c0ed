"""The NumPy backend's hand-written backprop against central finite differences (as seed 002's
numerical_gradient), for every hidden activation, output activation and loss, and with dropout;
and its fused loss against the one definition in framebench.core.losses.

Run in float64 so the difference quotient (step 1e-6) is accurate to ~1e-9; the stated tolerance,
relative 1e-6 of the largest gradient entry, is far below any real backprop mistake (which is O(1)).
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from framebench.core.config import ModelConfig, TrainConfig
from framebench.core.harness import initial_weights
from framebench.core.losses import NUMPY, loss_function
from framebench.testing.oracle import float64_oracle

STEP = 1e-6
TOLERANCE = 1e-6
CASES = [
    *[(act, out, "cross_entropy") for act, out in itertools.product(("relu", "sigmoid", "tanh"), ("none", "softmax"))],
    *[(act, out, "mse") for act, out in itertools.product(("relu", "sigmoid", "tanh"), ("none", "relu", "softmax"))],
]


def build(activation: str, output: str, loss: str, dropout: float = 0.0):
    """The float64 NumPy backend on a small network, with a batch of inputs and labels."""
    model = ModelConfig(
        hidden=(7, 5), hidden_activation=activation, output_activation=output, dropout=dropout, init="normal(0.5)", zero_biases=False
    )
    classifier = float64_oracle()(model=model, train=TrainConfig(loss=loss), input_size=6, num_classes=4, device="cpu", seed=0)
    classifier.set_weights([w.astype(np.float64) for w in initial_weights(classifier.sizes, model, seed=3)])
    rng = np.random.default_rng(1)
    return classifier, rng.normal(size=(9, 6)), rng.integers(0, 4, size=9)


def finite_difference(classifier, x, y, masks) -> list[np.ndarray]:
    grads = []
    for param in classifier.params:
        grad = np.zeros_like(param)
        for index in np.ndindex(param.shape):
            original = param[index]
            param[index] = original + STEP
            plus = classifier.loss_and_gradients(x, y, masks=masks)
            param[index] = original - STEP
            minus = classifier.loss_and_gradients(x, y, masks=masks)
            param[index] = original
            grad[index] = (plus - minus) / (2 * STEP)
        grads.append(grad)
    return grads


def assert_gradients_match(classifier, x, y, masks):
    classifier.loss_and_gradients(x, y, masks=masks)
    analytic = [g.copy() for g in classifier.grads]
    numeric = finite_difference(classifier, x, y, masks)
    for index, (a, n) in enumerate(zip(analytic, numeric, strict=True)):
        scale = max(np.abs(n).max(), 1e-12)
        assert np.abs(a - n).max() <= TOLERANCE * scale + 1e-10, f"parameter {index}: max error {np.abs(a - n).max():.3g}"


@pytest.mark.parametrize("activation, output, loss", CASES)
def test_backprop_matches_finite_differences(activation, output, loss):
    classifier, x, y = build(activation, output, loss)
    assert_gradients_match(classifier, x, y, masks=None)


@pytest.mark.parametrize("activation", ["relu", "sigmoid", "tanh"])
def test_backprop_through_dropout_matches_finite_differences(activation):
    classifier, x, y = build(activation, "none", "cross_entropy", dropout=0.4)
    masks = classifier.dropout_masks(len(x))
    assert any((m == 0).any() for m in masks) and any((m > 1).any() for m in masks)
    assert_gradients_match(classifier, x, y, masks)


def test_clipped_probabilities_have_zero_gradient():
    """A sample whose true-class probability is clipped contributes nothing, as with Keras's clip."""
    classifier, x, y = build("relu", "softmax", "cross_entropy")
    classifier.params[-1][:] = 0
    classifier.params[-1][0] = 60.0  # p(class 0) > 1 - 1e-7 and every other p < 1e-7: all clipped
    classifier.loss_and_gradients(x, y, masks=None)
    assert all(np.all(g == 0) for g in classifier.grads)
    classifier.params[-1][0] = 5.0  # no longer clipped: the gradient is back
    classifier.loss_and_gradients(x, y, masks=None)
    assert np.abs(classifier.grads[-1]).max() > 1e-3


@pytest.mark.parametrize("scale", [1.0, 100.0])
@pytest.mark.parametrize("activation, output, loss", CASES)
def test_fused_loss_is_the_shared_definition(activation, output, loss, scale):
    """At scale 100 softmax probabilities saturate, so the clip of the clipped cross-entropy acts."""
    classifier, x, y = build(activation, output, loss)
    fused = classifier.loss_and_gradients(scale * x, y, masks=None)
    logits = classifier.forward(scale * x, masks=None)[-1]
    assert fused == pytest.approx(loss_function(NUMPY, classifier.model, classifier.train)(logits, y), rel=1e-12)
