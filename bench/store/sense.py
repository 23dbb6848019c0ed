"""The sense of a worker's events: what no true job can say, each rule named by the failure it causes.
A worker's message is untrusted (a backend runs in its process and can reach its channel), so the
node holds every decoded event (framebench.store.events) to these rules (Sense) before the driver
records it; the first broken rule fails the job, naming it. Fields with DRIVER metadata are the
node's and the executor's.
"""

from __future__ import annotations

import dataclasses
import math

from framebench.core.config import PRECISIONS, precision_mismatch
from framebench.store.events import End, Epoch, Evaluation, MalformedEvent, Setup, Start, kind
from framebench.store.job import NOT_RUN, OK, Job

RULE_ORDER = "a worker says start, then setup once, then its epochs (each after its evaluations), then end, and nothing after end"
RULE_EVALUATIONS = "an evaluation falls in the epoch under way, after the steps and training seconds of the one before"
RULE_EPOCHS = "epochs are numbered 1, 2, ... each once, up to the planned count"
RULE_STEPS = "an epoch carries one loss per step (samples_per_epoch / batch_size) and train_loss is their mean"
RULE_TIMES = "times and memory are finite numbers >= 0"
RULE_ACCURACY = "accuracies are in [0, 1]"
RULE_LOSSES = "losses are finite (a non-finite loss ends the job diverged before its epoch is sent)"
RULE_SAMPLES = "samples_per_epoch is at least 1 and at most what the job's configuration draws"
RULE_COMPLETE = "`ok` comes only after every planned epoch"
RULE_NOT_RUN = "`unavailable` and `unsupported` come only before setup (the job never trained)"
RULE_STATUSES = "a worker ends ok, failed, diverged, unavailable or unsupported (timeout, interrupted and lost are the driver's)"
RULE_DRIVER_FIELDS = "a worker never sets what the driver fills in (node, host, log, load, calibration, start and end times, retried)"
RULE_DTYPE = (
    "compute_dtype is a dtype framebench names, stated only after setup (the worker inspects it after the first epoch), "
    "and an ok job's is its precision's"
)
WORKER_STATUSES = (OK, "failed", "diverged", *NOT_RUN)
DTYPES = ("", *PRECISIONS.values(), "float64")  # what compute_dtype may say ("": no epoch was trained; float64: a wider backend)
MEAN_TOLERANCE = 1e-6  # relative: train_loss against the mean of the step losses it summarises
LARGEST_TRAINING_SET = 60_000  # samples in the largest training split framebench loads (MNIST, Fashion-MNIST)


class SenseViolation(MalformedEvent):
    """An event that cannot be true of its job: the job fails with the rule it broke."""


def finite(value) -> bool:
    """Whether a decoded JSON number is finite (an integer too large for a float is not)."""
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def most_samples_per_epoch(train: dict) -> int:
    """The most training samples one epoch of a job with this TrainConfig (as a dict) visits."""
    if train["sampling"] == "with_replacement":
        return train["steps_per_epoch"] * train["batch_size"]
    return LARGEST_TRAINING_SET


