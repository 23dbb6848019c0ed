"""Where an epoch's time goes, op by op, as each framework's own profiler sees it: the rows a backend's
`Classifier.profile_epoch` returns, and the arithmetic its profiler's trace needs to become them.

A profiler records nested events per thread (an executor's step around the kernel it runs, an XLA
program around its thunks); an op's time here is its *self* time, its events' durations less the
events nested directly in them, so every traced nanosecond is counted once, in the innermost op.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

# An op that converts between dtypes: TensorFlow's Cast kernel, an XLA instruction or fusion that XLA
# named after a convert (it names fusions after the ops in them), torch's _to_copy.
CAST = re.compile(r"(^|[^a-z])(cast|convert)([^a-z]|$)|^aten::_to_copy$", re.IGNORECASE)


# A frame in which a thread only waits for work other threads do (XLA's runtime waiting for its
# thunks): its time is theirs, counted where they run, so it is left out.
WAITING = re.compile(r"\bwait(ing)? for\b", re.IGNORECASE)


@dataclass(frozen=True)
class OpTime:
    op: str  # the op as the framework's profiler names it (a kernel, an XLA thunk or fusion, an aten op)
    seconds: float  # self time summed over the profiled epoch
    calls: int  # how many times it ran in the epoch
    cast: bool  # whether it converts between dtypes (CAST)


@dataclass(frozen=True)
class Event:
    name: str  # the op or frame it records
    start: int  # when it began, in any unit shared by the events of its thread (picoseconds, nanoseconds)
    duration: int  # how long it lasted, in the same unit


def self_times(events: Iterable[Event]) -> dict[str, tuple[int, int]]:
    """Per name, (self time, calls) over one thread's events: each event's duration less its direct
    children's, where a child is an event that begins and ends inside it."""
    totals: dict[str, list[int]] = {}
    stack: list[tuple[Event, list[int]]] = []  # open events, outermost first, each with its children's time so far

    def close(event: Event, children: list[int]) -> None:
        entry = totals.setdefault(event.name, [0, 0])
        entry[0] += event.duration - children[0]
        entry[1] += 1

    for event in sorted(events, key=lambda e: (e.start, -e.duration)):
        while stack and stack[-1][0].start + stack[-1][0].duration <= event.start:
            close(*stack.pop())
        if stack:  # a child that outlasts its parent (an async event) is charged to it only while inside it
            parent = stack[-1][0]
            stack[-1][1][0] += min(event.duration, parent.start + parent.duration - event.start)
        stack.append((event, [0]))
    while stack:
        close(*stack.pop())
    return {name: (seconds, calls) for name, (seconds, calls) in totals.items()}


def is_cast(name: str) -> bool:
    return bool(CAST.search(name))


def op_times(threads: Iterable[Iterable[Event]], seconds_per_unit: float, cast: Callable[[str], bool] = is_cast) -> list[OpTime]:
    """OpTime rows over the threads that ran the work (their self times summed by name, WAITING frames
    left out), largest first; `cast` tells a conversion by its name in the framework's vocabulary."""
    merged: dict[str, list[float]] = {}
    for events in threads:
        for name, (duration, calls) in self_times(e for e in events if not WAITING.search(e.name)).items():
            entry = merged.setdefault(name, [0.0, 0])
            entry[0] += duration * seconds_per_unit
            entry[1] += calls
    rows = [OpTime(name, seconds, int(calls), cast(name)) for name, (seconds, calls) in merged.items()]
    return sorted(rows, key=lambda row: -row.seconds)
