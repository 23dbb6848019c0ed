"""pytest-benchmark micro-benchmarks: one training step and one prediction pass per backend, through
the Classifier interface, on real MNIST. Benchmarks, not tests: nothing here asserts a time.

`make bench-steps` runs them, each Keras backend in its own pytest process (KERAS_BACKEND is fixed
at import; a process benchmarks every registered default whose environment it has, selected further
with -k by backend name), saving every run (--benchmark-autosave) so --benchmark-compare shows
changes between commits."""

from __future__ import annotations

import os

import numpy as np
import pytest

from framebench.core import registry
from framebench.core.config import PRESETS
from framebench.core.harness import epoch_order, initial_weights
from tests.conftest import mnist  # noqa: F401  (a fixture)

PRESET = PRESETS["mlp"]
HOSTED = [entry for entry in registry.REGISTRY.values() if entry.variant == "default" and not registry.needs_own_process(entry)]


@pytest.fixture(params=HOSTED, ids=[entry.name for entry in HOSTED], scope="module")
def classifier(request, mnist):  # noqa: F811
    cls = registry.load(request.param)
    cls.configure(threads=os.cpu_count())
    instance = cls(model=PRESET.model, train=PRESET.train, input_size=784, num_classes=10, device="cpu", seed=0)
    instance.set_weights(initial_weights(instance.sizes, PRESET.model, 0))
    instance.prepare(mnist.x_train, mnist.y_train)
    return instance


def test_train_step(benchmark, classifier):
    """One optimisation step of batch 128 (train_epoch over a one-batch order, then sync)."""
    order = epoch_order(PRESET.train, 60_000, seed=0, epoch=0)[: PRESET.train.batch_size]
    classifier.train_epoch(order, PRESET.train.batch_size)  # warm-up: tracing and compilation
    benchmark.extra_info["backend"] = type(classifier).__name__
    benchmark(lambda: (classifier.train_epoch(order, PRESET.train.batch_size), classifier.sync()))


def test_predict(benchmark, classifier, mnist):  # noqa: F811
    """Logits of the 10,000 test images."""
    x = np.ascontiguousarray(mnist.x_test)
    classifier.predict_logits(x)
    benchmark(classifier.predict_logits, x)
