"""The summary table: one row per (backend, variant, device), aggregated over repeats."""

from __future__ import annotations

import pandas as pd

GROUP = ["backend", "variant", "device"]
NOT_RUN = ("unsupported", "unavailable")  # statuses of runs that never started: listed apart, not as rows


def not_run(runs: pd.DataFrame) -> list[str]:
    """One line per (backend, variant, device) that did not run here, with the reason."""
    skipped = runs[runs["status"].isin(NOT_RUN)].drop_duplicates(GROUP)
    return [f"{r.backend}/{r.variant} on {r.device}: {r.status}: {r.error}" for r in skipped.itertuples()]


def summary(runs: pd.DataFrame) -> pd.DataFrame:
    """Median and spread (min-max) over repeats of the steady-state epoch time, plus the first
    epoch (tracing/compilation) reported apart, throughput and final test accuracy."""
    runs = runs[~runs["status"].isin(NOT_RUN)]
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
        "time_to_target_s": grouped["time_to_target_s"].median(),
        "floor_epoch_s": grouped["floor_epoch_s"].median(),
        "efficiency": grouped["efficiency"].median(),
        "own_floor_epoch_s": grouped["own_floor_epoch_s"].median(),
        "overhead_efficiency": grouped["overhead_efficiency"].median(),
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


def perf_table(runs_per_preset: list[pd.DataFrame]) -> pd.DataFrame:
    """Backend, variant, preset, steady-state epoch, both floors and efficiencies, and the speed-up
    over the same backend's `tutorial` variant on the same preset."""
    runs = pd.concat(runs_per_preset)
    ok = runs[runs["status"] == "ok"].groupby(["preset", "backend", "variant", "device"], sort=False)
    table = pd.DataFrame({
        "median_epoch_s": ok["median_epoch_s"].median(),
        "spread_s": ok["median_epoch_s"].max() - ok["median_epoch_s"].min(),
        "floor_epoch_s": ok["floor_epoch_s"].median(),
        "own_floor_epoch_s": ok["own_floor_epoch_s"].median(),
        "efficiency": ok["efficiency"].median(),
        "overhead_efficiency": ok["overhead_efficiency"].median(),
        "first_epoch_s": ok["first_epoch_s"].median(),
    }).reset_index()
    tutorial = table[table["variant"] == "tutorial"].set_index(["preset", "backend", "device"])["median_epoch_s"]
    keys = list(zip(table["preset"], table["backend"], table["device"]))
    table["speedup_vs_tutorial"] = [tutorial.get(k, float("nan")) for k in keys] / table["median_epoch_s"]
    return table
