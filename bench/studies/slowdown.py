"""A backend with a known, injected slowdown: the numpy default plus extra work worth a fixed share of
each epoch's own time. It is the ground truth the regression gate is measured against (`make
bench-gate`) and that tests can use: BASE and NEW run the same code, NEW with the share set.

Register it with FRAMEBENCH_PLUGINS="slowdown=framebench.studies.slowdown:SlowdownClassifier" and set the
share in FRAMEBENCH_SLOWDOWN (0.10 = 10% more time per epoch; unset or 0 = none). The extra work is
real arithmetic, not a sleep, so it slows down with the machine as the training itself does.
"""

from __future__ import annotations

import os
import time

import numpy as np

from framebench.errors import FrameBenchError
from framebench.impls.numpy_impl import NumpyClassifier

SHARE_VARIABLE = "FRAMEBENCH_SLOWDOWN"
WORK_SIZE = 64  # side of the small matrices multiplied as extra work: short enough to stop within a few microseconds of the target


def slowdown_share() -> float:
    """The share of an epoch's time added as extra work, from FRAMEBENCH_SLOWDOWN."""
    text = os.environ.get(SHARE_VARIABLE, "") or "0"
    try:
        share = float(text)
    except ValueError:
        share = -1.0
    if not 0 <= share < 10:
        raise FrameBenchError(f"{SHARE_VARIABLE}={text!r} must be a number in [0, 10), the share of time to add (0.1 = 10%)")
    return share


def busy_work(seconds: float) -> None:
    """Multiply small matrices until `seconds` of wall-clock time have passed."""
    a = np.full((WORK_SIZE, WORK_SIZE), 0.5, dtype=np.float32)
    out = np.empty_like(a)
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        np.matmul(a, a, out=out)


class SlowdownClassifier(NumpyClassifier):
    """The numpy default, each epoch followed by extra work worth FRAMEBENCH_SLOWDOWN of its time."""

    def train_epoch(self, order: np.ndarray, batch_size: int) -> np.ndarray:
        started = time.perf_counter()
        losses = super().train_epoch(order, batch_size)
        busy_work(slowdown_share() * (time.perf_counter() - started))
        return losses
