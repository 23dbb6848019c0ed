"""The `ray` executor: a matrix's jobs spread over the nodes of a Ray cluster, at most one timing job
per node at a time, each still a fresh `python -m framebench.driver.worker` process on its node.

A node takes part by advertising one `framebench_slot` (`ray start --head --resources
'{"framebench_slot": 1}'`). Every job and every GEMM probe holds its node's slot, so nothing of a
run shares a node's CPUs with a timing. Events come back through Ray generator tasks; the driver
alone writes the tables. Importing framebench never imports Ray: only this module does.

Token authentication: a Ray instance started here (no --address) has it on, as Ray does by default,
using $RAY_AUTH_TOKEN or ~/.ray/auth_token (written if missing). To join a cluster, this machine
needs the cluster's token: $RAY_AUTH_TOKEN, a file named by $RAY_AUTH_TOKEN_PATH, or ~/.ray/auth_token
copied from the head (`ray get-auth-token` there prints it); token mode is then turned on by itself
unless $RAY_AUTH_MODE says otherwise.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import logging
import os
import queue
import socket
import threading
import time
from collections import Counter, deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from framebench.driver import node
from framebench.driver.executors import Executor, with_node
from framebench.driver.machine import node_record
from framebench.driver.probe import ProbeRequest, run_probe
from framebench.errors import FrameBenchError
from framebench.store.events import End, Submitted
from framebench.store.job import Job

SLOT = "framebench_slot"  # the custom resource a node advertises to take jobs, one at a time
START_HEAD = "ray start --head --resources '{\"framebench_slot\": 1}'"
TOKEN_FIX = "set RAY_AUTH_TOKEN or copy the head's ~/.ray/auth_token (`ray get-auth-token` on the head prints it)"
NODE_ID_LABEL = "ray.io/node-id"  # the label Ray gives every node: its id
POLL_S = 0.5  # how often jobs not yet started are checked against --schedule-timeout
REACH_TIMEOUT_S = 5.0  # a wrong --address fails this fast, not after Ray's long retries


def enable_token_auth() -> None:
    """Ray sends a token only in token mode, which it turns on by itself for a cluster it starts or
    finds (`auto`) but not for an explicit address: an available token turns it on here. Ray reads
    the mode when it is imported, so this runs before the import."""
    if "RAY_AUTH_MODE" in os.environ:
        return
    if os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH") or (Path.home() / ".ray" / "auth_token").is_file():
        os.environ["RAY_AUTH_MODE"] = "token"


enable_token_auth()
try:
    import ray
    from ray.exceptions import AuthenticationError, NodeDiedError, RayError, RayTaskError
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
except ImportError:  # RayExecutor says how to install it
    ray = None


def forwarded_env() -> dict[str, str]:
    """What jobs need of the driver's environment on every node: framebench's settings (plugins, data
    folder) and the import path, led by the working directory as `python -m` has it, so plugin modules
    import on nodes that share this filesystem."""
    env = {name: value for name, value in os.environ.items() if name.startswith("FRAMEBENCH_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [os.getcwd(), os.environ.get("PYTHONPATH")]))
    return env


def check_reachable(address: str) -> None:
    """A host:port nobody answers on is one error in seconds (Ray itself would retry for minutes)."""
    host, _, port = address.rpartition(":")
    if not port.isdigit():
        return  # `auto`: Ray looks for the cluster `ray start` started on this machine
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=REACH_TIMEOUT_S).close()
    except OSError as exc:
        raise FrameBenchError(
            f"no Ray cluster answers at {address} ({exc.strerror or exc}); start one with {START_HEAD} "
            "and pass the address it prints, or leave out --address to start one here"
        ) from None


def connect(address: str | None) -> None:
    """Join the cluster at `address`, or start a Ray instance here with one slot (`local`: never a
    cluster an earlier `ray start` left); each failure is one line naming its fix."""
    options = {"log_to_driver": False, "logging_level": logging.ERROR, "runtime_env": {"env_vars": forwarded_env()}}
    if address is None:
        ray.init(address="local", resources={SLOT: 1}, include_dashboard=False, **options)
        return
    check_reachable(address)
    try:
        ray.init(address=address, **options)
    except AuthenticationError:
        raise FrameBenchError(
            f"the Ray cluster at {address} uses token authentication and this machine has no token: {TOKEN_FIX}"
        ) from None
    except ConnectionError as exc:
        raise FrameBenchError(
            f"cannot join the Ray cluster at {address} ({str(exc).splitlines()[0]}); a cluster with token "
            f"authentication refuses a missing or wrong token: {TOKEN_FIX}; it must also run Ray {ray.__version__}, "
            "as here"
        ) from None


@dataclass(frozen=True)
class Scheduled:
    """Ray's own event, before the job's: which node took the task, and when."""

    node_id: str  # the Ray node id
    at: float  # wall clock


def execute_here(job: Job, timeout_s: float) -> Iterator:
    """node.execute on the node that runs this task, after a `Scheduled` event saying which node
    that is and when the job started there."""
    yield Scheduled(ray.get_runtime_context().get_node_id(), time.time())
    yield from node.execute(job, timeout_s)


def feed(number: int, task, events: queue.Queue) -> None:
    """Pass one task's events to the driver's queue as they come; a failure is passed on too."""
    try:
        for ref in task:
            events.put((number, ray.get(ref)))
    except Exception as exc:  # the driver's thread decides what it means
        events.put((number, exc))


def can_run(info: dict, job: Job) -> bool:
    """Whether a slot node (a ray.nodes() entry) can run `job`."""
    return job.device != "gpu" or info["Resources"].get("GPU", 0) >= 1


def reason(exc: RayError) -> str:
    """A Ray failure in a few words: the task's own exception, else the kind of failure."""
    if isinstance(exc, RayTaskError):
        lines = str(exc.cause).splitlines()
        return f"{type(exc.cause).__name__}: {lines[0]}" if lines else type(exc.cause).__name__
    return type(exc).__name__


