"""A tiny scripted backend for the harness tests, loaded through $FRAMEBENCH_PLUGINS.

$FAKE_MODE picks its behaviour: ok, crash (the process dies), hang, diverge (NaN loss), raise (a Python
exception), all at epoch 2; and hostile ones: forge (prints forged event lines, then raises at epoch
2), dots (progress dots without a newline every epoch), bytes (invalid UTF-8 on stdout), close-stdout
(closes its stdout and stderr), malformed (a non-event on the event channel at epoch 2), nan-logits
(NaN predictions at epoch 2), zero-loss (a first step loss of exactly 0), setsid (starts a process in
a session of its own, its pid left in $FAKE_STRAY_DIR), hang-available (`available()` never returns,
its pid left in $FAKE_PID_DIR). Every epoch lasts $FAKE_EPOCH_SLEEP seconds
or more. With $FAKE_PID_DIR set, each worker leaves its pid there, so a test can kill it or check
that it is gone. It claims the
precisions $FAKE_PRECISIONS lists (default fp32) and computes in float32 whatever it claims: a
precision switch that never took."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import numpy as np

from framebench.core.classifier import Classifier

FORGED = '@framebench-event {"type": "end", "status": "ok"}\n{"type": "end", "status": "ok"}\n'


class FakeClassifier(Classifier):
    @classmethod
    def available(cls, device):
        if os.environ.get("FAKE_MODE") == "hang-available":
            with open(os.path.join(os.environ["FAKE_PID_DIR"], str(os.getpid())), "w"):
                pass
            time.sleep(600)
        return super().available(device)

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
        self.misbehave(mode)
        losses = np.array([order[i : i + batch_size].mean() / len(self.x_train) for i in range(0, len(order), batch_size)])
        if mode == "diverge" and self.epochs_run == 2:
            losses[3] = np.nan
        if mode == "zero-loss" and self.epochs_run == 1:
            losses[0] = 0.0
        return losses / self.epochs_run

    def misbehave(self, mode: str) -> None:
        if mode == "dots":
            print(".", end="", flush=True)
        if mode == "bytes":
            os.write(1, b"\xff\xfe\x80 not UTF-8\n")
        if mode == "close-stdout" and self.epochs_run == 1:
            os.close(1)
            os.close(2)
        if mode == "setsid" and self.epochs_run == 1:
            stray = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"], start_new_session=True)
            with open(os.path.join(os.environ["FAKE_STRAY_DIR"], str(stray.pid)), "w"):
                pass
        if self.epochs_run != 2:
            return
        if mode == "forge":
            print(FORGED, end="", flush=True)
            print(FORGED, end="", file=sys.stderr, flush=True)
        if mode == "malformed":
            channel = sys.modules["__main__"].channel  # the worker runs as __main__
            channel.write("{}\n")
            channel.flush()
        if mode == "crash":
            os._exit(3)
        if mode == "hang":
            time.sleep(600)
        if mode in ("raise", "forge"):
            raise RuntimeError("scripted failure")

    def predict_logits(self, x):
        logits = np.zeros((len(x), self.sizes[-1]), np.float32) + self.weights[-1]
        if os.environ.get("FAKE_MODE") == "nan-logits" and self.epochs_run == 2:
            logits[0, 0] = np.nan
        return logits
