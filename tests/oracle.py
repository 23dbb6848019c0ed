"""The NumPy backend run in float64: the reference the framework backends are compared against,
so that only the backend's own float32 rounding counts against it, not the oracle's."""

from __future__ import annotations

import numpy as np

from impls.numpy_impl import NumpyClassifier


class Float64Numpy(NumpyClassifier):
    dtype = np.float64
