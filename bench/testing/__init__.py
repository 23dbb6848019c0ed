"""The conformance suite, shipped: a backend against the float64 NumPy oracle, check by check.

Same initial weights and batches go in; the same numbers must come out, within float32 tolerances
stated (and justified) next to each check. A backend's own tests run every check that applies to
it with one line, as scikit-learn's `parametrize_with_checks` does for an estimator:

    test_my_backend = framebench.testing.conformance_test(MyClassifier)

A check is generated only where it applies: for a class whose `lacks()` is None for the
configuration the check uses and whose `lacks_precision()` is None for the precision it trains at.
Items are named `<backend>-<check>[<parameter>]`, e.g. `numpy:tutorial-logits[relu]` or
`torch-trajectory-bf16[adam]`, so `-k` selects by backend, variant, check or precision.

Registry entries may be given instead of classes. An entry whose environment differs from this
process's (Keras on torch or JAX needs KERAS_BACKEND set before Keras is imported) runs in a child
pytest started with that environment: the first such item runs every selected item of that
environment in one child (framebench.testing.child), and each item then reports the outcome its
child measured. The checks, and the float64 oracle they compare with, are in framebench.testing.oracle.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from dataclasses import dataclass

import pytest

from framebench.core import registry
from framebench.core.classifier import Classifier
from framebench.core.config import PRESETS, ModelConfig, TrainConfig
from framebench.errors import FrameBenchError
from framebench.testing.child import run_child
from framebench.testing.oracle import (
    UNIT_ROUNDOFF,
    Subject,
    check_chunked,
    check_determinism,
    check_dropout,
    check_logits,
    check_optimizer_steps,
    check_precision,
    check_preset,
    check_trajectory,
    subject_of,
)

MLP = PRESETS["mlp"]
OUTCOMES = pytest.StashKey[dict]()  # per session: environment -> {node id: (outcome, message)}


@dataclass(frozen=True)
class Check:
    name: str
    run: Callable[[Subject, ModelConfig, TrainConfig], None]
    configs: dict[str | None, tuple[ModelConfig, TrainConfig]]  # parameter (None: none) -> the configuration it uses
    applies: Callable[[type[Classifier]], bool] = lambda cls: True  # beyond `lacks()`
    precision: str = "fp32"  # the precision it trains at (a class whose `lacks_precision` names it gets no item)
    slow: bool = False  # marked `slow` (the fast tier, `make test-fast`, leaves it out)


def with_optimizer(optimizer: str, lr: float) -> TrainConfig:
    return dataclasses.replace(MLP.train, optimizer=optimizer, lr=lr)


CHECKS = (
    # Logits need no training; SGD, which every backend has, keeps the check applicable to all.
    Check(
        name="logits",
        run=check_logits,
        configs={
            a: (dataclasses.replace(MLP.model, hidden_activation=a), with_optimizer("sgd", 0.05)) for a in ("relu", "sigmoid", "tanh")
        },
    ),
    Check(
        name="optimizer",
        run=check_optimizer_steps,
        configs={o: (MLP.model, with_optimizer(o, 1e-3 if o == "adam" else 0.05)) for o in ("sgd", "momentum", "adam")},
    ),
    Check(
        name="trajectory",
        run=check_trajectory,
        configs={o: (MLP.model, with_optimizer(o, 1e-3 if o == "adam" else 0.05)) for o in ("sgd", "adam")},
        slow=True,
    ),
    Check(name="preset", run=check_preset, configs={p: (PRESETS[p].model, PRESETS[p].train) for p in PRESETS if p != "mlp"}, slow=True),
    Check(
        name="determinism",
        run=check_determinism,
        configs={None: (dataclasses.replace(MLP.model, dropout=0.2), MLP.train)},
        applies=lambda cls: cls.deterministic_on_cpu,
        slow=True,
    ),
    Check(
        name="chunked",
        run=check_chunked,
        configs={o: (MLP.model, with_optimizer(o, 1e-3 if o == "adam" else 0.05)) for o in ("momentum", "adam")},
        applies=lambda cls: cls.deterministic_on_cpu,
        slow=True,
    ),
    Check(
        name="chunked-dropout",
        run=check_chunked,
        configs={None: (dataclasses.replace(MLP.model, dropout=0.2), MLP.train)},
        applies=lambda cls: cls.deterministic_on_cpu and cls.chunks_dropout_exactly,
        slow=True,
    ),
    Check(
        name="dropout",
        run=check_dropout,
        configs={
            None: (
                ModelConfig(hidden=(64,), dropout=0.3),  # its weights are set by the check
                TrainConfig(optimizer="sgd", lr=1e-30, loss="mse", batch_size=1),
            )
        },
    ),
    *(
        Check(
            name=f"trajectory-{precision}",
            run=functools.partial(check_precision, precision=precision),
            configs={"adam": (MLP.model, with_optimizer("adam", 1e-3))},
            precision=precision,
            slow=True,
        )
        for precision in UNIT_ROUNDOFF
    ),
)


@dataclass(frozen=True)
class Case:
    """One check of one subject with one parameter: one pytest item."""

    subject: Subject
    check: Check | None  # None: the subject could not be loaded, and the case reports why
    parameter: str | None = None

    @property
    def slow(self) -> bool:
        """A long check, or any check of a subject only a child pytest can host."""
        return not self.subject.hosted or (self.check is not None and self.check.slow)

    @property
    def id(self) -> str:
        check = self.check.name if self.check else "load"
        return f"{self.subject.name}-{check}" + (f"[{self.parameter}]" if self.parameter else "")

    def run(self) -> None:
        if self.check is None:
            raise FrameBenchError(self.subject.error)
        if self.subject.device == "gpu":
            usable, why = self.subject.cls.available("gpu")
            if not usable:
                pytest.skip(f"needs a GPU: {why}")
        self.check.run(self.subject, *self.check.configs[self.parameter])


def cases(*targets: type[Classifier] | registry.Entry) -> list[Case]:
    """Every check that applies to each target (a Classifier subclass or a registry entry)."""
    found = []
    for item in map(subject_of, targets):
        if item.cls is None:
            found.append(Case(subject=item, check=None))
            continue
        found += [
            Case(subject=item, check=check, parameter=parameter)
            for check in CHECKS
            if check.applies(item.cls)
            for parameter, (model, train) in check.configs.items()
            if item.cls.lacks(model, train) is None and item.cls.lacks_precision(check.precision, item.device) is None
        ]
    return found


def conformance_test(*targets: type[Classifier] | registry.Entry) -> Callable:
    """A pytest test function, parametrised over every check that applies to each target; assign
    it to a `test_...` name in a test module. Long items carry the `slow` mark (`-m "not slow"`
    leaves them out; register the marker where pytest runs with --strict-markers)."""
    found = cases(*targets)
    generated = {case.id: case for case in found}
    if len(generated) != len(found):
        raise ValueError("two targets share a name; give each class a distinct name")
    params = [pytest.param(case, id=name, marks=[pytest.mark.slow] if case.slow else []) for name, case in generated.items()]

    @pytest.mark.parametrize("case", params)
    def test_conformance(case: Case, request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> None:
        if case.subject.hosted:
            case.run()
        else:
            report_child_outcome(case, request, tmp_path_factory)

    test_conformance.conformance_cases = generated
    return test_conformance


def case_of(item: pytest.Item) -> Case | None:
    """The conformance case an item runs, if it is one of `conformance_test`'s."""
    generated = getattr(getattr(item, "function", None), "conformance_cases", None)
    if generated is None:
        return None
    return generated.get(item.name[len(item.originalname) + 1 : -1])


def report_child_outcome(case: Case, request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> None:
    """Report the outcome a child pytest with the case's environment measured for this item,
    starting that child (for every selected item of the environment) if none has run yet."""
    env_key = tuple(sorted(case.subject.variables.items()))
    outcomes = request.config.stash.setdefault(OUTCOMES, {})
    if env_key not in outcomes:
        node_ids = [
            item.nodeid
            for item in request.session.items
            if (other := case_of(item)) and not other.subject.hosted and other.subject.variables == case.subject.variables
        ]
        outcomes[env_key] = run_child(node_ids, case.subject.variables, request.config, tmp_path_factory)
    outcome, message = outcomes[env_key][request.node.nodeid]
    if outcome == "skipped":
        pytest.skip(message)
    if outcome != "passed":
        pytest.fail(f"in a child pytest with {case.subject.variables}: {message}", pytrace=False)
