"""`framebench history` and `framebench publish`: the series and their changes, printed one line each."""

from __future__ import annotations

import sys

import pandas as pd

from framebench.history.changes import Found, all_changes
from framebench.history.series import History, export_parquet, load_history, series_key
from framebench.history.site import write_site
from framebench.history.text import clean, effect_text, label, short_commit, value
from framebench.reports.markdown import format_table
from framebench.reports.verdicts import FAIL, PASS, UNDECIDED


def change_line(found: Found) -> str:
    first, last, change = found.first_after, found.last_before, found.change
    return (
        f"{label(first)} [machine {first['machine']}, config {first['config']}] {change.metric.label}: "
        f"{value(change.before, change.metric)} → {value(change.after, change.metric)} ({effect_text(change)}) "
        f"from run {clean(first['run_id'])} (commit {clean(short_commit(first['commit']))}), last before: {clean(last['run_id'])}"
    )


def series_table(runs: pd.DataFrame, found: list[Found]) -> pd.DataFrame:
    """One row per series: its key, latest values, number of runs and changes."""
    counts = pd.Series([f.first_after["series"] for f in found], dtype=str).value_counts()
    latest = runs.groupby("series", sort=False).tail(1)
    table = latest[series_key() + ["run_id", "epoch_s", "acc"]].rename(columns={"run_id": "latest_run"}).copy()
    table["runs"] = runs.groupby("series", sort=False).size().to_numpy()
    table["changes"] = [int(counts.get(s, 0)) for s in latest["series"]]
    for column in [*series_key(), "latest_run"]:
        table[column] = table[column].map(clean)
    return table


def run_history(paths: list[str], parquet: str | None) -> int:
    """Print every series with its latest values and number of changes; export the joined rows on request."""
    history = load_history(paths)
    warn_left_out(history)
    found = all_changes(history.runs)
    print(format_table(series_table(history.runs, found)))
    for machine, fingerprint in history.machines.items():
        print(f"machine {machine}: {clean(fingerprint)}")
    if parquet:
        export_parquet(history.rows, parquet)
        print(f"wrote {len(history.rows)} rows to {parquet}")
    return 0


def warn_left_out(history: History) -> None:
    """Each input or row the history left out, one warning line each (the site lists them too)."""
    for line in history.skipped:
        print(f"warning: {line}", file=sys.stderr)


def run_publish(paths: list[str], out: str, fail_on_regression: bool) -> int:
    """Print the changes, write the site. Asked to fail on a regression, it is a gate: 1 when a series'
    latest change is a regression, else 2 when an input or a row was left out (what it could not read
    might hold one), else 0."""
    history: History = load_history(paths)
    warn_left_out(history)
    found = all_changes(history.runs)
    for item in found:
        print(change_line(item))
    left_out = f" (inputs or rows left out: {len(history.skipped)} warning(s))" if history.skipped else ""
    print(f"{len(found)} change(s) in {history.runs['series'].nunique()} series{left_out}; site: {write_site(history, found, out)}")
    if not fail_on_regression:
        return 0
    if regressions := [f for f in found if f.latest and f.change.regression]:
        print(f"{len(regressions)} series' latest change is a regression (slower or less accurate)")
        return FAIL
    if history.skipped:
        print("not verified: inputs or rows could not be read (the warnings name them), and a regression may be in them: refused")
        return UNDECIDED
    return PASS
