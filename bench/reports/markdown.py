"""Text for people: aligned tables for the terminal and GitHub-flavoured Markdown, with everything that
came from a results directory (an error message, a name) made inert."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from framebench.errors import FrameBenchError
from framebench.store.files import replace_file


def format_table(table: pd.DataFrame) -> str:
    if table.empty:
        return "(no runs)"
    return table.to_string(index=False, float_format=lambda v: f"{v:.4g}", na_rep="-")


MARKDOWN_ESCAPES = str.maketrans(
    {"&": "&amp;", "<": "&lt;", ">": "&gt;", "|": "\\|", "`": "&#96;", "\n": " ", "\r": " ", "\\": "\\\\", "[": "\\[", "]": "\\]"}
)
WORD_JOINER = "\u2060"  # an invisible character that is no letter, digit or punctuation: it ends a name or a domain
LIVE_TEXT = re.compile(r"@|:(?=//)|www(?=\.)|#(?=\d)", re.IGNORECASE)  # what begins a mention, a link or a reference on GitHub


def escape_markdown(text: str) -> str:
    """Text from a results directory (an error message, a name) as inert GitHub-flavoured Markdown: one
    line, no raw HTML or entity, no code span, no extra table cell, no link or image (brackets and
    backslashes escaped), and nothing GitHub links on its own: an @mention or e-mail address, a bare
    http(s):// or www. address (GFM's extended autolinks) or a #123 reference, each broken by a word
    joiner after its @, :, www or #; it reads the same."""
    return LIVE_TEXT.sub(lambda match: match.group() + WORD_JOINER, str(text)).translate(MARKDOWN_ESCAPES)


def to_markdown(table: pd.DataFrame) -> str:
    """GitHub-flavoured Markdown without the optional `tabulate` dependency; every cell escaped."""
    if table.empty:
        return "(no runs)\n"
    cells = [
        ["-" if pd.isna(v) else f"{v:.4g}" if isinstance(v, float) else escape_markdown(v) for v in row]
        for row in table.itertuples(index=False)
    ]
    lines = ["| " + " | ".join(map(escape_markdown, table.columns)) + " |", "|" + "---|" * len(table.columns)]
    lines += ["| " + " | ".join(row) + " |" for row in cells]
    return "\n".join(lines) + "\n"


def write_markdown(path: Path, lines: list[str], fix: str) -> Path:
    """Write a report; a folder that cannot take it is one line saying what to do."""
    try:
        replace_file(path, "\n".join(lines).encode())
    except OSError as exc:
        raise FrameBenchError(f"cannot write {path} ({exc.strerror or exc}); {fix}") from None
    return path


def write_output(path: str, flag: str, text: str) -> None:
    """A file a command was asked for with `flag` (--json, --markdown, --output), or one line naming the flag."""
    try:
        Path(path).write_text(text)
    except OSError as exc:
        raise FrameBenchError(f"cannot write {flag} {path} ({exc.strerror or exc})") from None
