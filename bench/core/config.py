"""Model and training configuration, the presets taken from the tutorials the project grew from, and their validation.

Every backend receives the same resolved `ModelConfig` and `TrainConfig`; nothing about the model or
the optimisation is chosen by a backend on its own.
"""

from __future__ import annotations

import dataclasses
import inspect
import io
import math
import re
import textwrap
import tokenize
from dataclasses import dataclass

from framebench.errors import FrameBenchError

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
SCALING_STEPS = 40  # steps per epoch of the `scaling` preset, at any batch size: enough that per-epoch costs stay small
# beside per-step ones at batch 16, few enough that batch 4096 keeps `make bench-scaling` to about ten minutes on two cores
# Numeric precisions of training: fp32; tf32 (fp32 storage, TensorFloat-32 matrix products: GPU only);
# bf16 and fp16 mixed precision (products and activations in the 16-bit type, fp32 master weights,
# optimiser state and loss; fp16 with dynamic loss scaling). The dtype each must show in the matrix
# products as the backend inspects them (`Classifier.compute_dtype`).
PRECISIONS = {"fp32": "float32", "tf32": "tfloat32", "bf16": "bfloat16", "fp16": "float16"}


def precision_mismatch(precision: str, compute_dtype: str) -> str | None:
    """Why a job at `precision` whose products ran in `compute_dtype` did not train as asked, or None.
    fp32 accepts float64 (a wider backend, numpy:tutorial, keeps its tutorial's dtype, and runs.csv shows it)."""
    if compute_dtype == PRECISIONS[precision] or (precision == "fp32" and compute_dtype == "float64"):
        return None
    return f"precision {precision} requested, but the matrix products ran in {compute_dtype}, not {PRECISIONS[precision]}"


# Probabilities are clipped to [PROB_CLIP, 1 - PROB_CLIP] before the log, as Keras does.
PROB_CLIP = 1e-7


@dataclass(frozen=True)
class ModelConfig:
    hidden: tuple[int, ...] = (512, 256)  # hidden layer widths, input to output, e.g. 512,256
    hidden_activation: str = "relu"  # activation after every hidden layer
    output_activation: str = "none"  # activation of the output layer; none means the output is the logits
    dropout: float = 0.0  # rate of inverted dropout after every hidden activation, in [0, 1)
    init: str = "he_normal"  # weight init: he_normal, glorot_uniform, torch_default, normal(std), truncated_normal(std), uniform(low, high)
    zero_biases: bool = True  # biases start at zero; if not, they are drawn like the weights

    def validate(self) -> None:
        if not self.hidden or any(int(h) <= 0 for h in self.hidden):
            raise FrameBenchError(f"hidden sizes must be positive integers, got {self.hidden}; e.g. --hidden 512,256")
        check_choices(self)
        if not 0.0 <= self.dropout < 1.0:
            raise FrameBenchError(f"dropout must be in [0, 1), got {self.dropout}; fix --dropout")
        parse_init(self.init)


