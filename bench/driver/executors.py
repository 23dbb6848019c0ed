"""Where jobs run. `local` (the default, no extra dependency) runs them one after another on this
machine; `ray` spreads them over a Ray cluster (framebench.driver.ray_executor, imported only when asked for). Either way every job is a
fresh `python -m framebench.driver.worker` process on the machine that runs it, its events stream back here,
and only the driver writes the results directory."""

from __future__ import annotations

import dataclasses
import socket
from abc import ABC, abstractmethod
from collections.abc import Iterator

from framebench.driver import lockstep, node
from framebench.driver.machine import gpu_info, node_record
from framebench.driver.probe import ProbeRequest, run_probe
from framebench.store.events import End, Start
from framebench.store.job import Job

EXECUTORS = ("local", "ray")


class Executor(ABC):
    """Runs a matrix's jobs and GEMM probes somewhere, streaming their events back to the driver."""

    @abstractmethod
    def nodes(self, threads: int) -> dict[str, dict]:
        """{node name: that node's environment (CPU, cores, GPUs, libraries)} for every node that runs jobs."""

    @abstractmethod
    def has_gpu(self) -> bool:
        """Whether any node has a GPU (so `--device auto` means gpu)."""

    @abstractmethod
    def probe(self, request: ProbeRequest) -> Iterator[tuple[str, list[dict], list[str]]]:
        """Time the request's GEMMs on every node: (node, gemm rows, libraries not measured) per node."""

    @abstractmethod
    def run(self, jobs: list[Job], timeout_s: float) -> Iterator[tuple[Job, object]]:
        """Run `jobs` (in this order where the executor has a choice) and yield (job, event) as events come
        (framebench.store.events): first `Submitted` (the job is in flight from then on), last its `End`,
        carrying `node` and `host` where it reached a node. A job retried after its node died ends with
        status `lost` and comes back as a copy with the next `attempt`."""

    @abstractmethod
    def stop(self) -> None:
        """Kill every job in flight now (the driver is being stopped)."""

    @abstractmethod
    def close(self) -> None:
        """Release the executor's resources (a Ray connection)."""


def with_node(event, name: str):
    """`event` with the node that ran it, where the event says (start and end)."""
    return dataclasses.replace(event, node=name) if isinstance(event, Start | End) else event


class LocalExecutor(Executor):
    """This machine, one job at a time: timings never share the CPU with another job. With `lockstep`,
    two jobs that differ only in their environment run as a pair taking turns epoch by epoch
    (framebench.driver.lockstep), still one epoch at a time."""

    def __init__(self, lockstep: bool = False) -> None:
        self.name = socket.gethostname()
        self.lockstep = lockstep  # pair the jobs that differ only in their environment

    def nodes(self, threads: int) -> dict[str, dict]:
        return {self.name: node_record(threads)}

    def has_gpu(self) -> bool:
        return bool(gpu_info())

    def probe(self, request: ProbeRequest) -> Iterator[tuple[str, list[dict], list[str]]]:
        rows, skipped = run_probe(request)
        yield self.name, rows, skipped

    def run(self, jobs: list[Job], timeout_s: float) -> Iterator[tuple[Job, object]]:
        for group in lockstep.groups(jobs) if self.lockstep else [[job] for job in jobs]:
            events = lockstep.execute(group, timeout_s)
            try:
                for job, event in events:
                    yield job, with_node(event, self.name)
            finally:
                events.close()  # kills the workers if the driver stopped mid-job

    def stop(self) -> None:
        node.kill_live_workers()

    def close(self) -> None:
        """Nothing is held between jobs here."""