def death(exc: RayError, where: str) -> str:
    """What a lost attempt's row says happened: its node died, or only the Ray worker running it."""
    what = f"{where} died" if isinstance(exc, NodeDiedError) else f"its Ray worker on {where} died"
    return f"{what} mid-job ({type(exc).__name__})"


@dataclass
class Flight:
    """One attempt of a job, submitted to Ray, and what the driver knows of it."""

    job: Job
    task: object  # its ray.ObjectRefGenerator
    deadline: float  # monotonic time after which, still not started, it is unavailable
    retry: bool  # it retries an attempt whose node died
    node_id: str = ""  # the Ray node running it, once it started
    started_at: float | None = None  # when it started there (wall clock)


class RayExecutor(Executor):
    """The nodes of a Ray cluster that advertise a framebench_slot, one job per node at a time."""

    def __init__(self, address: str | None, schedule_timeout: float) -> None:
        if ray is None:
            raise FrameBenchError("--executor ray needs Ray: pip install 'framebench[ray]'")
        self.schedule_timeout = schedule_timeout
        self.names: dict[str, str] = {}  # Ray node id -> node name, kept for the whole run
        self.hosts: dict[str, str] = {}  # Ray node id -> hostname
        self.flights: dict[int, Flight] = {}  # job attempts in flight, by submission number
        self.numbers = itertools.count()
        self.events: queue.Queue = queue.Queue()  # (submission number, event or exception) from the feeder threads
        connect(address)
        if not self.slot_nodes():
            ray.shutdown()
            raise FrameBenchError(
                f"no node of the Ray cluster at {address} advertises {SLOT}: start each node that should run "
                f"jobs with --resources '{{\"{SLOT}\": 1}}' (the head: {START_HEAD})"
            )
        self.environment_task = ray.remote(num_cpus=0)(node_record)
        self.probe_task = ray.remote(num_cpus=0, max_retries=0, resources={SLOT: 1})(run_probe)
        self.job_task = ray.remote(num_cpus=0, max_retries=0, resources={SLOT: 1})(execute_here)

    def slot_nodes(self) -> dict[str, dict]:
        """{Ray node id: its ray.nodes() entry} of the alive nodes with a slot. Each gets its name once:
        the hostname, plus the short node id where several nodes share a host."""
        alive = {info["NodeID"]: info for info in ray.nodes() if info["Alive"] and info["Resources"].get(SLOT, 0) >= 1}
        hosts = Counter(info["NodeManagerHostname"] for info in alive.values())
        for node_id, info in alive.items():
            host = info["NodeManagerHostname"]
            if node_id not in self.names:
                shared = hosts[host] > 1 or host in self.names.values()
                self.names[node_id] = f"{host}-{node_id[:8]}" if shared else host
                self.hosts[node_id] = host
        return alive

    def name_of(self, node_id: str) -> str:
        if node_id not in self.names:
            self.slot_nodes()
        return self.names.get(node_id, node_id[:8])

    def nodes(self, threads: int) -> dict[str, dict]:
        refs = {
            node_id: self.environment_task.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False)).remote(threads)
            for node_id in self.slot_nodes()
        }
        return {self.names[node_id]: self.environment_of(node_id, ref) for node_id, ref in refs.items()}

    @staticmethod
    def environment_of(node_id: str, ref) -> dict:
        try:
            return {**ray.get(ref), "ray_node_id": node_id}
        except RayError as exc:  # the node left between the listing and the task: the machine record says so
            return {"ray_node_id": node_id, "error": reason(exc)}

    def has_gpu(self) -> bool:
        return any(info["Resources"].get("GPU", 0) >= 1 for info in self.slot_nodes().values())

    def probe(self, request: ProbeRequest) -> Iterator[tuple[str, list[dict], list[str]]]:
        """One probe task per node able to run it, holding the node's slot; results as they finish."""
        gpu = request.device == "gpu"
        tasks = {
            self.probe_task.options(num_gpus=int(gpu), scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False)).remote(
                request
            ): node_id
            for node_id, info in self.slot_nodes().items()
            if not gpu or info["Resources"].get("GPU", 0) >= 1
        }
        pending = list(tasks)
        while pending:
            [done], pending = ray.wait(pending, num_returns=1)
            try:
                rows, skipped = ray.get(done)
            except RayError as exc:
                rows, skipped = [], [f"every library on {request.device} (the probe task failed: {reason(exc)})"]
            yield self.names[tasks[done]], rows, skipped

    def run(self, jobs: list[Job], timeout_s: float) -> Iterator[tuple[Job, object]]:
        """Jobs submitted in plan order, no more in flight than there are slots; events as they come."""
        waiting = deque(jobs)
        try:
            while waiting or self.flights:
                while waiting and len(self.flights) < self.capacity():
                    job = waiting.popleft()
                    yield job, Submitted()
                    why = self.unschedulable(job)
                    if why:
                        yield job, End("unavailable", why)
                    else:
                        self.submit(job, timeout_s, retry=False, avoid="")
                yield from self.next_events(timeout_s)
        finally:
            self.stop()  # the caller stopped early (an interrupt): nothing of this run may keep running

    def capacity(self) -> int:
        """Jobs that may be in flight: the alive slots (at least 1, so jobs left without nodes are told so)."""
        return max(sum(int(info["Resources"][SLOT]) for info in self.slot_nodes().values()), 1)

    def unschedulable(self, job: Job) -> str:
        """Why no alive node can run `job` ("" if one can)."""
        nodes = self.slot_nodes().values()
        if not nodes:
            return f"no alive node of the Ray cluster advertises {SLOT}"
        if not any(can_run(info, job) for info in nodes):
            return f"no node of the Ray cluster that advertises {SLOT} has a GPU"
        return ""

    def submit(self, job: Job, timeout_s: float, retry: bool, avoid: str) -> None:
        """Start `job`'s task (a GPU job gets one GPU, which is all it sees); a retry prefers any node but `avoid`."""
        options: dict = {"num_gpus": 1 if job.device == "gpu" else 0}
        if avoid:
            options.update(label_selector={NODE_ID_LABEL: f"!{avoid}"}, fallback_strategy=[{"label_selector": {}}])
        task = self.job_task.options(**options).remote(job, timeout_s)
        number = next(self.numbers)
        self.flights[number] = Flight(job=job, task=task, deadline=time.monotonic() + self.schedule_timeout, retry=retry)
        threading.Thread(target=feed, args=(number, task, self.events), daemon=True).start()

    def next_events(self, timeout_s: float) -> Iterator[tuple[Job, object]]:
        """Everything that arrived (waiting up to POLL_S for something), then the jobs that waited too
        long for a node: a job whose start is already here is never taken for one that did not start."""
        arrived = []
        try:
            arrived.append(self.events.get(timeout=POLL_S))
            while True:
                arrived.append(self.events.get_nowait())
        except queue.Empty:
            pass  # all that came is in `arrived`
        for number, payload in arrived:
            if number in self.flights:  # a cancelled flight's leftovers are moot
                yield from self.receive(number, payload, timeout_s)
        yield from self.expire()

    def receive(self, number: int, payload, timeout_s: float) -> Iterator[tuple[Job, object]]:
        flight = self.flights[number]
        if isinstance(payload, RayError):
            yield from self.lost(number, payload, timeout_s)
        elif isinstance(payload, Exception):
            raise payload
        elif isinstance(payload, Scheduled):
            flight.node_id, flight.started_at = payload.node_id, payload.at
        else:
            if isinstance(payload, End):
                del self.flights[number]
            yield flight.job, with_node(payload, self.name_of(flight.node_id))

    def lost(self, number: int, exc: RayError, timeout_s: float) -> Iterator[tuple[Job, object]]:
        """A task that failed: framebench's own error fails the job; a dead node or Ray worker is
        retried once, preferring another node."""
        flight = self.flights.pop(number)
        name = self.name_of(flight.node_id) if flight.node_id else ""  # "": it failed before it started
        where = f"node {name}" if name else "its node"
        end = functools.partial(End, node=name, host=self.hosts.get(flight.node_id, ""), started_at=flight.started_at, ended_at=time.time())
        if isinstance(exc, RayTaskError):  # a retry would fail the same way
            yield flight.job, end("failed", f"framebench's task failed on {where}: {reason(exc)}")
        elif flight.retry:
            yield flight.job, end("lost", f"{death(exc, where)}: died again after a retry; not retried")
        else:
            retry = dataclasses.replace(flight.job, attempt=flight.job.attempt + 1)
            others = any(can_run(info, retry) for node_id, info in self.slot_nodes().items() if node_id != flight.node_id)
            on = "on another node" if others else "(no other node can run it now)"
            yield flight.job, end("lost", f"{death(exc, where)}; retried as attempt {retry.attempt} {on}", retried=True)
            yield retry, Submitted()
            self.submit(retry, timeout_s, retry=True, avoid=flight.node_id)

    def expire(self) -> Iterator[tuple[Job, object]]:
        """Jobs not started after --schedule-timeout of waiting, not counting time when one of this run's
        own jobs held a node able to run them: cancelled, and `unavailable` with the reason."""
        if all(flight.node_id for flight in self.flights.values()):
            return
        nodes = self.slot_nodes()
        busy = [nodes[flight.node_id] for flight in self.flights.values() if flight.node_id in nodes]
        now = time.monotonic()
        for number, flight in list(self.flights.items()):
            if flight.node_id:
                continue
            if any(can_run(info, flight.job) for info in busy):
                flight.deadline = now + self.schedule_timeout
            elif now > flight.deadline:
                del self.flights[number]
                ray.cancel(flight.task, force=True)
                needs = f"a free node advertising {SLOT}" + (" and a GPU" if flight.job.device == "gpu" else "")
                yield (
                    flight.job,
                    End("unavailable", f"no node started it within --schedule-timeout {self.schedule_timeout:g} s (it needs {needs})"),
                )

    def stop(self) -> None:
        """Force-cancel every job in flight now: Ray kills the Ray worker running it, and the job's
        process dies with its parent (PR_SET_PDEATHSIG); the feeder threads end with their tasks."""
        flights, self.flights = self.flights, {}
        for flight in flights.values():
            ray.cancel(flight.task, force=True)

    def close(self) -> None:
        ray.shutdown()