class Sense:
    """What a job's worker has said so far, each new event held to the rules above: `check` raises
    SenseViolation naming the first one it breaks. One per worker; events in the order they came."""

    def __init__(self, job: Job) -> None:
        self.job = job
        self.train = job.config["train"]
        self.started = False  # start came
        self.setup: Setup | None = None  # setup, once it came
        self.epochs = 0  # the number of the last epoch
        self.evaluated: Evaluation | None = None  # the last evaluation, once one came
        self.ended = False  # end came

    def check(self, event) -> None:
        handlers = {Start: self.start, Setup: self.prepared, Evaluation: self.evaluation, Epoch: self.epoch, End: self.end}
        if type(event) not in handlers:
            raise SenseViolation(f"{RULE_ORDER}: {kind(event)}, which only the executor says")
        if self.ended:
            raise SenseViolation(f"{RULE_ORDER}: {kind(event)} after end")
        if not isinstance(event, Start) and not self.started:
            raise SenseViolation(f"{RULE_ORDER}: {kind(event)} before start")
        for spec in dataclasses.fields(event):
            if spec.metadata.get("owner") == "driver" and getattr(event, spec.name) != spec.default:
                raise SenseViolation(f"{RULE_DRIVER_FIELDS}: {kind(event)} sets {spec.name}")
        handlers[type(event)](event)

    def start(self, _: Start) -> None:
        if self.started:
            raise SenseViolation(f"{RULE_ORDER}: start twice")
        self.started = True

    def prepared(self, setup: Setup) -> None:
        if self.setup is not None:
            raise SenseViolation(f"{RULE_ORDER}: setup twice")
        times(setup.setup_s)
        if not 1 <= setup.samples_per_epoch <= most_samples_per_epoch(self.train):
            raise SenseViolation(f"{RULE_SAMPLES}: samples_per_epoch {str(setup.samples_per_epoch)[:30]}")
        self.setup = setup

    def evaluation(self, evaluation: Evaluation) -> None:
        if self.setup is None:
            raise SenseViolation(f"{RULE_ORDER}: an evaluation before setup")
        before = self.evaluated or Evaluation(1, 0, 0.0, 0.0, 0.0, 0.0)
        steps = math.ceil(self.setup.samples_per_epoch / self.train["batch_size"])
        if evaluation.epoch != self.epochs + 1 or not before.step < evaluation.step <= steps * evaluation.epoch:
            raise SenseViolation(f"{RULE_EVALUATIONS}: epoch {str(evaluation.epoch)[:30]}, step {str(evaluation.step)[:30]}")
        times(evaluation.train_s, evaluation.eval_s)
        if evaluation.train_s < before.train_s:
            raise SenseViolation(f"{RULE_EVALUATIONS}: train_s {evaluation.train_s:g} after {before.train_s:g}")
        if not 0 <= evaluation.test_acc <= 1:
            raise SenseViolation(f"{RULE_ACCURACY}: test_acc {str(evaluation.test_acc)[:30]}")
        if not finite(evaluation.test_loss):
            raise SenseViolation(f"{RULE_LOSSES}: evaluation at step {evaluation.step}")
        self.evaluated = evaluation

    def epoch(self, epoch: Epoch) -> None:
        if self.setup is None:
            raise SenseViolation(f"{RULE_ORDER}: an epoch before setup")
        if epoch.epoch != self.epochs + 1 or epoch.epoch > self.train["epochs"]:
            after = f"after epoch {self.epochs}" if self.epochs else "first"
            raise SenseViolation(f"{RULE_EPOCHS}: epoch {str(epoch.epoch)[:30]} {after}, of {self.train['epochs']} planned")
        times(epoch.epoch_s, epoch.eval_s, epoch.peak_rss_mb)
        if not 0 <= epoch.test_acc <= 1:
            raise SenseViolation(f"{RULE_ACCURACY}: test_acc {str(epoch.test_acc)[:30]}")
        if not all(finite(loss) for loss in (*epoch.step_losses, epoch.train_loss, epoch.test_loss)):
            raise SenseViolation(f"{RULE_LOSSES}: epoch {epoch.epoch}")
        steps = math.ceil(self.setup.samples_per_epoch / self.train["batch_size"])
        mean = math.fsum(epoch.step_losses) / len(epoch.step_losses) if epoch.step_losses else math.nan
        if len(epoch.step_losses) != steps or not math.isclose(epoch.train_loss, mean, rel_tol=MEAN_TOLERANCE, abs_tol=MEAN_TOLERANCE):
            raise SenseViolation(f"{RULE_STEPS}: epoch {epoch.epoch} has {len(epoch.step_losses)} step losses for {steps} steps")
        self.epochs = epoch.epoch

    def end(self, end: End) -> None:
        self.ended = True
        if end.status not in WORKER_STATUSES:
            raise SenseViolation(f"{RULE_STATUSES}: end {end.status}")
        times(*(value for value in (end.peak_rss_mb, end.peak_gpu_mb, end.cpu_s) if value is not None))
        if end.status in NOT_RUN and self.setup is not None:
            raise SenseViolation(f"{RULE_NOT_RUN}: end {end.status} after setup")
        if end.status == OK and self.epochs != self.train["epochs"]:
            raise SenseViolation(f"{RULE_COMPLETE}: end ok after {self.epochs} of {self.train['epochs']} epochs")
        known = end.compute_dtype in DTYPES and (end.compute_dtype == "" or self.setup is not None)
        if not known or (end.status == OK and precision_mismatch(self.job.precision, end.compute_dtype)):
            raise SenseViolation(f"{RULE_DTYPE}: end {end.status} with compute_dtype {end.compute_dtype[:30]!r}")


def times(*values) -> None:
    """SenseViolation unless every value is a finite number >= 0."""
    for value in values:
        if not (finite(value) and value >= 0):
            raise SenseViolation(f"{RULE_TIMES}: {str(value)[:30]}")
