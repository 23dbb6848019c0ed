"""Lockstep: two jobs that differ only in their environment (BASE and NEW of `framebench gate`) run as
two workers alive at once, taking turns epoch by epoch, so each machine state the run passes through
is seen by both sides within one epoch of each other.

The leader (the first environment on even repeats, the second on odd ones) starts and sets up alone,
then its partner; then the node grants epochs in ABBA order, one worker running at any moment:
L F, F L, L F, F L, ... (epoch 1 of each, the warm-up, first). A worker waits for its turn on its
control pipe before each epoch, outside the epoch's clock (framebench.driver.worker), and is timed in
its own process exactly as a job alone. Each epoch event carries its `slot`, its place in the pair's
sequence, so the statistics pair adjacent epochs from the data (framebench.reports.stats); with
ABBA, a drift linear in time adds to one pair of each two what it takes from the other.

Each side has --timeout of its own running time (its setup and its turns; waiting for its partner
does not count): a turn that does not end within what is left of it times the side out. A side that
crashes, hangs, diverges or sends what is not an event ends with its own row; its partner goes on
alone and its row says so (the `lockstep` column). A backend that cannot pause between epochs
(Classifier.pauses_between_epochs) runs its pair as whole jobs, one after the other, leader first.

No calibration runs beside a pair: both sides see the same machine at every turn, so its speed
cancels in each pair of epochs; the CPU other processes used is measured over the pair, both
workers' own CPU time left out.
"""

from __future__ import annotations

import dataclasses
import queue
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from framebench.core import registry
from framebench.driver import node
from framebench.driver.calibration import process_cpu_seconds
from framebench.driver.envs import EnvironmentUnavailable
from framebench.driver.worker import GO
from framebench.store.events import End, Epoch, MalformedEvent, Setup, Submitted
from framebench.store.job import OK, PAIRED, Job, key_columns
from framebench.store.sense import Sense, SenseViolation


def partners(a: Job, b: Job) -> bool:
    """Whether two jobs differ only in their environment (a lockstep pair)."""
    masked = lambda job: [value for name, value in zip(key_columns(), job.key(), strict=True) if name != "env"]  # noqa: E731
    return a.env != b.env and masked(a) == masked(b)


def groups(jobs: list[Job]) -> list[list[Job]]:
    """The jobs in their order, each two adjacent ones that are partners as one group (the plan puts
    environments innermost, so a matrix's pairs are adjacent), every other job alone."""
    grouped, index = [], 0
    while index < len(jobs):
        size = 2 if index + 1 < len(jobs) and partners(jobs[index], jobs[index + 1]) else 1
        grouped.append(jobs[index : index + size])
        index += size
    return grouped


def leader_first(pair: list[Job]) -> list[Job]:
    """The pair in the order its sides start: the first environment leads on even repeats, the second
    on odd ones, so neither side is always the one that runs first."""
    return pair if pair[0].repeat % 2 == 0 else pair[::-1]


def abba() -> Iterator[int]:
    """The side of each turn, 0 the leader: 0 1 1 0, 0 1 1 0, ... for ever."""
    while True:
        yield from (0, 1, 1, 0)


def execute(group: list[Job], timeout_s: float) -> Iterator[tuple[Job, object]]:
    """Run one group of `groups`: a job alone as node.execute does, a pair in lockstep, or a pair whose
    backend cannot pause as whole jobs; (job, event) as events come, Submitted first for each job."""
    if len(group) == 1:
        return whole(group, timeout_s, "")
    entry = registry.lookup(group[0].backend, group[0].variant)
    if not entry.pauses:
        return whole(leader_first(group), timeout_s, f"whole jobs: {entry.name} cannot pause between epochs")
    return Pair(leader_first(group), timeout_s).run()


def whole(jobs: list[Job], timeout_s: float, lockstep: str) -> Iterator[tuple[Job, object]]:
    """The jobs one after the other, each in its own worker (node.execute), their ends saying `lockstep`."""
    for job in jobs:
        yield job, Submitted()
        events = node.execute(job, timeout_s)
        try:
            for event in events:
                yield job, dataclasses.replace(event, lockstep=lockstep) if isinstance(event, End) else event
        finally:
            events.close()  # kills the worker if the driver stopped mid-job


@dataclass
class Side:
    """One job of a pair and what the node knows of it."""

    job: Job  # the job
    budget_s: float  # its own running time left before it times out
    sense: Sense  # what its worker's events may say (framebench.store.sense)
    worker: node.Worker | None = None  # its worker, once started
    end: End | None = None  # its last event, once it ended
    epochs_done: int = 0  # epoch events received
    set_up: bool = False  # its setup event came: it waits for its first turn
    alone: str = ""  # why it runs alone, once its partner ended early ("" while paired)

    @property
    def running(self) -> bool:
        return self.worker is not None and self.end is None

    @property
    def epochs(self) -> int:
        return self.job.config["train"]["epochs"]


