"""Accuracy thresholds: `framebench thresholds` derives them from measured runs, `framebench check`
holds a results directory to them. A threshold is the lowest final test accuracy measured for its
(preset, dataset, backend, epochs) across the runs given, minus a stated margin; it is regenerated
from new measurements, never edited down to make a check pass."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from bench.errors import FrameBenchError
from bench.results import load_results

DEFAULT_FILE = Path(__file__).resolve().parent / "thresholds.csv"
KEYS = ["preset", "dataset", "backend", "epochs"]
COLUMNS = KEYS + ["min_test_acc", "measured_min", "measured_runs", "margin"]


def runs_with_epochs(directory: str) -> pd.DataFrame:
    """runs.csv with the configured epoch count (from config.json) as a column."""
    tables = load_results(directory)
    runs = tables["runs"].copy()
    runs["epochs"] = tables["config"]["train"]["epochs"]
    return runs


def derive(directories: list[str], margin: float) -> pd.DataFrame:
    runs = pd.concat([runs_with_epochs(d) for d in directories])
    bad = runs[runs["status"] != "ok"]
    if not bad.empty:
        raise FrameBenchError(f"{len(bad)} run(s) did not finish ok (e.g. {bad.iloc[0]['backend']}: {bad.iloc[0]['status']}); "
                              "thresholds come from complete runs only")
    grouped = runs.groupby(KEYS)["final_test_acc"]
    table = pd.DataFrame({"measured_min": grouped.min(), "measured_runs": grouped.size()}).reset_index()
    table["margin"] = margin
    table["min_test_acc"] = (table["measured_min"] - margin).round(4)
    return table[COLUMNS]


def load_thresholds(path: Path) -> pd.DataFrame:
    if not path.exists():
        raise FrameBenchError(f"no thresholds file at {path}; make one with `framebench thresholds DIR --output {path}`")
    table = pd.read_csv(path, comment="#")
    missing = set(COLUMNS) - set(table.columns)
    if missing:
        raise FrameBenchError(f"{path} lacks columns {sorted(missing)}; regenerate it with `framebench thresholds`")
    return table


def check(directory: str, thresholds_path: Path) -> tuple[list[str], list[str]]:
    """(failures, notes): every run that missed or has no threshold, in one line each."""
    runs = runs_with_epochs(directory).merge(load_thresholds(thresholds_path), on=KEYS, how="left")
    failures, notes = [], []
    for run in runs.itertuples():
        where = f"{run.backend}/{run.variant} on {run.device} ({run.preset}, {run.dataset}, {run.epochs} epochs, repeat {run.repeat + 1})"
        if pd.isna(run.min_test_acc):
            notes.append(f"{where}: no threshold in {thresholds_path}")
        elif run.status != "ok":
            failures.append(f"{where}: run {run.status} ({run.error}); threshold {run.min_test_acc:.4f} not met")
        elif run.final_test_acc < run.min_test_acc:
            failures.append(f"{where}: test accuracy {run.final_test_acc:.4f} < threshold {run.min_test_acc:.4f}")
    return failures, notes


def write_thresholds(table: pd.DataFrame, path: Path, command: str, directories: list[str]) -> None:
    """The table, headed by how it was made: this command and the commands that measured its runs."""
    measured = [f"#   {load_results(d)['env'].get('command', '?')}  (seeds {load_results(d)['config'].get('seeds', '?')})"
                for d in directories]
    header = ["# Minimum final test accuracy per (preset, dataset, backend, epochs): the lowest measured over",
              "# measured_runs runs, minus margin. Runs measured by:", *measured, f"# Derived by: {command}"]
    path.write_text("\n".join(header) + "\n" + table.to_csv(index=False))
