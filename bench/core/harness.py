"""What every backend must share: initial weights, batch order, the timed training loop, metrics.

A backend never draws its own initial weights or shuffles its own data: both come from here, from
the run's seed, so two backends given the same seed start identically and see identical batches.
"""

from __future__ import annotations

import math
import resource
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from framebench.core.classifier import Classifier
from framebench.core.config import ModelConfig, TrainConfig, parse_init
from framebench.core.data import Dataset
from framebench.core.metrics import evaluate
from framebench.errors import FrameBenchError

WEIGHTS_STREAM = 0  # seed-sequence stream for the initial weights
ORDER_STREAM = 1  # seed-sequence stream for the batch order; the epoch number follows it
HE_TRUNCATION_STD = 0.87962566103423978  # std of a unit normal truncated at +-2, as Keras corrects for


def truncated_normal(rng: np.random.Generator, std: float, shape: tuple[int, ...]) -> np.ndarray:
    """Normal(0, std) redrawn until inside +-2 std, the definition TensorFlow and Keras use."""
    values = rng.normal(0.0, std, size=shape)
    outside = np.abs(values) > 2 * std
    while outside.any():
        values[outside] = rng.normal(0.0, std, size=int(outside.sum()))
        outside = np.abs(values) > 2 * std
    return values


def draw(rng: np.random.Generator, init: str, shape: tuple[int, ...], fan_in: int, fan_out: int) -> np.ndarray:
    name, params = parse_init(init)
    if name == "he_normal":
        return truncated_normal(rng, math.sqrt(2.0 / fan_in) / HE_TRUNCATION_STD, shape)
    if name == "glorot_uniform":
        limit = math.sqrt(6.0 / (fan_in + fan_out))
        return rng.uniform(-limit, limit, size=shape)
    if name == "normal":
        return rng.normal(0.0, params[0], size=shape)
    if name == "truncated_normal":
        return truncated_normal(rng, params[0], shape)
    if name == "uniform":
        return rng.uniform(params[0], params[1], size=shape)
    bound = 1.0 / math.sqrt(fan_in)  # torch_default: nn.Linear's U(+-1/sqrt(fan_in)), weights and biases
    return rng.uniform(-bound, bound, size=shape)


def initial_weights(sizes: tuple[int, ...], model: ModelConfig, seed: int) -> list[np.ndarray]:
    """`[W1 (in x out), b1, W2, b2, ...]` as float32, identical for every backend given the seed."""
    rng = np.random.default_rng([seed, WEIGHTS_STREAM])
    weights = []
    for fan_in, fan_out in zip(sizes[:-1], sizes[1:], strict=False):
        weights.append(draw(rng, model.init, (fan_in, fan_out), fan_in, fan_out).astype(np.float32))
        bias = np.zeros(fan_out) if model.zero_biases else draw(rng, model.init, (fan_out,), fan_in, fan_out)
        weights.append(bias.astype(np.float32))
    return weights


def epoch_order(train: TrainConfig, n_train: int, seed: int, epoch: int) -> np.ndarray:
    """Indices of the training samples in the order epoch `epoch` (0-based) consumes them."""
    rng = np.random.default_rng([seed, ORDER_STREAM, epoch])
    if train.sampling == "with_replacement":
        return rng.integers(0, n_train, size=train.steps_per_epoch * train.batch_size)
    return rng.permutation(n_train) if train.shuffle else np.arange(n_train)


def steps_in(order: np.ndarray, batch_size: int) -> int:
    return math.ceil(len(order) / batch_size)


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


@dataclass(frozen=True)
class EvaluationResult:
    epoch: int  # 1-based epoch the evaluation falls in
    step: int  # optimisation steps done since the start of training
    train_s: float  # training seconds so far: every train_epoch + sync, nothing else
    test_loss: float  # mean test loss, by framebench.core.metrics
    test_acc: float  # test accuracy, by framebench.core.metrics
    eval_s: float  # wall-clock seconds of predict_logits on the test set


@dataclass(frozen=True)
class EpochResult:
    epoch: int  # 1-based
    epoch_s: float  # wall-clock seconds of train_epoch + sync (summed over the epoch's chunks)
    step_losses: np.ndarray  # per-step training losses as the backend reported them
    train_loss: float  # mean of the step losses
    test_loss: float  # mean test loss at the epoch's end, by framebench.core.metrics
    test_acc: float  # test accuracy at the epoch's end, by framebench.core.metrics
    eval_s: float  # wall-clock seconds of predict_logits on the test set at the epoch's end
    evaluations: tuple[EvaluationResult, ...] = ()  # every evaluation of the epoch, in order; the last is its end


class DivergedError(FrameBenchError):
    """The training loss or the test-set predictions became non-finite, or the loss blew up
    (DIVERGENCE_FACTOR): the run ends `diverged`, never `ok` with NaN in its columns."""


