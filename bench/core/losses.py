"""The loss and the output activation, defined once over a small namespace of framework primitives.

Every backend trains on, and the harness evaluates with (`framebench.core.metrics`), the function that
`loss_function` picks here from the configuration; a backend supplies only its framework's
primitives (`Ops`), so "loss" means the same number in every column. Only the NumPy backend's fused
loss-and-gradient keeps its own derivative code, and a test holds its loss equal to this one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from framebench.core.config import PROB_CLIP, ModelConfig, TrainConfig


@dataclass(frozen=True)
class Ops:
    """One framework's primitives on a batch `z` of rows (samples) by columns (classes), labels `y`."""

    softmax: Callable  # softmax(z), row by row
    relu: Callable  # relu(z)
    log: Callable  # log(x), elementwise
    clip: Callable  # clip(x, low, high)
    pick: Callable  # pick(m, y): m[i, y[i]] for every row i
    one_hot: Callable  # one_hot(y, like): a row of zeros with a one at y[i], in like's dtype and width
    mean: Callable  # mean(x) over every element
    # The mean over the batch of -log softmax(z)[y], through the framework's fused kernel where it has one.
    logits_cross_entropy: Callable


def output_activation(ops: Ops, model: ModelConfig) -> Callable:
    """The network's output from the last layer's pre-activation (which `predict_logits` returns)."""
    return {"softmax": ops.softmax, "relu": ops.relu, "none": lambda z: z}[model.output_activation]


def loss_function(ops: Ops, model: ModelConfig, train: TrainConfig) -> Callable:
    """`loss(z, y)`: the batch's mean loss from pre-activations `z` and integer labels `y`.

    cross_entropy: from logits when the output activation is none; on softmax probabilities clipped
    to [PROB_CLIP, 1 - PROB_CLIP] (Keras's documented definition) when it is softmax. mse: the mean
    over samples and classes of the squared difference between the output and the one-hot label.
    """
    if train.loss == "cross_entropy":
        if model.output_activation == "softmax":
            return lambda z, y: -ops.mean(ops.log(ops.clip(ops.pick(ops.softmax(z), y), PROB_CLIP, 1 - PROB_CLIP)))
        return ops.logits_cross_entropy
    activate = output_activation(ops, model)

    def mse(z, y):
        error = activate(z) - ops.one_hot(y, z)
        return ops.mean(error * error)

    return mse


def log_softmax(z: np.ndarray) -> np.ndarray:
    shifted = z - z.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def pick(m: np.ndarray, y: np.ndarray) -> np.ndarray:
    return m[np.arange(len(y)), y]


NUMPY = Ops(
    softmax=lambda z: np.exp(log_softmax(z)),
    relu=lambda z: np.maximum(z, 0),
    log=np.log,
    clip=np.clip,
    pick=pick,
    one_hot=lambda y, like: np.eye(like.shape[1], dtype=like.dtype)[y],
    mean=np.mean,
    logits_cross_entropy=lambda z, y: -np.mean(pick(log_softmax(z), y)),
)