class Pair:
    """Two partner jobs in lockstep, leader first; `run` yields (job, event) as they come."""

    def __init__(self, jobs: list[Job], timeout_s: float) -> None:
        self.sides = [Side(job, timeout_s, Sense(job)) for job in jobs]
        self.timeout_s = timeout_s
        self.lines: queue.Queue = queue.Queue(node.QUEUE_LINES)  # (side index, channel line) from both workers
        self.span = node.Span.now()  # the pair's window: the CPU others used is measured over it
        self.granted: int | None = None  # the side whose epoch runs now
        self.slot = 0  # the place of the next turn in the pair's sequence

    def run(self) -> Iterator[tuple[Job, object]]:
        try:
            for index in (0, 1):
                yield from self.start(index)
            for index in abba():
                if not any(side.running for side in self.sides):
                    return
                if self.sides[index].running:
                    yield from self.turn(index)
        finally:  # done, or the driver stopped: nothing of either worker may outlive the pair
            for side in self.sides:
                if side.running:
                    node.stop_worker(side.worker)

    def start(self, index: int) -> Iterator[tuple[Job, object]]:
        """Start one side's worker and wait until it has set up (or ended)."""
        side = self.sides[index]
        yield side.job, Submitted()
        try:
            command = node.worker_command(side.job)  # its environment was built before the run: never timed
        except EnvironmentUnavailable as exc:
            side.end = End("unavailable", str(exc))
            self.left_alone(index)
            yield side.job, side.end
            return
        side.worker = node.start_job(side.job, command, self.lines, self.span, tag=index, lockstep=True)
        yield from self.wait(index, lambda: side.set_up, "setup")

    def turn(self, index: int) -> Iterator[tuple[Job, object]]:
        """Grant one side its next epoch and wait for it; after its last, for its end too."""
        side = self.sides[index]
        self.granted, target = index, side.epochs_done + 1
        try:
            side.worker.control.write(GO)
        except OSError:  # it died waiting: its closed channel says so
            pass
        yield from self.wait(index, lambda: side.epochs_done >= target, f"epoch {target}")
        self.granted = None
        self.slot += 1
        if side.running and side.epochs_done >= side.epochs:  # its end comes before its partner's next turn
            yield from self.wait(index, lambda: False, "end")

    def wait(self, index: int, reached: Callable[[], bool], what: str) -> Iterator[tuple[Job, object]]:
        """Pass on both workers' events until `reached()` or side `index` has ended, within what is left
        of its running time."""
        side = self.sides[index]
        started = time.monotonic()
        while side.running and not reached():
            left = side.budget_s - (time.monotonic() - started)
            try:
                tag, line = self.lines.get(timeout=max(min(left, node.POLL_S), 0))
            except queue.Empty:
                if left > 0:
                    self.stop_if_exited(side)
                    continue
                message = (
                    f"no {what} within --timeout {self.timeout_s:g} s of its own running time (waiting for its lockstep "
                    "partner does not count); raise --timeout or use fewer epochs"
                )
                yield from self.finish(index, End("timeout", message))
                break
            yield from self.receive(tag, line)
        side.budget_s -= time.monotonic() - started

    @staticmethod
    def stop_if_exited(side: Side) -> None:
        """A worker that exited ends its job even while a process it forked holds its channel: that
        process is killed, so the channel ends and the exit status says how the job ended."""
        if side.worker.process.poll() is not None:
            node.stop_job(side.worker.process, side.worker.token)

    def receive(self, index: int, line) -> Iterator[tuple[Job, object]]:
        """One item of side `index`'s channel (node.read_lines): its event passed on, or its end."""
        side = self.sides[index]
        if not side.running:  # what follows a side's end (its channel closing) is moot
            return
        if isinstance(line, node.Overlong):
            yield from self.finish(index, End("failed", f"the worker sent an event line longer than {line.cap:,} bytes; see its log"))
            return
        if isinstance(line, node.Torn):  # it died writing: its exit status says how
            return
        if line is None:
            try:
                side.worker.process.wait(timeout=node.EXIT_GRACE_S)
                end = None  # its exit status says why it died
            except subprocess.TimeoutExpired:
                end = End("failed", "the worker closed its event channel without reporting how the job ended; see its log")
            yield from self.finish(index, end)
            return
        try:
            event = node.decode_event(line)
            side.sense.check(event)
        except SenseViolation as exc:
            yield from self.finish(index, End("failed", f"the worker's events cannot be true of this job: {exc}; see its log"))
            return
        except MalformedEvent as exc:
            yield from self.finish(index, End("failed", f"the worker sent a malformed event ({exc}); see its log"))
            return
        if isinstance(event, End):
            yield from self.finish(index, event)
        elif isinstance(event, Epoch) and self.granted != index:
            yield from self.finish(index, End("failed", f"the worker ran epoch {event.epoch} out of its turn (lockstep); see its log"))
        else:
            if isinstance(event, Epoch):
                side.epochs_done += 1
                event = dataclasses.replace(event, slot=self.slot)
            elif isinstance(event, Setup):
                side.set_up = True
            yield side.job, event

    def finish(self, index: int, end: End | None) -> Iterator[tuple[Job, object]]:
        """Stop side `index`'s worker and yield its end, measured over the pair's window; its partner,
        if it goes on without it, runs alone from now on."""
        side, partner = self.sides[index], self.sides[1 - index]
        node.stop_worker(side.worker)
        measured = node.measured_end(side.worker, end, others_cpu_s=self.partner_cpu_s(partner))
        side.end = dataclasses.replace(measured, lockstep=side.alone or PAIRED)
        if side.end.status != OK or side.epochs_done < side.epochs:
            self.left_alone(index)
        yield side.job, side.end

    def left_alone(self, index: int) -> None:
        """Side `index` ended early: its partner, still to run, says from which epoch it ran alone."""
        side, partner = self.sides[index], self.sides[1 - index]
        if partner.end is None and not partner.alone:
            partner.alone = f"alone from epoch {partner.epochs_done + 1}: its partner (env={side.job.env}) ended {side.end.status}"

    @staticmethod
    def partner_cpu_s(partner: Side) -> float:
        """The CPU seconds the partner's worker used so far (inside the pair's window, which holds all of it)."""
        if partner.running:
            return process_cpu_seconds(partner.worker.process.pid) or 0.0
        return (partner.end.cpu_s or 0.0) if partner.end is not None else 0.0
