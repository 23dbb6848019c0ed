"""The `tf` backend compiles its epoch once: no retracing per batch, per short last batch or per epoch."""

from __future__ import annotations

import numpy as np
import pytest

from bench.config import PRESETS
from bench.harness import epoch_order, initial_weights

tf_impl = pytest.importorskip("impls.tf_impl", reason="TensorFlow is not installed")


def test_epoch_function_is_traced_once(mnist):
    model, train = PRESETS["mlp"].model, PRESETS["mlp"].train
    classifier = tf_impl.TFClassifier(model=model, train=train, input_size=784, num_classes=10, device="cpu", seed=0)
    classifier.set_weights(initial_weights(classifier.sizes, model, 0))
    classifier.prepare(mnist.x_train[:3000], mnist.y_train[:3000])
    for epoch in range(3):
        order = epoch_order(train, 3000, seed=0, epoch=epoch)[: 3000 - 37 * epoch]  # last batch of varying size
        losses = classifier.train_epoch(order, train.batch_size)
        assert losses.shape == (int(np.ceil(len(order) / train.batch_size)),)
    classifier.train_epoch(order, 64)  # another batch size, same graph
    assert classifier.traces == 1
