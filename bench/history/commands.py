"""`framebench history` and `framebench publish`: the series and their changes, printed one line each."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from framebench.history.changes import METRICS, Change, Metric, detect
from framebench.history.series import History, export_parquet, load_history, series_key
from framebench.reports.markdown import format_table
from framebench.store.job import DIMENSIONS

SPELLED_OUT = ("backend", "variant", "device", "sweep_value")  # the dimensions a label names in its own words


@dataclass(frozen=True)
class Found:
    series: pd.DataFrame  # the series' runs, in order
    change: Change  # what changed, at series.iloc[change.index]
    latest: bool  # the last change of this metric in its series (what the series is like now)

    @property
    def first_after(self) -> pd.Series:
        return self.series.iloc[self.change.index]

    @property
    def last_before(self) -> pd.Series:
        return self.series.iloc[self.change.index - 1]


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


def all_changes(runs: pd.DataFrame) -> list[Found]:
    """Every change of every series, newest first."""
    found = []
    for _, series in runs.groupby("series", sort=False):
        series = series.reset_index(drop=True)
        for metric in METRICS:
            changes = detect(series, metric)
            found += [Found(series, change, i == len(changes) - 1) for i, change in enumerate(changes)]
    return sorted(found, key=lambda f: f.first_after["run_time"], reverse=True)


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
    for line in history.skipped:
        print(line)
    found = all_changes(history.runs)
    print(format_table(series_table(history.runs, found)))
    for machine, fingerprint in history.machines.items():
        print(f"machine {machine}: {clean(fingerprint)}")
    if parquet:
        export_parquet(history.rows, parquet)
        print(f"wrote {len(history.rows)} rows to {parquet}")
    return 0


def run_publish(paths: list[str], out: str, fail_on_regression: bool) -> int:
    """Print the changes, write the site; 1 when asked to fail and a series' latest change is a regression."""
    from framebench.history.site import write_site

    history: History = load_history(paths)
    for line in history.skipped:
        print(line)
    found = all_changes(history.runs)
    for item in found:
        print(change_line(item))
    print(f"{len(found)} change(s) in {history.runs['series'].nunique()} series; site: {write_site(history, found, out)}")
    regressions = [f for f in found if f.latest and f.change.regression]
    if fail_on_regression and regressions:
        print(f"{len(regressions)} series' latest change is a regression (slower or less accurate)")
        return 1
    return 0
