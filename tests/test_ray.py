"""The ray executor against a real two-node Ray cluster on this machine, every address 127.0.0.1 and
token authentication on: jobs spread over both nodes and never overlap on one, each row carries its
node and that node's floors, losses equal the local executor's, a node killed mid-matrix loses no
finished row, and whatever no node can run becomes a row, not a hang."""

from __future__ import annotations

import importlib.util
import os
import secrets
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from framebench.reports.floors import load_with_floors, with_efficiencies
from framebench.store.reader import load_results
from tests.conftest import REPO

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="Ray is not installed: pip install 'framebench[ray]'"),
]

LOOPBACK = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}  # Ray then puts every node and every driver on 127.0.0.1
TOKEN = secrets.token_hex(32)
CLUSTER_ENV = {**LOOPBACK, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": TOKEN}  # what the test's nodes start with
SLOT = {"framebench_slot": 1}
NODE = {"num_cpus": 1, "resources": SLOT, "include_dashboard": False}
FAKE = "fake=tests.fake_backend:FakeClassifier"


@pytest.fixture(scope="module")
def cluster():
    """Two nodes with one slot each, requiring a token. Ray reads RAY_AUTH_MODE and the loopback switch
    when imported, its nodes inherit this process's environment, and its clients here read the token
    as they go: the settings hold for the whole module."""
    with pytest.MonkeyPatch.context() as patch:
        for name, value in CLUSTER_ENV.items():
            patch.setenv(name, value)
        from ray.cluster_utils import Cluster

        cluster = Cluster()
        cluster.add_node(**NODE)
        cluster.add_node(**NODE)
        assert cluster.address.startswith("127.0.0.1:")
        yield cluster
        cluster.shutdown()


def node_name(ray_node) -> str:
    return f"{socket.gethostname()}-{ray_node.node_id[:8]}"  # nodes sharing a host are told apart by their Ray id


@pytest.fixture(scope="module")
def quick_probes(tmp_path_factory) -> str:
    """A PYTHONPATH on which TensorFlow and JAX fail to import, so GEMM probes time NumPy and PyTorch only
    (importing TensorFlow alone takes seconds per probe); it reaches the nodes as the driver's import path."""
    stubs = tmp_path_factory.mktemp("stubs")
    for library in ("tensorflow", "jax"):
        (stubs / f"{library}.py").write_text(f"raise ImportError('{library} is hidden by tests/test_ray.py to keep GEMM probes short')\n")
    return os.pathsep.join([str(stubs), str(REPO)])


def cli_env(token: str | None = TOKEN, **extra: str) -> dict[str, str]:
    """The CLI's environment: the cluster's token without RAY_AUTH_MODE (framebench must turn token mode
    on by itself), the repository importable for the fake plugin on every node."""
    env = {name: value for name, value in os.environ.items() if name not in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN")}
    env.update({**LOOPBACK, "PYTHONPATH": str(REPO), "FRAMEBENCH_PLUGINS": FAKE, **extra})
    return {**env, "RAY_AUTH_TOKEN": token} if token else env


def framebench_run(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "framebench", "run", "--dataset", "digits", "--threads", "1", *args, "--results-dir", str(tmp_path)],
        cwd=REPO,
        env=env or cli_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )


def expected_floor(gemm: pd.DataFrame, run) -> float:
    """floor_epoch_s from first principles: per GEMM, the fastest probe of the fastest library on the run's own node."""
    own = gemm[(gemm["node"] == run.node) & (gemm["device"] == run.device) & (gemm["sweep_value"] == run.sweep_value)]
    step_s = own.groupby(["kind", "layer"])["seconds"].min().sum()
    return step_s * run.samples_per_epoch / run.batch_size


def test_jobs_spread_over_both_nodes_with_their_own_floors_and_the_local_losses(cluster, quick_probes, tmp_path):
    matrix = ["--backends", "numpy,fake", "--epochs", "3", "--repeats", "2", "--batch-size", "100"]
    result = framebench_run(
        tmp_path, *matrix, "--executor", "ray", "--address", cluster.address, "--run-id", "ray", env=cli_env(PYTHONPATH=quick_probes)
    )
    assert result.returncode == 0, result.stderr
    local = framebench_run(tmp_path, *matrix, "--no-floors", "--run-id", "local")
    assert local.returncode == 0, local.stderr
    tables, local_tables = load_with_floors(tmp_path / "ray"), load_with_floors(tmp_path / "local")
    runs, gemm = tables["runs"], tables["gemm"]
    names = {node_name(n) for n in cluster.list_all_nodes()}

    assert runs["status"].tolist() == ["ok"] * 4 and set(runs["node"]) == names
    assert set(runs["host"]) == {socket.gethostname()}
    for name, rows in runs.sort_values("started_at").groupby("node"):
        assert (rows["ended_at"].to_numpy()[:-1] <= rows["started_at"].to_numpy()[1:]).all(), f"jobs overlapped on {name}"
    nodes = tables["machine"]["nodes"]
    assert set(nodes) == names and all({"cpu", "cores", "gpus", "libraries"} <= set(env) and env["cores"] for env in nodes.values())

    assert set(gemm["node"]) == names and set(gemm["probe"]) == {"start", "end"} and set(gemm["library"]) == {"numpy", "torch"}
    for run in runs.itertuples():
        assert run.floor_epoch_s == pytest.approx(expected_floor(gemm, run), rel=1e-12)
    slowed = sorted(names)[0]  # ten times slower GEMMs on one node move only that node's floors
    scaled = with_efficiencies(runs, gemm.assign(seconds=gemm["seconds"].where(gemm["node"] != slowed, gemm["seconds"] * 10)))
    factor = scaled["floor_epoch_s"] / runs["floor_epoch_s"]
    assert factor[runs["node"] == slowed].round(9).eq(10).all() and factor[runs["node"] != slowed].round(9).eq(1).all()

    keys = ["backend", "variant", "device", "repeat", "attempt", "epoch", "step"]
    steps, local_steps = (t["steps"].drop(columns="run_id").sort_values(keys).reset_index(drop=True) for t in (tables, local_tables))
    pd.testing.assert_frame_equal(steps, local_steps)
    assert len(steps) == 2 * 2 * 3 * 15 and steps["loss"].nunique() > 10


def add_node(cluster, **env: str):
    """One more node with a slot, its processes started with `env` added to this process's environment."""
    with pytest.MonkeyPatch.context() as patch:
        for name, value in env.items():
            patch.setenv(name, value)
        return cluster.add_node(**NODE)


@pytest.mark.timeout(240)
def test_a_node_killed_mid_job_loses_no_finished_row_and_the_job_is_retried(cluster, tmp_path):
    """A third node, whose fake jobs hang at epoch 2 (FAKE_MODE=hang in its environment only), is killed
    once a job there has measured an epoch: that attempt becomes a `lost` row and its retry runs elsewhere."""
    marker = secrets.token_hex(8)
    victim = add_node(cluster, FAKE_MODE="hang", FRAMEBENCH_TEST_VICTIM=marker)
    victim_name = node_name(victim)
    command = [
        sys.executable,
        "-m",
        "framebench",
        "run",
        "--executor",
        "ray",
        "--address",
        cluster.address,
        "--backends",
        "fake",
        "--dataset",
        "digits",
        "--epochs",
        "3",
        "--repeats",
        "4",
        "--batch-size",
        "100",
        "--threads",
        "1",
        "--no-floors",
        "--timeout",
        "60",
        "--run-id",
        "killed",
        "--results-dir",
        str(tmp_path),
    ]
    driver = subprocess.Popen(command, cwd=REPO, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines, label = [], None
    for line in driver.stderr:
        lines.append(line)
        if f"started on {victim_name}" in line:
            label = line.split(": started on")[0]
        elif label and line.startswith(f"{label}: epoch 1:"):
            break  # the job on the victim measured an epoch and now hangs in its second
    assert label, "".join(lines)
    before = (tmp_path / "killed" / "runs.csv").read_text()
    cluster.remove_node(victim, allow_graceful=False)
    out, err = driver.communicate(timeout=180)
    lines.append(err)
    print(f"\nkilled {victim_name} while `{label}` ran there; the driver said:\n{''.join(lines)}{out}")

    assert driver.returncode == 0, "".join(lines)
    assert (tmp_path / "killed" / "runs.csv").read_text().startswith(before)  # rows written before the kill stay as they were
    tables = load_results(tmp_path / "killed")
    runs, epochs = tables["runs"], tables["epochs"]
    lost = runs[runs["status"] == "lost"]
    assert len(runs) == 5 and len(lost) == 1 and lost["node"].item() == victim_name and lost["attempt"].item() == 1
    assert f"node {victim_name} died mid-job (NodeDiedError); retried as attempt 2 on another node" in lost["error"].item()
    retry = runs[(runs["repeat"] == lost["repeat"].item()) & (runs["attempt"] == 2)]
    assert retry["status"].tolist() == ["ok"] and retry["node"].item() != victim_name
    assert sorted(runs.loc[runs["status"] == "ok", "repeat"]) == [0, 1, 2, 3]
    assert len(epochs[(epochs["repeat"] == lost["repeat"].item()) & (epochs["attempt"] == 1)]) == 1  # the lost attempt's epoch stays
    assert not processes_with(f"FRAMEBENCH_TEST_VICTIM={marker}"), "a process of the killed node outlived it"


def processes_with(variable: str) -> list[int]:
    """Processes whose environment holds `variable`."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and variable.encode() in (entry / "environ").read_bytes().split(b"\0"):
                found.append(int(entry.name))
        except OSError:  # it ended meanwhile, or belongs to another user
            continue
    return found


def test_a_job_no_node_can_run_is_a_row_within_the_schedule_timeout(cluster, tmp_path):
    import ray

    def hold(seconds: float) -> None:  # defined here, so Ray ships it by value: nodes need not import this module
        time.sleep(seconds)

    ray.init(address=cluster.address, log_to_driver=False, logging_level="ERROR")
    try:  # this process holds every slot while the run waits for one
        holders = [ray.remote(num_cpus=0, resources=SLOT)(hold).remote(120) for _ in cluster.list_all_nodes()]
        deadline = time.monotonic() + 60
        while ray.available_resources().get("framebench_slot", 0) > 0 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert ray.available_resources().get("framebench_slot", 0) == 0, "the holders never started"
        result = framebench_run(
            tmp_path,
            "--executor",
            "ray",
            "--address",
            cluster.address,
            "--backends",
            "numpy,torch",
            "--device",
            "cpu,gpu",
            "--epochs",
            "1",
            "--no-floors",
            "--schedule-timeout",
            "3",
        )
        still_holding = not ray.wait(holders, num_returns=len(holders), timeout=0)[0]  # the run gave up before a slot freed
        for holder in holders:
            ray.cancel(holder, force=True)
    finally:
        ray.shutdown()
    assert result.returncode == 1, result.stderr  # nothing ran
    runs = load_results(result.stdout.strip().splitlines()[-1])["runs"].set_index(["backend", "device"])
    assert runs["status"].eq("unavailable").all() and len(runs) == 4
    waited = "no node started it within --schedule-timeout 3 s (it needs a free node advertising framebench_slot)"
    assert runs.loc[("numpy", "cpu"), "error"] == waited and runs.loc[("torch", "cpu"), "error"] == waited
    assert runs.loc[("torch", "gpu"), "error"] == "no node of the Ray cluster that advertises framebench_slot has a GPU"
    assert "runs on cpu only" in runs.loc[("numpy", "gpu"), "error"] and still_holding


def test_without_an_address_a_ray_instance_of_its_own_runs_the_jobs_quietly(cluster, tmp_path):
    """Not the cluster above, which Ray's own discovery would join: a new instance here with one slot."""
    result = framebench_run(tmp_path, "--executor", "ray", "--backends", "numpy", "--epochs", "1", "--no-floors")
    assert result.returncode == 0, result.stderr
    runs = load_results(result.stdout.strip().splitlines()[-1])["runs"]
    assert runs["status"].tolist() == ["ok"] and runs["node"].tolist() == [socket.gethostname()]  # one node: its bare hostname
    assert all("numpy/default" in line for line in result.stderr.splitlines()), result.stderr  # framebench's lines only


@pytest.mark.parametrize(
    "address, token, env, message",
    [
        ("127.0.0.1:1", TOKEN, {}, "no Ray cluster answers at 127.0.0.1:1"),
        (None, None, {"RAY_AUTH_MODE": "token"}, "uses token authentication and this machine has no token: set RAY_AUTH_TOKEN"),
    ],
    ids=["unreachable", "no-token"],
)
def test_a_cluster_that_cannot_be_used_is_one_line_naming_the_fix(cluster, tmp_path, address, token, env, message):
    result = framebench_run(
        tmp_path, "--executor", "ray", "--address", address or cluster.address, "--no-floors", env=cli_env(token, HOME=str(tmp_path), **env)
    )  # HOME: no ~/.ray/auth_token either
    assert result.returncode == 2 and result.stderr.startswith("error: ") and message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr


def test_without_ray_the_ray_executor_is_one_line_saying_how_to_install_it(tmp_path):
    (tmp_path / "ray.py").write_text("raise ImportError('Ray is hidden by tests/test_ray.py')\n")
    hidden = cli_env(PYTHONPATH=os.pathsep.join([str(tmp_path), str(REPO)]))
    result = framebench_run(tmp_path, "--executor", "ray", "--no-floors", env=hidden)
    assert result.returncode == 2 and result.stderr == "error: --executor ray needs Ray: pip install 'framebench[ray]'\n"


@pytest.mark.slow
def test_environments_run_on_every_node_and_a_node_that_cannot_build_one_declines_its_jobs(cluster, tmp_path):
    """The driver builds the environments before the matrix; each node reuses them (same machine, same
    user cache) as its jobs arrive, except a third node whose environments folder cannot be written:
    its jobs there are `unavailable` with the reason, the others run."""
    broken = add_node(cluster, FRAMEBENCH_ENVS_DIR="/proc/framebench-envs")
    matrix = ["--backends", "numpy", "--epochs", "1", "--repeats", "3", "--no-floors", "--env", "old=numpy==2.3.5", "--env", "new="]
    result = framebench_run(tmp_path, *matrix, "--executor", "ray", "--address", cluster.address, "--run-id", "envs")
    cluster.remove_node(broken)
    assert result.returncode == 0, result.stderr
    runs = load_results(tmp_path / "envs")["runs"]
    ok, declined = runs[runs["status"] == "ok"], runs[runs["status"] != "ok"]
    assert sorted(runs["env"]) == ["new"] * 3 + ["old"] * 3 and len(ok) >= 1  # rows come in as nodes finish
    assert dict(zip(ok["env"], ok["framework_version"], strict=True)).items() <= {"old": "2.3.5", "new": "2.4.6"}.items()
    assert (declined["status"] == "unavailable").all() and declined["error"].str.contains("cannot be built: /proc/framebench-envs").all()
    assert set(declined["node"]) <= {node_name(broken)}
