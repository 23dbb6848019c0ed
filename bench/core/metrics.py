"""Test-set loss and accuracy, computed by the harness from every backend's logits with the one
definition of the loss (`framebench.core.losses`) in float64, so the columns mean the same for everyone."""

from __future__ import annotations

import numpy as np

from framebench.core.config import ModelConfig, TrainConfig
from framebench.core.losses import NUMPY, loss_function


def evaluate(z: np.ndarray, y: np.ndarray, model: ModelConfig, train: TrainConfig) -> tuple[float, float]:
    """(mean loss, accuracy); accuracy takes the argmax of the pre-activations, which the output
    activations preserve (a ReLU output that is all zero would otherwise always predict class 0)."""
    z = z.astype(np.float64)
    return float(loss_function(NUMPY, model, train)(z, y)), float((z.argmax(axis=1) == y).mean())
