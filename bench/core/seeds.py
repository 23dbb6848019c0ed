"""Seeds as written on the command line: `--seeds 0-9`, `--seeds 0,3,7` or a mix (`0-4,10`).

A seed fixes a run's initial weights and batch order (framebench.core.harness), the same for every
backend. A list is counted from its ranges before it is expanded, so a range of a billion seeds is
refused by the plan-size check instead of being built in memory.
"""

from __future__ import annotations

import re

from framebench.errors import FrameBenchError

RANGE = re.compile(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?")
EXAMPLE = "e.g. --seeds 0-9, --seeds 0,3,7 or --seeds 0-4,10"


def seed_ranges(text: str, flag: str = "--seeds") -> list[range]:
    """The ranges a seed list names, each non-empty and of non-negative integers; one line naming
    the fix for anything else."""
    parts = str(text).split(",")
    if not any(part.strip() for part in parts):
        raise FrameBenchError(f"{flag} names no seed; {EXAMPLE}")
    ranges = []
    for part in parts:
        match = RANGE.fullmatch(part)
        if not match:
            raise FrameBenchError(f"{flag} {text!r}: {part.strip()!r} is not a seed (a non-negative integer) or a range of them; {EXAMPLE}")
        first, last = int(match.group(1)), int(match.group(2) or match.group(1))
        if last < first:
            raise FrameBenchError(f"{flag} {text!r}: the range {first}-{last} is empty; write it lowest first ({last}-{first})")
        ranges.append(range(first, last + 1))
    return ranges


def seed_count(text: str, flag: str = "--seeds") -> int:
    """How many distinct seeds the list names at most (its ranges' lengths), without expanding it."""
    return sum(len(r) for r in seed_ranges(text, flag))


def seed_values(text: str, flag: str = "--seeds") -> list[str]:
    """The distinct seeds, in the order written, as the strings a job's `seed` dimension holds ("007" is "7")."""
    return list(dict.fromkeys(str(seed) for r in seed_ranges(text, flag) for seed in r))


def compact_seeds(seeds: list[str]) -> str:
    """Seeds written back compactly: ["0", "1", "2", "5"] -> "0-2,5" (anything not a seed, from a
    results directory someone sent, is listed as it is)."""
    numbers = sorted({int(s) for s in seeds if str(s).isdigit()})
    others = sorted({str(s) for s in seeds if not str(s).isdigit()})
    runs: list[list[int]] = []
    for number in numbers:
        if runs and number == runs[-1][-1] + 1:
            runs[-1].append(number)
        else:
            runs.append([number])
    return ",".join([*(f"{run[0]}-{run[-1]}" if len(run) > 1 else f"{run[0]}" for run in runs), *others])
