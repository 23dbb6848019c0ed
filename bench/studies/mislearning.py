"""A backend with a known, injected learning bug: the numpy default whose optimiser runs at 0.8 times
the learning rate it is given, the kind of slip a wrong scale in a port makes. It still learns, and
after a few epochs still clears a final-accuracy threshold; it only needs more steps to get there. It
is the ground truth the convergence check is measured against (`make bench-convergence`) and that the
tests use: `framebench check` passes it, `framebench converge` must flag it SLOWER TO CONVERGE.

Register it as a variant of numpy, so every per-backend rule (thresholds, the reference convergence
points) holds it to what numpy claims: FRAMEBENCH_PLUGINS="numpy:mislearning=framebench.studies.mislearning:MislearningNumpy".
"""

from __future__ import annotations

import dataclasses

from framebench.impls.numpy_impl import NumpyClassifier

LR_SCALE = 0.8  # the injected bug: the learning rate actually used, as a share of the configured one


class MislearningNumpy(NumpyClassifier):
    """The numpy default, its optimiser stepping at LR_SCALE x the configured learning rate."""

    def __init__(self, *, train, **kwargs) -> None:
        super().__init__(train=dataclasses.replace(train, lr=train.lr * LR_SCALE), **kwargs)
