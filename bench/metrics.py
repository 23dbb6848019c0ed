"""The one NumPy definition of the loss and accuracy, used for every backend's test-set figures
and as the oracle's forward pass, so that "loss" means the same number in every column."""

from __future__ import annotations

import numpy as np

from bench.config import PROB_CLIP, ModelConfig, TrainConfig


def log_softmax(z: np.ndarray) -> np.ndarray:
    shifted = z - z.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def softmax(z: np.ndarray) -> np.ndarray:
    return np.exp(log_softmax(z))


def output_activation(z: np.ndarray, model: ModelConfig) -> np.ndarray:
    """The network's output from the last layer's pre-activation `z` (what predict_logits returns)."""
    if model.output_activation == "softmax":
        return softmax(z)
    if model.output_activation == "relu":
        return np.maximum(z, 0)
    return z


def per_sample_loss(z: np.ndarray, y: np.ndarray, model: ModelConfig, train: TrainConfig) -> np.ndarray:
    """Loss of each sample from pre-activations `z` and integer labels `y`.

    cross_entropy: from logits when the output activation is none; on softmax probabilities clipped
    to [PROB_CLIP, 1 - PROB_CLIP] (Keras's definition) when it is softmax. mse: mean over classes of
    the squared difference between the output and the one-hot label.
    """
    rows = np.arange(len(y))
    if train.loss == "cross_entropy":
        if model.output_activation == "softmax":
            return -np.log(np.clip(softmax(z)[rows, y], PROB_CLIP, 1 - PROB_CLIP))
        return -log_softmax(z)[rows, y]
    out = output_activation(z, model)
    onehot = np.zeros_like(out)
    onehot[rows, y] = 1
    return ((out - onehot) ** 2).mean(axis=1)


def evaluate(z: np.ndarray, y: np.ndarray, model: ModelConfig, train: TrainConfig) -> tuple[float, float]:
    """(mean loss, accuracy); accuracy takes the argmax of the pre-activations, which the output
    activations preserve (a ReLU output that is all zero would otherwise always predict class 0)."""
    z = z.astype(np.float64)
    return float(per_sample_loss(z, y, model, train).mean()), float((z.argmax(axis=1) == y).mean())
