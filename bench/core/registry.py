"""The one registry: every (backend, variant) that exists, what its process needs and where it runs.

A variant is a `Classifier` subclass of its backend's default class, registered under its own name.
Entries name their class as a string and are imported only when loaded, so importing the harness
never imports TensorFlow, PyTorch or JAX, and `framebench` never imports its backends statically.
A plugin's class declares its own devices, environment variables and GEMM library: its module is imported
when its entry is first looked up (to plan its jobs), never when the registry is.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import importlib
import importlib.util
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from framebench.errors import FrameBenchError

DEVICES = ("cpu", "gpu")
PLUGINS_VARIABLE = "FRAMEBENCH_PLUGINS"
GEMM_LIBRARIES = {  # a library whose matrix products are timed (a GEMM floor) -> the backend whose class sets it up (threads, precision)
    "numpy": "numpy",
    "torch": "torch",
    "tf": "tf",
    "jax": "jax",
    # jnp.matmul as Keras's JAX backend multiplies (keras.ops.matmul): a 16-bit result, which XLA:CPU
    # runs as an fp32 product of converted operands, where framebench's jax backend asks lax.dot
    # for an fp32 result and gets the 16-bit kernels
    "jnp.matmul": "jax",
}
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")  # a backend or variant name: it becomes part of file names


@dataclass(frozen=True)
class Entry:
    backend: str  # the name users type (--backends NAME)
    variant: str  # "default" (the backend's fastest honest implementation) or the variant's name
    target: str  # "module:Class" implementing it, imported only when the entry is loaded
    summary: str  # one line for `framebench list`
    variables: dict[str, str] = field(default_factory=dict)  # environment variables its process must start with
    gemm_library: str = "numpy"  # library whose matrix products it runs on (its own GEMM floor)
    devices: tuple[str, ...] = DEVICES  # devices it can run on at all; `available()` checks this machine
    error: str = ""  # why it cannot be used at all (a malformed plugin entry); empty when usable
    pauses: bool = True  # whether its worker may wait between epochs (Classifier.pauses_between_epochs: lockstep)
    declared_by_class: bool = False  # a plugin whose class declares variables, gemm_library and devices, not read yet

    @property
    def name(self) -> str:
        return self.backend if self.variant == "default" else f"{self.backend}:{self.variant}"

    def implementation(self) -> str:
        """The identity of the code that implements the entry (asv's benchmark version): a hash of
        its module's source, read without importing it, so `compare` can tell a change of this
        backend's code from a change of the framework under it."""
        return module_hash(self.target.partition(":")[0])


@functools.cache
def module_hash(module: str) -> str:
    """The first 12 hex digits of the SHA-256 of a module's source file ("unknown" if it has none)."""
    try:
        spec = importlib.util.find_spec(module)
        source = Path(spec.origin).read_bytes() if spec and spec.origin else None
    except (ImportError, ValueError, OSError):
        source = None
    return hashlib.sha256(source).hexdigest()[:12] if source is not None else "unknown"


def backend(
    name: str,
    module: str,
    gemm_library: str,
    variables: dict[str, str] | None = None,
    devices: tuple[str, ...] = DEVICES,
    **variants: tuple[str, str] | tuple[str, str, tuple[str, ...]],
) -> list[Entry]:
    """One backend's entries: keyword `variant=(Class, summary[, devices])`, `default` first."""
    return [
        Entry(name, variant, f"{module}:{spec[0]}", spec[1], dict(variables or {}), gemm_library, spec[2] if len(spec) > 2 else devices)
        for variant, spec in variants.items()
    ]


NUMPY, TF, KERAS, TORCH, JAX = (f"framebench.impls.{name}_impl" for name in ("numpy", "tf", "keras", "torch", "jax"))
KERAS_TUTORIAL = (
    "KerasTutorial",
    "tutorial 003's way: a tf.data pipeline mapped per element, one fit per epoch running one step per execution",
)
BUILTIN = [
    *backend(
        "numpy",
        NUMPY,
        "numpy",
        devices=("cpu",),
        default=("NumpyClassifier", "hand-written forward and backward in float32, preallocated buffers"),
        tutorial=("NumpyTutorial", "tutorial 002's loop: layer objects, float64, fresh arrays every step"),
    ),
    *backend(
        "tf",
        TF,
        "tf",
        default=(
            "TFClassifier",
            "tf.Variable + GradientTape; one tf.function per epoch, each step XLA-compiled (bf16 on a CPU: oneDNN kernels)",
        ),
        graph=("TFGraph", "the same epoch function on plain TensorFlow kernels, no XLA"),
        tutorial=("TFTutorial", "tutorial 000's loop: eager GradientTape steps on batches sliced on the host"),
    ),
    *backend(
        "keras",
        KERAS,
        "tf",
        {"KERAS_BACKEND": "tensorflow"},
        default=(
            "KerasClassifier",
            "Keras 3 Sequential + compile/fit on TensorFlow, XLA (bf16 on a CPU: oneDNN kernels), fed whole batches",
        ),
        auto=("KerasAuto", "the same with Keras's own choice, jit_compile='auto' (no XLA on a TensorFlow CPU)"),
        tutorial=KERAS_TUTORIAL,
    ),
    *backend(
        "torch",
        TORCH,
        "torch",
        default=("TorchClassifier", "nn.Module + fused torch.optim, data resident on the device"),
        compile=("TorchCompile", "the same module compiled by torch.compile"),
        cudagraphs=("TorchCudaGraphs", "torch.compile(mode='reduce-overhead'): each step replayed as a CUDA graph", ("gpu",)),
        tutorial=("TorchTutorial", "tutorial 004's loop: a DataLoader collating batches on the host, loss.item() per step"),
    ),
    *backend("jax", JAX, "jax", default=("JaxClassifier", "a pytree of arrays, jax.value_and_grad, the epoch in one jitted lax.scan")),
    *backend(
        "keras-torch",
        KERAS,
        "torch",
        {"KERAS_BACKEND": "torch"},
        default=("KerasClassifier", "the keras backend's code on Keras's PyTorch backend, eager"),
        xla=("KerasXLA", "the same with jit_compile=True, which on torch means torch.compile"),
        tutorial=KERAS_TUTORIAL,
    ),
    *backend(
        "keras-jax",
        KERAS,
        "jnp.matmul",
        {"KERAS_BACKEND": "jax"},
        default=("KerasClassifier", "the keras backend's code on Keras's JAX backend, XLA"),
        tutorial=KERAS_TUTORIAL,
    ),
]


def plugin_entries(text: str) -> list[Entry]:
    """Backends kept outside this repository: $FRAMEBENCH_PLUGINS='name[:variant]=module:Class,...'.
    A malformed entry becomes an unusable entry carrying the reason, so it spoils only itself."""
    entries = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, _, target = item.partition("=")
        backend_name, _, variant = name.strip().partition(":")
        module, _, class_name = target.strip().partition(":")
        error = "" if backend_name and module and class_name else f"{PLUGINS_VARIABLE} entry {item!r} is not name[:variant]=module:Class"
        if not error and not all(NAME_PATTERN.fullmatch(part) for part in (backend_name, variant or "default")):
            error = f"{PLUGINS_VARIABLE} entry {item!r}: a name is letters, digits, '.', '_', '+' and '-' (it becomes part of file names)"
        summary = f"plugin {target.strip()}"
        entries.append(Entry(backend_name or item, variant or "default", target.strip(), summary, error=error, declared_by_class=True))
    return entries


def declared(entry: Entry) -> Entry:
    """A plugin's entry completed with what its class declares (Classifier.devices, .variables,
    .gemm_library, .pauses_between_epochs), or carrying the reason it cannot be used."""
    try:
        cls = load(dataclasses.replace(entry, declared_by_class=False))
    except FrameBenchError as exc:
        return dataclasses.replace(entry, error=str(exc), declared_by_class=False)
    devices, variables = tuple(cls.devices), dict(cls.variables)
    problems = [
        f"devices {devices} (not among {DEVICES})" if not devices or not set(devices) <= set(DEVICES) else "",
        f"gemm_library {cls.gemm_library!r} (not one of {tuple(GEMM_LIBRARIES)})" if cls.gemm_library not in GEMM_LIBRARIES else "",
        "variables that are not a dict of strings" if not all(isinstance(v, str) for v in (*variables, *variables.values())) else "",
        "`environment` (its old name: declare `variables`)" if "environment" in vars(cls) else "",
    ]
    wrong = "; ".join(filter(None, problems))
    error = f"{entry.name}: {cls.__name__} declares {wrong}; see Classifier's class attributes" if wrong else ""
    return dataclasses.replace(
        entry,
        devices=devices,
        variables=variables,
        gemm_library=cls.gemm_library,
        pauses=bool(cls.pauses_between_epochs),
        error=error,
        declared_by_class=False,
    )


class Registry(Mapping):
    """(backend, variant) -> Entry. Names and membership import nothing; a plugin's entry is read from
    its class (`declared`) the first time it is looked up."""

    def __init__(self, entries: list[Entry]) -> None:
        self.entries = {(e.backend, e.variant): e for e in entries}

    def __getitem__(self, key: tuple[str, str]) -> Entry:
        if self.entries[key].declared_by_class:
            self.entries[key] = declared(self.entries[key])
        return self.entries[key]

    def __contains__(self, key: object) -> bool:
        return key in self.entries

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return iter(self.entries)

    def __len__(self) -> int:
        return len(self.entries)


REGISTRY = Registry(BUILTIN + plugin_entries(os.environ.get(PLUGINS_VARIABLE, "")))


def backend_names() -> list[str]:
    return list(dict.fromkeys(backend for backend, _ in REGISTRY))


def variant_names() -> list[str]:
    return list(dict.fromkeys(variant for _, variant in REGISTRY))


def lookup(backend_name: str, variant: str = "default") -> Entry:
    if (backend_name, variant) in REGISTRY:
        return REGISTRY[(backend_name, variant)]
    if backend_name not in backend_names():
        raise FrameBenchError(f"unknown backend {backend_name!r}; choose from: {', '.join(backend_names())} (see `framebench list`)")
    registered = [v for b, v in REGISTRY if b == backend_name]
    raise FrameBenchError(f"backend {backend_name} has no variant {variant!r}; it has: {', '.join(registered)}")


def load(entry: Entry):
    """The Classifier subclass of `entry`, importing its module now.

    The entry's environment (e.g. KERAS_BACKEND) is applied first; if a conflicting value was
    already in force when the framework was imported, this process cannot host the entry.
    """
    if entry.error:
        raise FrameBenchError(entry.error)
    for key, value in entry.variables.items():
        current = os.environ.setdefault(key, value)
        if current != value:
            raise FrameBenchError(f"{entry.name} needs {key}={value} but this process has {key}={current}; run it in its own process")
    module_name, _, class_name = entry.target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise FrameBenchError(f"{entry.name} cannot be imported ({last_line(exc)}); run `make install`") from None
    except (Exception, SystemExit) as exc:  # a plugin's module failing as it runs spoils only its own entries
        raise FrameBenchError(f"{entry.name} cannot be imported: {module_name} raised {last_line(exc)}") from None
    if not hasattr(module, class_name):
        raise FrameBenchError(f"{entry.name}: module {module_name} has no class {class_name}")
    return getattr(module, class_name)


def last_line(exc: BaseException) -> str:
    """An exception as one line: its type and the last line of its message (where a traceback's or a
    SyntaxError's detail ends)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return f"{type(exc).__name__}: {lines[-1]}" if lines else type(exc).__name__


def needs_own_process(entry: Entry) -> bool:
    """Whether the entry's environment differs from this process's (it must then run in a child)."""
    return any(os.environ.get(key) != value for key, value in entry.variables.items())
