"""Verdicts as values. A gate (compare, converge, and every gate built on them) decides one Verdict per key: a Kind,
which fixes the exit status it stands for, the reason in words, and a note; code reads the kind, and
the text is made only where a person reads it (the table, Markdown, JSON)."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING

from framebench.reports.markdown import escape_markdown, format_table, to_markdown, write_output

if TYPE_CHECKING:
    import pandas as pd

PASS, FAIL, UNDECIDED = 0, 1, 2  # exit statuses: the gate passed, found a problem, or could not decide


class Kind(Enum):
    """What was decided, in order of severity (a key judged on several nodes keeps its worst), with the
    exit status it stands for."""

    def __new__(cls, text: str, exit_status: int) -> Kind:
        member = object.__new__(cls)
        member._value_ = text
        member.exit_status = exit_status
        return member

    NOT_RUN = ("not run in either", PASS)  # declined on both sides (unavailable, unsupported): nothing to compare
    NOT_COMPARED = ("not compared", PASS)  # a seed only one side ran (the other ran the same point at other seeds): noted
    NEW = ("new", PASS)  # only NEW has it
    FIXED = ("fixed", PASS)  # BASE did not run it ok, NEW does
    NO_CHANGE = ("no change", PASS)  # the effect's interval lies inside the tolerance band
    IMPROVED = ("improved", PASS)  # the interval lies below 1 and the estimate beyond the tolerance
    CONVERGES = ("converges as the reference", PASS)  # converge: the trimmed mean epochs to target within the reference's bounds
    INCONCLUSIVE = ("inconclusive", UNDECIDED)  # the interval straddles the band: more repeats would settle it
    NOT_VERIFIED = ("not verified", UNDECIDED)  # the measurements cannot carry a verdict (busy, another machine, not compared)
    NOT_COMPARABLE = ("not comparable", UNDECIDED)  # the two sides measured different things
    SLOWER_TO_CONVERGE = ("SLOWER TO CONVERGE", FAIL)  # converge: more epochs to target than the reference's t-test allows
    TOO_FAST = ("faster than the reference allows", FAIL)  # converge: fewer epochs than it allows, usually a bug (test data in training)
    DID_NOT_CONVERGE = ("did not converge", FAIL)  # converge: more than one seed never reached the target
    REGRESSION = ("REGRESSION", FAIL)  # slower, less accurate, or no longer running ok

    @property
    def severity(self) -> int:
        return list(Kind).index(self)

    @property
    def verified(self) -> bool:
        """Whether this kind is a judgement of measurements both sides made (no change, improved, converges)."""
        return self in (Kind.NO_CHANGE, Kind.IMPROVED, Kind.CONVERGES)


@dataclass(frozen=True)
class Verdict:
    kind: Kind  # what was decided
    reason: str = ""  # why, in words, after a colon: "time", "missing in NEW", "about 6 repeats a side would settle it"
    note: str = ""  # a qualification, in parentheses: "accuracy only", "busy: NEW's jobs shared the CPU ..."

    def __str__(self) -> str:
        return self.kind.value + (f": {self.reason}" if self.reason else "") + (f" ({self.note})" if self.note else "")

    def to_json(self) -> dict:
        return {"kind": self.kind.name, "reason": self.reason, "note": self.note, "text": str(self)}


@dataclass(frozen=True)
class Report:
    """What a verdict command (compare, converge) publishes beside its decided table."""

    title: str  # the Markdown heading: the command
    intro: str  # the Markdown line under it (already escaped): the sides and the rule
    notes: list[str]  # lines printed before the table (text from results: escaped in Markdown)
    conclusion: str  # the line after it
    status: int  # the exit status the verdicts give
    document: dict  # --json's leading fields (the sides or directory, the rule)
    markdown: str | None  # --markdown FILE
    json_file: str | None  # --json FILE


def worst(verdicts: Iterable[Verdict]) -> Verdict:
    """The most severe of `verdicts` (the first of equals)."""
    return max(verdicts, key=lambda v: v.kind.severity)


def exit_status(kinds: Iterable[Kind]) -> int:
    """FAIL if any kind fails, else UNDECIDED if any is undecided, else PASS."""
    statuses = {kind.exit_status for kind in kinds}
    return FAIL if FAIL in statuses else UNDECIDED if UNDECIDED in statuses else PASS


def decided_records(table: pd.DataFrame) -> list[dict]:
    """A decided table's rows as JSON records (--json): its `verdict` as text and, beside it, the typed decision."""
    records = json.loads(table.assign(verdict=table["verdict"].map(str)).to_json(orient="records"))
    return [{**record, "decision": verdict.to_json()} for record, verdict in zip(records, table["verdict"], strict=True)]


def publish_decided(table: pd.DataFrame, shown: pd.DataFrame, report: Report) -> None:
    """A verdict command's one way out: its notes, the decided table and the conclusion printed, and written
    as Markdown (--markdown) and JSON (--json: the report's own fields, then every key's decision) where asked."""
    for line in report.notes:
        print(line)
    print(format_table(shown))
    print(report.conclusion)
    if report.markdown:
        notes = [f"- {escape_markdown(line)}" for line in report.notes]
        head = "\n".join([f"## {report.title}", "", report.intro, "", *notes, ""])
        write_output(report.markdown, "--markdown", head + to_markdown(shown) + f"\n{escape_markdown(report.conclusion)}\n")
    if report.json_file:
        fields = {"notes": report.notes, "exit_status": report.status, "conclusion": report.conclusion, "keys": decided_records(table)}
        write_output(report.json_file, "--json", json.dumps({**report.document, **fields}, indent=2) + "\n")