DIVERGENCE_FACTOR = 10.0  # an epoch whose mean training loss exceeds this multiple of the initial loss diverged


def divergence(losses: np.ndarray, initial_loss: float, epoch: int) -> str | None:
    """Why an epoch's step losses mean the run diverged, or None: a non-finite loss, or a finite mean
    loss above DIVERGENCE_FACTOR times the initial one, the first step's, which is the loss at the
    initial weights (e.g. Adam at lr 1e6: 2.4 at the start, 1e21 over the first epoch). An initial
    loss of 0 gives no scale, so only non-finite losses count then."""
    if not np.isfinite(losses).all():
        step = int(np.argmin(np.isfinite(losses))) + 1
        return f"training diverged: non-finite loss at epoch {epoch}, step {step}; lower --lr or check the init"
    if initial_loss > 0 and losses.mean() > DIVERGENCE_FACTOR * initial_loss:
        return (
            f"training diverged: epoch {epoch}'s mean loss {losses.mean():.3g} is over {DIVERGENCE_FACTOR:g}x the initial "
            f"{initial_loss:.3g}; lower --lr or check the init"
        )
    return None


def chunk_ends(steps_before: int, steps: int, eval_every: int) -> list[int]:
    """Where an epoch of `steps` steps stops to evaluate, as step counts within it: after every step
    whose number since the start of training is a multiple of `eval_every` (0: none), and at its end."""
    if eval_every <= 0:
        return [steps]
    first = eval_every * (steps_before // eval_every + 1) - steps_before
    return [*range(first, steps, eval_every), steps]


def evaluate_test_set(classifier: Classifier, data: Dataset, model: ModelConfig, train: TrainConfig, epoch: int) -> tuple[float, ...]:
    """(test loss, test accuracy, seconds the prediction took); DivergedError on non-finite predictions."""
    start = time.perf_counter()
    logits = np.asarray(classifier.predict_logits(data.x_test))
    seconds = time.perf_counter() - start
    if not np.isfinite(logits).all():
        raise DivergedError(f"training diverged: non-finite test-set predictions (NaN or inf logits) in epoch {epoch}")
    test_loss, test_acc = evaluate(logits, data.y_test, model, train)
    return test_loss, test_acc, seconds


def train_epochs(
    classifier: Classifier,
    data: Dataset,
    model: ModelConfig,
    train: TrainConfig,
    seed: int,
    before_epoch: Callable[[int], None] | None = None,
) -> Iterator[EpochResult]:
    """Train epoch by epoch, yielding each epoch's measurements (and its evaluations) as soon as it is done.

    Only `train_epoch` + `sync` are inside the clock; the order is drawn before it starts and the
    test set is evaluated after it stops (and timed separately). With `train.eval_every` an epoch is
    trained in chunks, one `train_epoch` call on each consecutive slice of its order, each timed with
    its sync, and the test set is evaluated between them (a chunked epoch trains exactly as a whole
    one: the conformance suite's `chunked` check). `before_epoch(epoch)` (1-based), where given, runs
    before each epoch, outside the clock: a lockstep worker waits there for its turn. Raises
    DivergedError, yielding nothing for that epoch, when its losses or predictions say the run diverged.
    """
    initial_loss, steps_before, train_s = math.inf, 0, 0.0
    for epoch in range(1, train.epochs + 1):
        if before_epoch is not None:
            before_epoch(epoch)
        order = epoch_order(train, len(data.y_train), seed, epoch - 1)
        steps = steps_in(order, train.batch_size)
        chunks, evaluations, epoch_s, done = [], [], 0.0, 0
        for end in chunk_ends(steps_before, steps, train.eval_every):
            start = time.perf_counter()
            losses = classifier.train_epoch(order[done * train.batch_size : end * train.batch_size], train.batch_size)
            classifier.sync()
            elapsed = time.perf_counter() - start
            losses = np.asarray(losses, dtype=np.float64)
            if losses.shape != (end - done,):
                raise FrameBenchError(f"backend returned {losses.shape} step losses for {end - done} steps")
            if not chunks and epoch == 1:
                initial_loss = float(abs(losses[0]))
            chunks.append(losses)
            epoch_s, train_s, done = epoch_s + elapsed, train_s + elapsed, end
            if end == steps and (reason := divergence(np.concatenate(chunks), initial_loss, epoch)):
                raise DivergedError(reason)
            test_loss, test_acc, eval_s = evaluate_test_set(classifier, data, model, train, epoch)
            evaluations.append(EvaluationResult(epoch, steps_before + end, train_s, test_loss, test_acc, eval_s))
        steps_before += steps
        losses = np.concatenate(chunks)
        last = evaluations[-1]  # the epoch's end
        yield EpochResult(epoch, epoch_s, losses, float(losses.mean()), last.test_loss, last.test_acc, last.eval_s, tuple(evaluations))
