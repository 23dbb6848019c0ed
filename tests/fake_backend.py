"""A tiny scripted backend for the harness tests, loaded through $FRAMEBENCH_PLUGINS.

$FAKE_MODE picks its behaviour at epoch 2: ok, crash (the process dies), hang, diverge (NaN loss),
raise (a Python exception); every epoch lasts $FAKE_EPOCH_SLEEP seconds or more. With $FAKE_PID_DIR
set, each worker leaves its pid there, so a test can kill it or check that it is gone. It claims the
precisions $FAKE_PRECISIONS lists (default fp32) and computes in float32 whatever it claims: a
precision switch that never took."""

from __future__ import annotations

import os
import time

import numpy as np

from framebench.core.classifier import Classifier


class FakeClassifier(Classifier):
    @classmethod
    def lacks_precision(cls, precision, device):
        claimed = os.environ.get("FAKE_PRECISIONS", "fp32").split(",")
        return None if precision in claimed else super().lacks_precision(precision, device)

    def set_weights(self, weights):
        self.weights = [w.copy() for w in weights]
        self.epochs_run = 0
        if os.environ.get("FAKE_PID_DIR"):
            with open(os.path.join(os.environ["FAKE_PID_DIR"], str(os.getpid())), "w"):
                pass

    def get_weights(self):
        return [w.copy() for w in self.weights]

    def train_epoch(self, order, batch_size):
        self.epochs_run += 1
        time.sleep(float(os.environ.get("FAKE_EPOCH_SLEEP", "0")))
        mode = os.environ.get("FAKE_MODE", "ok")
        if self.epochs_run == 2:
            if mode == "crash":
                os._exit(3)
            if mode == "hang":
                time.sleep(600)
            if mode == "raise":
                raise RuntimeError("scripted failure")
        losses = np.array([order[i : i + batch_size].mean() / len(self.x_train) for i in range(0, len(order), batch_size)])
        if mode == "diverge" and self.epochs_run == 2:
            losses[3] = np.nan
        return losses / self.epochs_run

    def predict_logits(self, x):
        return np.zeros((len(x), self.sizes[-1]), np.float32) + self.weights[-1]