@dataclass(frozen=True)
class TrainConfig:
    optimizer: str = "adam"  # the optimiser, every hyperparameter explicit
    lr: float = 1e-3  # learning rate, constant
    momentum: float = 0.9  # momentum coefficient (optimizer momentum only), in [0, 1)
    beta1: float = 0.9  # Adam's first-moment decay, in [0, 1)
    beta2: float = 0.999  # Adam's second-moment decay, in [0, 1)
    adam_eps: float = 1e-7  # Adam's epsilon (where it is added depends on the framework: `framebench list`)
    loss: str = "cross_entropy"  # cross_entropy on logits or on clipped softmax probabilities; mse on one-hot labels
    batch_size: int = 128  # samples per step; an epoch's last batch may be shorter
    epochs: int = 10  # passes over the training set (or rounds of steps_per_epoch batches)
    sampling: str = "permutation"  # permutation of the training set per epoch, or batches drawn with_replacement
    shuffle: bool = True  # permutation only: a fresh random order each epoch, else the stored order
    steps_per_epoch: int = 0  # with_replacement only: batches drawn per epoch
    eval_every: int = 0  # also evaluate the test set every this many steps (0: at each epoch's end only), off the training clock

    def validate(self, model: ModelConfig) -> None:
        check_choices(self)
        for name in ("lr", "adam_eps"):
            if not 0 < getattr(self, name) < math.inf:
                raise FrameBenchError(f"{name} must be a finite number > 0, got {getattr(self, name)}; fix {flag(name)}")
        for name in ("batch_size", "epochs"):
            if getattr(self, name) <= 0:
                raise FrameBenchError(f"{name} must be positive, got {getattr(self, name)}; fix {flag(name)}")
        if self.eval_every < 0:
            raise FrameBenchError(f"eval_every must be >= 0 steps (0: at each epoch's end only), got {self.eval_every}; fix --eval-every")
        for name in ("momentum", "beta1", "beta2"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise FrameBenchError(f"{name} must be in [0, 1), got {getattr(self, name)}; fix {flag(name)}")
        if self.sampling == "with_replacement" and self.steps_per_epoch <= 0:
            raise FrameBenchError("sampling with_replacement needs --steps-per-epoch > 0")
        if self.sampling == "permutation" and self.steps_per_epoch != 0:
            raise FrameBenchError(
                "--steps-per-epoch applies only with --sampling with_replacement; with a permutation "
                "(whose steps follow from the batch size) pass --steps-per-epoch 0"
            )
        if self.loss == "cross_entropy" and model.output_activation == "relu":
            raise FrameBenchError(
                "cross_entropy needs output activation softmax (clipped probabilities) or none (logits), "
                "not relu; use --loss mse or change --output-activation"
            )


# The values a field may take, used by its validator and shown by its command-line flag.
CHOICES = {
    "hidden_activation": HIDDEN_ACTIVATIONS,
    "output_activation": OUTPUT_ACTIVATIONS,
    "optimizer": OPTIMIZERS,
    "loss": LOSSES,
    "sampling": SAMPLINGS,
}


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def check_choices(config) -> None:
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        if field.name in CHOICES and value not in CHOICES[field.name]:
            raise FrameBenchError(
                f"unknown {field.name.replace('_', ' ')} {value!r}; {flag(field.name)} takes one of: {', '.join(CHOICES[field.name])}"
            )


def field_comments(cls) -> dict[str, str]:
    """{field: the comment written after it} for a dataclass: the one description of each field,
    which the command line shows as its flag's help."""
    comments, field = {}, None
    tokens = tokenize.generate_tokens(io.StringIO(textwrap.dedent(inspect.getsource(cls))).readline)
    for token in tokens:
        if token.type == tokenize.NAME and token.start[1] == 4 and field is None:
            field = token.string
        elif token.type == tokenize.COMMENT and field:
            comments[field] = token.string.lstrip("# ").strip()
        elif token.type in (tokenize.NEWLINE, tokenize.NL):
            field = None
    return comments


@dataclass(frozen=True)
class Preset:
    name: str  # name on the command line
    dataset: str  # dataset the preset trains on
    model: ModelConfig  # the network
    train: TrainConfig  # the optimisation
    source: str  # where it comes from, shown by `framebench list`
    target_acc: float  # test accuracy whose first crossing times time-to-accuracy (--target-acc overrides)
    tutorial_backend: str | None = None  # backend whose `tutorial` variant is this tutorial's own loop (`perf` times it here)


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
            name="tutorial000",
            dataset="mnist",
            model=ModelConfig(hidden=(512,), output_activation="softmax", init="uniform(0, 0.1)"),
            train=TrainConfig(optimizer="sgd", lr=1e-3, batch_size=128, epochs=10, shuffle=False),
            source="tutorial 000: TensorFlow low-level API, tf.Variable + GradientTape",
            target_acc=0.9,
            tutorial_backend="tf",
        ),
        Preset(
            name="tutorial001",
            dataset="mnist",
            model=ModelConfig(hidden=(512, 256), output_activation="relu", init="truncated_normal(0.1)"),
            train=TrainConfig(optimizer="sgd", lr=1e-3, loss="mse", batch_size=128, epochs=10),
            source="tutorial 001: TensorFlow/Keras, ReLU output trained with MSE on one-hot labels",
            target_acc=0.9,
        ),
        Preset(
            name="tutorial002",
            dataset="mnist",
            model=ModelConfig(hidden=(50,), init="normal(0.01)"),
            train=TrainConfig(optimizer="sgd", lr=0.1, batch_size=100, epochs=17, sampling="with_replacement", steps_per_epoch=600),
            source="tutorial 002: NumPy two-layer net with hand-written backprop, batches drawn with replacement",
            target_acc=0.9,
            tutorial_backend="numpy",
        ),
        Preset(
            name="tutorial003",
            dataset="fashion-mnist",
            model=ModelConfig(hidden=(128,), init="glorot_uniform"),
            train=TrainConfig(optimizer="adam", lr=1e-3, batch_size=32, epochs=5),
            source="tutorial 003: Keras Sequential on Fashion-MNIST",
            target_acc=0.85,
            tutorial_backend="keras",
        ),
        Preset(
            name="tutorial004",
            dataset="mnist",
            model=ModelConfig(hidden=(128, 256), init="torch_default", zero_biases=False),
            train=TrainConfig(optimizer="sgd", lr=1e-3, batch_size=64, epochs=25),
            source="tutorial 004: PyTorch nn.Module with a DataLoader",
            target_acc=0.9,
            tutorial_backend="torch",
        ),
        Preset(
            name="scaling",
            dataset="mnist",
            model=ModelConfig(hidden=(512, 256), init="he_normal"),
            train=TrainConfig(
                optimizer="adam", lr=1e-3, batch_size=128, epochs=3, sampling="with_replacement", steps_per_epoch=SCALING_STEPS
            ),
            source="for --sweep: the mlp network, a fixed number of steps per epoch whatever the batch size",
            target_acc=0.97,
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
    if not all(math.isfinite(v) for v in params):
        raise FrameBenchError(f"weight init {spec!r} has a parameter that is not finite; fix --init")
    if name in ("normal", "truncated_normal") and params[0] <= 0:
        raise FrameBenchError(f"weight init {spec!r}: the standard deviation must be > 0; fix --init")
    if name == "uniform" and not params[0] < params[1]:
        raise FrameBenchError(f"weight init {spec!r}: uniform(low, high) needs low < high; fix --init")
    return name, params


def layer_sizes(input_size: int, model: ModelConfig, num_classes: int) -> tuple[int, ...]:
    """Widths of every layer, input to output: the one place the network's shape is spelled out."""
    return (input_size, *model.hidden, num_classes)


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


def samples_per_epoch(train: TrainConfig, n_train: int) -> int:
    return train.steps_per_epoch * train.batch_size if train.sampling == "with_replacement" else n_train


MODEL_FIELDS = {f.name: f for f in dataclasses.fields(ModelConfig)}
TRAIN_FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}
SWEEPABLE = [
    "hidden",
    "threads",
    "precision",
    *[name for name, f in {**MODEL_FIELDS, **TRAIN_FIELDS}.items() if f.type in ("int", "float")],
]


