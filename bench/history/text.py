"""How the history names things for a person: a benchmark's label, a value, an effect, a commit, as one
printable line each (everything from a results directory is untrusted text)."""

from __future__ import annotations

import pandas as pd

from framebench.history.changes import Change, Metric
from framebench.store.job import DIMENSIONS

SPELLED_OUT = ("backend", "variant", "device", "sweep_value")  # the dimensions a label names in its own words


def clean(text) -> str:
    """Text from a results directory as one printable line (no line breaks or terminal escapes)."""
    return " ".join("".join(ch if ch.isprintable() else " " for ch in str(text)).split())


def short_commit(commit: str) -> str:
    head, _, dirty = str(commit).partition("+")
    return head[:10] + (f"+{dirty}" if dirty else "")


def label(run: pd.Series) -> str:
    """backend/variant device preset dataset [sweep] [every other dimension not at its default], as a
    reader names a benchmark (`numpy/default cpu mlp mnist precision=bf16`)."""
    sweep = f" {run['sweep_field']}={run['sweep_value']}" if run["sweep_field"] else ""
    others = "".join(
        f" {d.name}={run[d.name]}" for d in DIMENSIONS if d.name not in SPELLED_OUT and run.get(d.name, "") not in ("", d.default)
    )
    return clean(f"{run['backend']}/{run['variant']} {run['device']} {run['preset']} {run['dataset']}{sweep}{others}")


def value(number: float, metric: Metric) -> str:
    return f"{number:#.3g}{metric.unit}" if metric.log else f"{number:.4f}"


def effect_text(change: Change) -> str:
    if change.metric.log:
        return f"×{change.effect:.2f} [{change.low:.2f}, {change.high:.2f}]"
    return f"{change.effect:+.4f} [{change.low:+.4f}, {change.high:+.4f}]"
