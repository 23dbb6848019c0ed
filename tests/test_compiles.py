"""Compiled backends compile in their first epoch only: a compile in a later epoch would be timed as
steady state (the first epoch is reported apart precisely because it carries compilation)."""

from __future__ import annotations

import numpy as np
import pytest

from framebench.core import registry
from framebench.core.config import PRESETS
from framebench.core.data import load_dataset
from framebench.core.harness import epoch_order, initial_weights

MLP = PRESETS["mlp"]
BACKEND_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"  # what jax.monitoring reports per XLA compile


def built(backend: str, n_train: int, data, precision: str = "fp32"):
    cls = registry.load(registry.lookup(backend))
    classifier = cls(
        model=MLP.model, train=MLP.train, input_size=data.input_size, num_classes=10, device="cpu", seed=0, precision=precision
    )
    classifier.set_weights(initial_weights(classifier.sizes, MLP.model, 0))
    classifier.prepare(data.x_train[:n_train], data.y_train[:n_train])
    return classifier


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["fp32", "bf16"])  # XLA-compiled steps, and oneDNN's kernels
def test_tf_epoch_function_is_traced_once(mnist, precision):
    """No retracing per batch, per short last batch, per epoch or per batch size."""
    pytest.importorskip("tensorflow", reason="TensorFlow is not installed")
    classifier = built("tf", 3000, mnist, precision)
    for epoch in range(3):
        order = epoch_order(MLP.train, 3000, seed=0, epoch=epoch)[: 3000 - 37 * epoch]  # last batch of varying size
        losses = classifier.train_epoch(order, MLP.train.batch_size)
        assert losses.shape == (int(np.ceil(len(order) / MLP.train.batch_size)),)
    classifier.train_epoch(order, 64)  # another batch size, same graph
    assert classifier.traces == 1


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["fp32", "bf16"])  # bf16: the mixed products' custom derivative
def test_jax_compiles_in_the_first_epoch_only(precision):
    """XLA compiles again when an argument's placement changes between calls (an uncommitted array
    in the first call), which once put a whole compile into every JAX run's second epoch."""
    jax = pytest.importorskip("jax", reason="JAX is not installed")
    compiles = []
    jax.monitoring.register_event_duration_secs_listener(
        lambda event, duration, **_: compiles.append(event) if event == BACKEND_COMPILE_EVENT else None
    )
    digits = load_dataset("digits")
    classifier = built("jax", len(digits.y_train), digits, precision)
    counts = []
    for epoch in range(3):
        classifier.train_epoch(epoch_order(MLP.train, len(digits.y_train), seed=0, epoch=epoch), MLP.train.batch_size)
        classifier.sync()
        counts.append(len(compiles))
    assert counts[0] > 0 and counts[2] == counts[0], f"compiles after each epoch: {counts}"