@dataclass(frozen=True)
class Sweep:
    field: str = ""  # the ModelConfig/TrainConfig field, threads or precision, that the sweep varies ("" for no sweep)
    values: tuple[str, ...] = ("",)  # its values as written on the command line, in order

    @classmethod
    def parse(cls, text: str | None) -> Sweep:
        """'batch_size=16,64,256' or 'hidden=512,256;1024,512' (hidden's values are separated by ';')."""
        if not text:
            return cls()
        field, _, values = text.partition("=")
        field = field.strip().replace("-", "_")
        if field not in SWEEPABLE:
            raise FrameBenchError(f"--sweep cannot vary {field!r}; it takes FIELD=V1,V2,... with FIELD one of: {', '.join(SWEEPABLE)}")
        parts = tuple(v.strip() for v in values.split(";" if field == "hidden" else ",") if v.strip())
        if len(parts) < 1 or len(set(parts)) != len(parts):
            raise FrameBenchError(
                f"--sweep {text!r} needs distinct values, e.g. --sweep batch_size=16,64,256 or --sweep 'hidden=512;1024,512'"
            )
        return cls(field, parts)

    def apply(self, model: ModelConfig, train: TrainConfig, threads: int, value: str) -> tuple[ModelConfig, TrainConfig, int]:
        """The configuration at one value of the sweep, validated. A precision sweep leaves it as it is:
        its value is the job's `precision` dimension (the plan sets it), the one place a job's precision lives."""
        if self.field == "precision":
            check_precisions(value, "--sweep precision=")
        if self.field in ("", "precision"):
            return model, train, threads
        try:
            if self.field == "hidden":
                parsed = tuple(int(v) for v in value.split(","))
            else:
                kind = int if self.field == "threads" or {**MODEL_FIELDS, **TRAIN_FIELDS}[self.field].type == "int" else float
                parsed = kind(value)
        except ValueError:
            raise FrameBenchError(f"--sweep {self.field}: {value!r} is not a valid value") from None
        if self.field == "threads":
            return model, train, parsed
        if self.field in MODEL_FIELDS:
            model = dataclasses.replace(model, **{self.field: parsed})
        else:
            train = dataclasses.replace(train, **{self.field: parsed})
        model.validate()
        train.validate(model)
        return model, train, threads


def check_precisions(text: str, flag: str) -> list[str]:
    """The precisions a comma list names, each one known."""
    names = list(dict.fromkeys(part.strip() for part in text.split(",") if part.strip()))
    for name in names or [text]:
        if name not in PRECISIONS:
            raise FrameBenchError(f"unknown precision {name!r}; {flag} takes a comma list of: {', '.join(PRECISIONS)}")
    return names
