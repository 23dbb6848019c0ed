"""Test-set loss and accuracy, computed by the harness from every backend's logits with the one
definition of the loss (`framebench.core.losses`) in float64, so the columns mean the same for everyone."""

from __future__ import annotations

import numpy as np

from framebench.core.config import ModelConfig, TrainConfig
from framebench.core.losses import NUMPY, loss_function

# Over 200 steps each float32 backend drifts from the float64 oracle in two ways that are not
# errors: a ReLU whose input is within rounding of 0 flips (measured: SGD stays <= 3.4e-7 relative
# for 175 steps on every backend, then one such flip in NumPy float32 gives 2.5e-4), and Adam divides
# near-zero gradient entries by sqrt(v) + 1e-7, turning their float32 noise into O(lr) steps
# (measured: <= 4.3e-5 through step 25, 2.1e-3 through 50, 5.7e-2 by step 200, TensorFlow worst).
# The bounds are (last step, relative tolerance) pairs: tight early, where a wrong formula, order or
# hyperparameter shows at once (>1e-2 by step 2), and looser late, where only the drift grows.
# The conformance suite holds every backend to it; a run's report holds two framework versions to it too.
TRAJECTORY_RTOL = {"sgd": [(150, 1e-5), (200, 1e-3)], "adam": [(25, 1e-4), (50, 5e-3), (200, 1e-1)]}


def evaluate(z: np.ndarray, y: np.ndarray, model: ModelConfig, train: TrainConfig) -> tuple[float, float]:
    """(mean loss, accuracy); accuracy takes the argmax of the pre-activations, which the output
    activations preserve (a ReLU output that is all zero would otherwise always predict class 0)."""
    z = z.astype(np.float64)
    return float(loss_function(NUMPY, model, train)(z, y)), float((z.argmax(axis=1) == y).mean())
