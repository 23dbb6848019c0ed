"""Adam's per-step coefficients, defined once and computed on the host for the backends that write
Adam by hand (NumPy, TensorFlow, JAX); PyTorch and Keras run their libraries' optimisers.

With the moments m = β1 m + (1 - β1) g and v = β2 v + (1 - β2) g², both forms that
`Classifier.adam_form` names step by p -= step_size * m / (sqrt(v) + eps'), with bias corrections
c1 = 1 - β1^t and c2 = 1 - β2^t:

- "torch" (Kingma & Ba): lr / c1 * m / (sqrt(v / c2) + eps), i.e. step_size = lr sqrt(c2) / c1 and
  eps' = eps sqrt(c2), with the corrections in float64 (a float32 1 - 0.999 is off by 1.3e-5);
- "keras": step_size = lr sqrt(c2) / c1 computed in float32 from float32 betas, as Keras does,
  and eps' = eps, added to the uncorrected sqrt(v).

Computing them on the host keeps the compiled steps free of powers and of the precision a device
may lack (JAX has no float64 by default); a backend receives one row per step.
"""

from __future__ import annotations

import numpy as np

from framebench.core.config import TrainConfig

FORMS = ("torch", "keras")


def adam_coefficients(train: TrainConfig, form: str, *, first_step: int, steps: int) -> np.ndarray:
    """(steps, 2) float64 rows (step_size, eps') for steps first_step + 1 ... first_step + steps."""
    if form == "torch":
        t = np.arange(first_step + 1, first_step + steps + 1, dtype=np.float64)
        root = np.sqrt(1 - train.beta2**t)
        return np.stack([train.lr * root / (1 - train.beta1**t), train.adam_eps * root], axis=1)
    if form == "keras":
        t = np.arange(first_step + 1, first_step + steps + 1, dtype=np.float32)
        one, beta1, beta2 = np.float32(1), np.float32(train.beta1), np.float32(train.beta2)
        step_size = np.float32(train.lr) * np.sqrt(one - beta2**t) / (one - beta1**t)
        return np.stack([step_size, np.full(steps, np.float32(train.adam_eps))], axis=1).astype(np.float64)
    raise ValueError(f"unknown Adam form {form!r}; one of {', '.join(FORMS)}")


class AdamSchedule:
    """Hands out the coefficients of a run's successive steps, numbered from its creation (a
    backend makes a new one whenever `set_weights` resets its optimiser state)."""

    def __init__(self, train: TrainConfig, form: str) -> None:
        self.train, self.form, self.steps_taken = train, form, 0

    def next(self, steps: int) -> np.ndarray:
        """The next `steps` rows of `adam_coefficients`."""
        coefficients = adam_coefficients(self.train, self.form, first_step=self.steps_taken, steps=steps)
        self.steps_taken += steps
        return coefficients
