"""Model and training configuration, the presets taken from the seed tutorials, and their validation.

Every backend receives the same resolved `ModelConfig` and `TrainConfig`; nothing about the model or
the optimisation is chosen by a backend on its own.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass

from bench.errors import FrameBenchError

HIDDEN_ACTIVATIONS = ("relu", "sigmoid", "tanh")
OUTPUT_ACTIVATIONS = ("softmax", "relu", "none")
INIT_SCHEMES = {  # scheme name -> names of its parameters, in the order they are written
    "he_normal": (),
    "glorot_uniform": (),
    "normal": ("std",),
    "truncated_normal": ("std",),
    "uniform": ("low", "high"),
    "torch_default": (),
}
OPTIMIZERS = ("sgd", "momentum", "adam")
LOSSES = ("cross_entropy", "mse")
SAMPLINGS = ("permutation", "with_replacement")
# Probabilities are clipped to [PROB_CLIP, 1 - PROB_CLIP] before the log, as Keras does.
PROB_CLIP = 1e-7


@dataclass(frozen=True)
class ModelConfig:
    hidden: tuple[int, ...] = (512, 256)  # hidden layer widths, input to output
    hidden_activation: str = "relu"  # one of HIDDEN_ACTIVATIONS, applied after every hidden layer
    output_activation: str = "none"  # one of OUTPUT_ACTIVATIONS; "none" means the output is logits
    dropout: float = 0.0  # rate of inverted dropout after every hidden activation, in [0, 1)
    init: str = "he_normal"  # weight init, e.g. "he_normal", "normal(0.01)", "uniform(0, 0.1)"
    zero_biases: bool = True  # biases start at zero; if False they are drawn like the weights

    def validate(self) -> None:
        if not self.hidden or any(int(h) <= 0 for h in self.hidden):
            raise FrameBenchError(f"hidden sizes must be positive integers, got {self.hidden}; e.g. --hidden 512,256")
        _check_choice("hidden activation", self.hidden_activation, HIDDEN_ACTIVATIONS, "--hidden-activation")
        _check_choice("output activation", self.output_activation, OUTPUT_ACTIVATIONS, "--output-activation")
        if not 0.0 <= self.dropout < 1.0:
            raise FrameBenchError(f"dropout must be in [0, 1), got {self.dropout}; fix --dropout")
        parse_init(self.init)


@dataclass(frozen=True)
class TrainConfig:
    optimizer: str = "adam"  # one of OPTIMIZERS
    lr: float = 1e-3  # learning rate, constant
    momentum: float = 0.9  # momentum coefficient (optimizer "momentum" only)
    beta1: float = 0.9  # Adam's first-moment decay
    beta2: float = 0.999  # Adam's second-moment decay
    adam_eps: float = 1e-7  # Adam's epsilon (where it is added depends on the framework; see Classifier)
    loss: str = "cross_entropy"  # one of LOSSES; cross_entropy is on logits or clipped probabilities
    batch_size: int = 128  # samples per step; an epoch's last batch may be shorter
    epochs: int = 10  # passes (or fixed-length rounds of sampling) over the training set
    sampling: str = "permutation"  # "permutation" of the training set, or "with_replacement" batches
    shuffle: bool = True  # permutation only: a fresh random order each epoch, else the stored order
    steps_per_epoch: int = 0  # with_replacement only: batches drawn per epoch

    def validate(self, model: ModelConfig) -> None:
        _check_choice("optimizer", self.optimizer, OPTIMIZERS, "--optimizer")
        _check_choice("loss", self.loss, LOSSES, "--loss")
        _check_choice("sampling", self.sampling, SAMPLINGS, "--sampling")
        for name in ("lr", "batch_size", "epochs", "adam_eps"):
            if not getattr(self, name) > 0:
                raise FrameBenchError(f"{name} must be positive, got {getattr(self, name)}; fix --{name.replace('_', '-')}")
        for name in ("momentum", "beta1", "beta2"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise FrameBenchError(f"{name} must be in [0, 1), got {getattr(self, name)}; fix --{name}")
        if self.sampling == "with_replacement" and self.steps_per_epoch <= 0:
            raise FrameBenchError("sampling with_replacement needs --steps-per-epoch > 0")
        if self.loss == "cross_entropy" and model.output_activation == "relu":
            raise FrameBenchError(
                "cross_entropy needs output activation softmax (clipped probabilities) or none (logits), "
                "not relu; use --loss mse or change --output-activation"
            )


@dataclass(frozen=True)
class Preset:
    name: str  # name on the command line
    dataset: str  # dataset the preset trains on
    model: ModelConfig  # the network
    train: TrainConfig  # the optimisation
    source: str  # where it comes from, shown by `framebench list`
    target_acc: float  # test accuracy whose first crossing times time-to-accuracy (--target-acc overrides)
    seed_backend: str | None = None  # backend whose `tutorial` variant is this seed's own loop (`perf` times it here)


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset(
            name="mlp",
            dataset="mnist",
            model=ModelConfig(hidden=(512, 256), init="he_normal"),
            train=TrainConfig(optimizer="adam", lr=1e-3, batch_size=128, epochs=10),
            source="the default: 784-512-256-10 ReLU MLP, Adam",
            target_acc=0.97,
        ),
        Preset(
            name="seed000",
            dataset="mnist",
            model=ModelConfig(hidden=(512,), output_activation="softmax", init="uniform(0, 0.1)"),
            train=TrainConfig(optimizer="sgd", lr=1e-3, batch_size=128, epochs=10, shuffle=False),
            source="seed 000: TensorFlow low-level API, tf.Variable + GradientTape",
            target_acc=0.9,
            seed_backend="tf",
        ),
        Preset(
            name="seed001",
            dataset="mnist",
            model=ModelConfig(hidden=(512, 256), output_activation="relu", init="truncated_normal(0.1)"),
            train=TrainConfig(optimizer="sgd", lr=1e-3, loss="mse", batch_size=128, epochs=10),
            source="seed 001: TensorFlow/Keras, ReLU output trained with MSE on one-hot labels",
            target_acc=0.9,
        ),
        Preset(
            name="seed002",
            dataset="mnist",
            model=ModelConfig(hidden=(50,), init="normal(0.01)"),
            train=TrainConfig(
                optimizer="sgd", lr=0.1, batch_size=100, epochs=17, sampling="with_replacement", steps_per_epoch=600
            ),
            source="seed 002: NumPy two-layer net with hand-written backprop, batches drawn with replacement",
            target_acc=0.9,
            seed_backend="numpy",
        ),
        Preset(
            name="seed003",
            dataset="fashion-mnist",
            model=ModelConfig(hidden=(128,), init="glorot_uniform"),
            train=TrainConfig(optimizer="adam", lr=1e-3, batch_size=32, epochs=5),
            source="seed 003: Keras Sequential on Fashion-MNIST",
            target_acc=0.85,
            seed_backend="keras",
        ),
        Preset(
            name="seed004",
            dataset="mnist",
            model=ModelConfig(hidden=(128, 256), init="torch_default", zero_biases=False),
            train=TrainConfig(optimizer="sgd", lr=1e-3, batch_size=64, epochs=25),
            source="seed 004: PyTorch nn.Module with a DataLoader",
            target_acc=0.9,
            seed_backend="torch",
        ),
        Preset(
            name="ci",
            dataset="mnist",
            model=ModelConfig(hidden=(128,), init="he_normal"),
            train=TrainConfig(optimizer="adam", lr=1e-3, batch_size=128, epochs=2),
            source="short run for CI's accuracy thresholds (tests/test_thresholds.py); use with either dataset",
            target_acc=0.95,
        ),
    )
}


def parse_init(spec: str) -> tuple[str, tuple[float, ...]]:
    """'uniform(0, 0.1)' -> ('uniform', (0.0, 0.1)); raises a one-line error naming the valid forms."""
    match = re.fullmatch(r"\s*([a-z_]+)\s*(?:\((.*)\))?\s*", spec)
    forms = ", ".join(f"{n}({', '.join(p)})" if p else n for n, p in INIT_SCHEMES.items())
    if not match or match.group(1) not in INIT_SCHEMES:
        raise FrameBenchError(f"unknown weight init {spec!r}; use one of: {forms}")
    name, args = match.group(1), match.group(2)
    try:
        params = tuple(float(a) for a in args.split(",")) if args and args.strip() else ()
    except ValueError:
        raise FrameBenchError(f"weight init {spec!r} has a non-numeric parameter; use one of: {forms}") from None
    if len(params) != len(INIT_SCHEMES[name]):
        raise FrameBenchError(f"weight init {name} takes {len(INIT_SCHEMES[name])} parameter(s), got {spec!r}; use one of: {forms}")
    return name, params


def _check_choice(what: str, value: str, choices: tuple[str, ...], flag: str) -> None:
    if value not in choices:
        raise FrameBenchError(f"unknown {what} {value!r}; {flag} takes one of: {', '.join(choices)}")


def resolve(preset: str, model_overrides: dict, train_overrides: dict) -> tuple[ModelConfig, TrainConfig]:
    """The preset with the given fields replaced, validated; unknown presets get a one-line error."""
    if preset not in PRESETS:
        raise FrameBenchError(f"unknown preset {preset!r}; choose one of: {', '.join(PRESETS)}")
    base = PRESETS[preset]
    model = dataclasses.replace(base.model, **model_overrides)
    train = dataclasses.replace(base.train, **train_overrides)
    model.validate()
    train.validate(model)
    return model, train


def config_from_dict(data: dict) -> tuple[ModelConfig, TrainConfig]:
    """Inverse of `dataclasses.asdict` for the pair, as stored in config.json and worker specs."""
    model = dict(data["model"])
    model["hidden"] = tuple(model["hidden"])
    return ModelConfig(**model), TrainConfig(**data["train"])

