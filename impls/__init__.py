"""The one registry of backends. Modules are imported only when a backend is asked for by name, so
importing the harness never imports TensorFlow, PyTorch or JAX."""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass, field

from bench.errors import FrameBenchError


@dataclass(frozen=True)
class BackendSpec:
    name: str  # the name users type (--backends NAME)
    module: str  # module under impls/ holding the Classifier subclass
    class_name: str  # the Classifier subclass in that module
    summary: str  # one line for `framebench list`
    env: dict[str, str] = field(default_factory=dict)  # environment its process must start with
    gemm_library: str = "numpy"  # library whose GEMMs this backend's own matrix products run on


REGISTRY: dict[str, BackendSpec] = {
    spec.name: spec
    for spec in (
        BackendSpec("numpy", "impls.numpy_impl", "NumpyClassifier", "NumPy, hand-written forward and backward"),
        BackendSpec("tf", "impls.tf_impl", "TFClassifier", "TensorFlow low-level: tf.Variable + GradientTape + tf.function",
                    gemm_library="tf"),
        BackendSpec("keras", "impls.keras_impl", "KerasClassifier", "Keras 3 Sequential + compile/fit, TensorFlow backend",
                    {"KERAS_BACKEND": "tensorflow"}, "tf"),
        BackendSpec("torch", "impls.torch_impl", "TorchClassifier", "PyTorch nn.Module + torch.optim", gemm_library="torch"),
        BackendSpec("jax", "impls.jax_impl", "JaxClassifier", "JAX: jax.value_and_grad, the epoch in one jit-compiled lax.scan",
                    gemm_library="jax"),
        BackendSpec("keras-torch", "impls.keras_impl", "KerasClassifier", "the keras backend's code on Keras's PyTorch backend",
                    {"KERAS_BACKEND": "torch"}, "torch"),
        BackendSpec("keras-jax", "impls.keras_impl", "KerasClassifier", "the keras backend's code on Keras's JAX backend",
                    {"KERAS_BACKEND": "jax"}, "jax"),
    )
}


def plugin_specs(text: str) -> dict[str, BackendSpec]:
    """Backends kept outside this repository, from $FRAMEBENCH_PLUGINS='name=module:Class,...'."""
    specs = {}
    for entry in filter(None, (part.strip() for part in text.split(","))):
        name, _, target = entry.partition("=")
        module, _, class_name = target.partition(":")
        if not (name and module and class_name):
            raise FrameBenchError(f"FRAMEBENCH_PLUGINS entry {entry!r} is not name=module:Class")
        specs[name] = BackendSpec(name, module, class_name, f"plugin {module}:{class_name}")
    return specs


REGISTRY.update(plugin_specs(os.environ.get("FRAMEBENCH_PLUGINS", "")))


def backend_spec(name: str) -> BackendSpec:
    if name not in REGISTRY:
        raise FrameBenchError(f"unknown backend {name!r}; choose from: {', '.join(REGISTRY)} (see `framebench list`)")
    return REGISTRY[name]


def load_backend(name: str):
    """The Classifier subclass registered as `name`, importing its module now.

    The backend's environment (e.g. KERAS_BACKEND) is applied first; if a conflicting value was
    already in force when the framework was imported, this process cannot host the backend.
    """
    spec = backend_spec(name)
    for key, value in spec.env.items():
        current = os.environ.setdefault(key, value)
        if current != value:
            raise FrameBenchError(f"backend {name} needs {key}={value} but this process has {key}={current}; run it in its own process")
    try:
        module = importlib.import_module(spec.module)
    except ImportError as exc:
        raise FrameBenchError(f"backend {name} cannot be imported ({exc}); run `make install`") from None
    return getattr(module, spec.class_name)
