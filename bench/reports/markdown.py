"""Text for people: aligned tables for the terminal and GitHub-flavoured Markdown, with everything that
came from a results directory (an error message, a name) made inert."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from framebench.errors import FrameBenchError
from framebench.store.files import replace_file


def format_table(table: pd.DataFrame) -> str:
    if table.empty:
        return "(no runs)"
    return table.to_string(index=False, float_format=lambda v: f"{v:.4g}", na_rep="-")


MARKDOWN_ESCAPES = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;", "|": "\\|", "`": "&#96;", "\n": " ", "\r": " "})


def escape_markdown(text: str) -> str:
    """Text from a results directory (an error message, a name) as inert Markdown: no raw HTML, no
    code span, no extra table cell, one line."""
    return str(text).translate(MARKDOWN_ESCAPES)


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
