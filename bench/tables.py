"""The summary table: one row per (backend, variant, device), aggregated over repeats."""

from __future__ import annotations

import pandas as pd

GROUP = ["backend", "variant", "device"]


def summary(runs: pd.DataFrame) -> pd.DataFrame:
    """Median and spread (min-max) over repeats of the steady-state epoch time, plus the first
    epoch (tracing/compilation) reported apart, throughput and final test accuracy."""
    if runs.empty:
        return pd.DataFrame()
    ok = runs[runs["status"] == "ok"]
    grouped = ok.groupby(GROUP, sort=False)
    table = pd.DataFrame({
        "runs_ok": grouped.size(),
        "median_epoch_s": grouped["median_epoch_s"].median(),
        "min_epoch_s": grouped["median_epoch_s"].min(),
        "max_epoch_s": grouped["median_epoch_s"].max(),
        "first_epoch_s": grouped["first_epoch_s"].median(),
        "setup_s": grouped["setup_s"].median(),
        "samples_per_s": grouped["samples_per_s"].median(),
        "test_acc": grouped["final_test_acc"].median(),
        "test_loss": grouped["final_test_loss"].median(),
        "peak_rss_mb": grouped["peak_rss_mb"].max(),
    })
    problems = runs[runs["status"] != "ok"].groupby(GROUP, sort=False).agg(
        not_ok=("status", lambda s: ", ".join(f"{v}x{n}" for v, n in s.value_counts().items())),
        reason=("error", "first"),
    )
    table = table.join(problems, how="outer") if not problems.empty else table
    return table.reset_index()


def format_table(table: pd.DataFrame) -> str:
    if table.empty:
        return "(no runs)"
    return table.to_string(index=False, float_format=lambda v: f"{v:.4g}", na_rep="-")


def to_markdown(table: pd.DataFrame) -> str:
    """GitHub-flavoured Markdown without the optional `tabulate` dependency."""
    if table.empty:
        return "(no runs)\n"
    cells = [["-" if pd.isna(v) else f"{v:.4g}" if isinstance(v, float) else str(v) for v in row] for row in table.itertuples(index=False)]
    lines = ["| " + " | ".join(table.columns) + " |", "|" + "---|" * len(table.columns)]
    lines += ["| " + " | ".join(row) + " |" for row in cells]
    return "\n".join(lines) + "\n"
