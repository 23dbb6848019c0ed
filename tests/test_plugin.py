"""An out-of-tree backend runs the shipped conformance suite with one line, and the suite fails a
backend that is wrong; entries needing another environment report their child pytest's outcomes."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest

from framebench.core import registry
from framebench.core.classifier import Classifier
from framebench.errors import FrameBenchError
from framebench.testing import cases, conformance_test
from tests.conftest import REPO

pytest_plugins = ["pytester"]


class TinyNumpy(Classifier):
    """A plugin backend: a plain float32 NumPy MLP, written without framebench's own backends."""

    @classmethod
    def lacks(cls, model, train) -> str | None:
        supported = (
            model.hidden_activation == "relu"
            and model.output_activation == "none"
            and model.dropout == 0
            and train.loss == "cross_entropy"
            and train.optimizer == "sgd"
        )
        return None if supported else "only ReLU, cross-entropy on logits, plain SGD, no dropout"

    def set_weights(self, weights: list[np.ndarray]) -> None:
        self.params = [np.array(w, np.float32) for w in weights]

    def get_weights(self) -> list[np.ndarray]:
        return [p.copy() for p in self.params]

    def forward(self, x: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
        """Every layer's input, and the logits."""
        inputs = [x]
        weights, biases = self.params[0::2], self.params[1::2]
        for W, b in zip(weights[:-1], biases[:-1], strict=True):
            inputs.append(np.maximum(inputs[-1] @ W + b, 0))
        return inputs, inputs[-1] @ weights[-1] + biases[-1]

    def loss_and_gradients(self, x: np.ndarray, y: np.ndarray) -> tuple[float, list[np.ndarray]]:
        inputs, z = self.forward(x)
        rows = np.arange(len(y))
        log_p = z - z.max(axis=1, keepdims=True)
        log_p -= np.log(np.exp(log_p).sum(axis=1, keepdims=True))
        delta = np.exp(log_p)
        delta[rows, y] -= 1
        delta /= len(y)
        grads: list[np.ndarray] = []
        for layer in reversed(range(len(inputs))):
            grads[:0] = [inputs[layer].T @ delta, delta.sum(axis=0)]
            if layer:
                delta = (delta @ self.params[2 * layer].T) * (inputs[layer] > 0)
        return float(-log_p[rows, y].mean()), grads

    def train_epoch(self, order: np.ndarray, batch_size: int) -> np.ndarray:
        losses = []
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            loss, grads = self.loss_and_gradients(self.x_train[idx], self.y_train[idx])
            for param, grad in zip(self.params, grads, strict=True):
                param -= self.train.lr * grad
            losses.append(loss)
        return np.asarray(losses)

    def predict_logits(self, x: np.ndarray) -> np.ndarray:
        return self.forward(x)[1]


class FrozenBiases(TinyNumpy):
    """Wrong: never trains the biases."""

    def loss_and_gradients(self, x, y):
        loss, grads = super().loss_and_gradients(x, y)
        return loss, [g if i % 2 == 0 else np.zeros_like(g) for i, g in enumerate(grads)]


class HalvedLearningRate(TinyNumpy):
    """Wrong: steps by half the configured learning rate."""

    def loss_and_gradients(self, x, y):
        loss, grads = super().loss_and_gradients(x, y)
        return loss, [g / 2 for g in grads]


test_tiny_numpy_conforms = conformance_test(TinyNumpy)


def test_only_the_checks_a_plugin_supports_are_generated():
    ids = [case.id for case in cases(TinyNumpy)]
    assert [i for i in ids if "-preset[" not in i] == ["TinyNumpy-logits[relu]", "TinyNumpy-optimizer[sgd]", "TinyNumpy-trajectory[sgd]"]
    assert any("-preset[" in i for i in ids), "no preset is plain SGD on a ReLU network"


@pytest.mark.parametrize("wrong", [FrozenBiases, HalvedLearningRate])
def test_the_suite_fails_a_wrong_plugin(wrong):
    (case,) = [case for case in cases(wrong) if case.id == f"{wrong.__name__}-optimizer[sgd]"]
    with pytest.raises(AssertionError):
        case.run()


CHILD_SUITE = """
from framebench.core.registry import Entry
from framebench.testing import conformance_test

ENV = {"FRAMEBENCH_PLUGIN_PROCESS": "child"}
test_in_a_child = conformance_test(
    Entry(backend="tiny", variant="default", target="tests.test_plugin:TinyNumpy", summary="right", variables=ENV),
    Entry(backend="tiny", variant="frozen", target="tests.test_plugin:FrozenBiases", summary="wrong", variables=ENV),
    Entry(backend="tiny", variant="gpu", target="tests.test_plugin:TinyNumpy", summary="GPU only", variables=ENV, devices=("gpu",)),
)
"""


@pytest.mark.slow
def test_an_entry_in_another_environment_reports_its_child_outcomes(pytester, monkeypatch):
    """One child runs exactly the items -k selected; each passes, fails or skips as it did there."""
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    monkeypatch.delenv("FRAMEBENCH_PLUGIN_PROCESS", raising=False)
    pytester.makepyfile(test_child_suite=CHILD_SUITE)
    result = pytester.runpytest_subprocess("-k", "logits or optimizer", "-p", "no:cacheprovider", "-rA")
    result.assert_outcomes(passed=3, failed=1, skipped=2)
    result.stdout.fnmatch_lines(
        [
            "*_ test_in_a_child?tiny:frozen-optimizer?sgd?? _*",
            "in a child pytest with {'FRAMEBENCH_PLUGIN_PROCESS': 'child'}: *",
            "E*AssertionError*",
            "*needs a GPU: TinyNumpy runs on the CPU only",
        ]
    )
    (report,) = pytester.path.rglob("outcomes.jsonl")
    run = {json.loads(line)[0].split("[", 1)[1] for line in report.read_text().splitlines()}
    assert run == {f"{name}-{check}]" for name in ("tiny", "tiny:frozen", "tiny:gpu") for check in ("logits[relu]", "optimizer[sgd]")}


class DeclaringPlugin(TinyNumpy):
    """A plugin that declares what the registry declares for the built-in backends."""

    devices = ("gpu",)
    variables = {"FRAMEBENCH_PLUGIN_PROCESS": "declared"}
    gemm_library = "torch"


class MisdeclaringPlugin(TinyNumpy):
    devices = ("tpu",)
    gemm_library = "mkl"


def test_a_plugin_class_declares_its_devices_environment_and_gemm_library():
    plugins = registry.Registry(registry.plugin_entries("tiny:declared=tests.test_plugin:DeclaringPlugin,tiny=tests.test_plugin:TinyNumpy"))
    entry = plugins[("tiny", "declared")]
    assert (entry.devices, entry.variables, entry.gemm_library, entry.error) == (
        ("gpu",),
        {"FRAMEBENCH_PLUGIN_PROCESS": "declared"},
        "torch",
        "",
    )
    plain = plugins[("tiny", "default")]
    assert (plain.devices, plain.variables, plain.gemm_library) == (("cpu", "gpu"), {}, "numpy")


def test_a_plugin_module_is_imported_when_its_entry_is_looked_up_not_before():
    plugins = registry.Registry(registry.plugin_entries("absent=no_such_module_here:Backend"))
    assert ("absent", "default") in plugins and list(plugins) == [("absent", "default")]
    assert "no_such_module_here" not in sys.modules
    assert "absent cannot be imported" in plugins[("absent", "default")].error


def test_a_wrong_declaration_spoils_only_its_entry():
    (entry,) = registry.Registry(registry.plugin_entries("bad=tests.test_plugin:MisdeclaringPlugin")).values()
    assert "devices ('tpu',) (not among ('cpu', 'gpu'))" in entry.error and "gemm_library 'mkl'" in entry.error
    with pytest.raises(FrameBenchError, match="MisdeclaringPlugin declares"):
        registry.load(entry)


FAILING_MODULES = {  # a plugin module's body, and the one line its entry must carry
    "RuntimeError": ("raise RuntimeError('no licence server\\nretry later')", "RuntimeError: retry later"),
    "SyntaxError": ("def broken(:\n    pass", "SyntaxError: "),
    "AttributeError": ("import os\nos.no_such_function()", "AttributeError: module 'os' has no attribute 'no_such_function'"),
    "SystemExit": ("import sys\nsys.exit('plugin gave up')", "SystemExit: plugin gave up"),
}


@pytest.fixture
def failing_plugins(tmp_path, monkeypatch, request):
    """FRAMEBENCH_PLUGINS entries whose modules raise as they are imported, one per FAILING_MODULES kind
    (module names unique to the test, so no import is cached), with the line each must show."""
    suffix = request.node.name.replace("[", "_").replace("]", "").replace("-", "_")
    expected = {}
    for kind, (body, line) in FAILING_MODULES.items():
        module = f"failing_{kind.lower()}_{suffix}"
        (tmp_path / f"{module}.py").write_text(body + "\n")
        expected[f"fails-{kind.lower()}"] = (f"{module}:Backend", line)
    monkeypatch.syspath_prepend(str(tmp_path))
    return expected


def test_a_plugin_module_failing_at_import_spoils_only_its_entries(failing_plugins):
    text = ",".join(f"{name}={target}" for name, (target, _) in failing_plugins.items())
    plugins = registry.Registry(registry.plugin_entries(text))
    for name, (_, line) in failing_plugins.items():
        error = plugins[(name, "default")].error
        assert f"{name} cannot be imported:" in error and line in error and len(error.splitlines()) == 1, error


def test_list_and_run_go_on_past_a_plugin_failing_at_import(failing_plugins, monkeypatch, tmp_path):
    from framebench.driver import session
    from framebench.driver.request import RunRequest
    from framebench.store.reader import load_results
    from tests.conftest import cli
    from tests.test_events import scripted_jobs

    text = ",".join(f"{name}={target}" for name, (target, _) in failing_plugins.items())
    monkeypatch.setattr(registry, "REGISTRY", registry.Registry(registry.plugin_entries(text)))
    listed = cli("list")
    assert listed.returncode == 0 and "Traceback" not in listed.stderr
    assert listed.stdout.count("not usable:") == len(failing_plugins) and "RuntimeError: retry later" in listed.stdout
    monkeypatch.setattr(registry, "REGISTRY", registry.Registry(registry.BUILTIN + registry.plugin_entries(text)))
    backends = ",".join([*failing_plugins, "numpy"])
    request = RunRequest(backends=backends, dataset="digits", floors=False, results_dir=str(tmp_path), run_id="r", threads=1)
    assert session.run(request, {}, scripted_jobs(monkeypatch, tmp_path)) == 0  # numpy's jobs say a true job: nothing trains
    runs = load_results(tmp_path / "r")["runs"].set_index("backend")
    assert runs.loc["numpy", "status"] == "ok"
    for name, (_, line) in failing_plugins.items():
        assert runs.loc[name, "status"] == "unavailable" and line in runs.loc[name, "error"]


@pytest.fixture
def hanging_available(tmp_path, monkeypatch):
    """The fake plugin whose available() never returns, its worker's pid left in the folder returned."""
    pids = tmp_path / "pids"
    pids.mkdir()
    for name, value in {"FRAMEBENCH_PLUGINS": "fake=tests.fake_backend:FakeClassifier", "FAKE_MODE": "hang-available"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("FAKE_PID_DIR", str(pids))
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    yield pids
    for pid in (int(p.name) for p in pids.iterdir()):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def test_list_bounds_an_available_that_hangs_and_leaves_no_process(hanging_available, monkeypatch):
    from framebench.driver import capabilities
    from tests.conftest import cli
    from tests.test_faults import alive

    monkeypatch.setattr(registry, "REGISTRY", registry.Registry(registry.plugin_entries("fake=tests.fake_backend:FakeClassifier")))
    monkeypatch.setattr(capabilities, "DESCRIBE_TIMEOUT_S", 3.0)
    listed = cli("list")
    assert listed.returncode == 0 and "not usable: no answer within 3 s (its import or available() hangs); killed" in listed.stdout
    pids = [int(p.name) for p in hanging_available.iterdir()]
    assert pids and not any(alive(pid) for pid in pids)


def test_a_describe_worker_dies_with_the_list_that_started_it(hanging_available):
    from tests.test_faults import alive, wait_for

    code = "from framebench.core import registry; from framebench.driver.capabilities import describe; describe(registry.lookup('fake'))"
    lister = subprocess.Popen([sys.executable, "-c", code], cwd=REPO)
    try:
        wait_for(lambda: any(hanging_available.iterdir()), "the describe worker's available()", timeout=60)
    finally:
        lister.kill()
        lister.wait()
    (pid,) = [int(p.name) for p in hanging_available.iterdir()]
    wait_for(lambda: not alive(pid), "the describe worker to die with its parent", timeout=10)


class OldNamePlugin(TinyNumpy):
    environment = {"KERAS_BACKEND": "torch"}  # what `variables` was called: silently dropped, it would run on the wrong backend


def test_a_plugin_declaring_variables_by_their_old_name_is_told_the_new_one():
    entry = registry.Registry(registry.plugin_entries("old=tests.test_plugin:OldNamePlugin"))[("old", "default")]
    assert "`environment` (its old name: declare `variables`)" in entry.error
