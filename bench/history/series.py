"""Many results directories as one record: every directory read by the store's one reader, the series
and their per-run medians defined as the reports define them, exported to and read from Parquet by DuckDB.

A series is one benchmark key on one machine under one training configuration: the key columns of
`compare`, the node's machine fingerprint, and a hash of config.json's model and train sections (runs
trained differently are different series, never joined). Its points are runs (results directories),
in run time then git commit order; a point is the median over the run's ok repeats, with their range.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import pandas as pd

from framebench.errors import FrameBenchError
from framebench.reports.comparison import TRAINING, fingerprints
from framebench.store.job import key_columns, series_columns
from framebench.store.reader import checked_rows, latest_attempts, left_out_lines, load_results, medians_over_repeats, ok_results
from framebench.store.schema import columns


def series_key() -> list[str]:
    """What one series shares: the benchmark key, the backend's code, the machine and the training."""
    return [*series_columns(), "implementation", "machine", "config"]


def page_key() -> list[str]:
    """What one dashboard page shows (every machine and backend-code version its own line)."""
    return [*series_columns(), "config"]


EXPORT_COLUMNS = ["directory", "config", "commit", "started_utc", "machine", "run_time"]  # what a Parquet export adds to runs.csv's


def job_key() -> list[str]:
    return ["run_id", *key_columns()]


@dataclass
class History:
    rows: pd.DataFrame  # each job's latest attempt, every status, joined with its directory's metadata
    runs: pd.DataFrame  # one row per (series, run): medians and ranges of the ok repeats, in run order
    epochs: pd.DataFrame  # epochs.csv of the latest attempts (loss curves); empty for Parquet input
    machines: dict[str, str] = field(default_factory=dict)  # machine id -> its fingerprint, for a legend
    skipped: list[str] = field(default_factory=list)  # one line per input left out, naming it and why


def short_hash(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:12]


def results_directories(paths: list[str]) -> tuple[list[Path], list[Path], list[str]]:
    """(results directories, Parquet files, skipped lines): a path is a results directory (config.json
    and runs.csv), a folder holding some one level down, or a Parquet export of a history."""
    directories, parquets, skipped = [], [], []
    for text in paths:
        path = Path(text)
        if path.is_file() and path.suffix == ".parquet":
            parquets.append(path)
        elif is_results_directory(path):
            directories.append(path)
        elif path.is_dir() and (found := sorted(p for p in path.iterdir() if is_results_directory(p))):
            directories += found
        else:
            skipped.append(f"skipped {text}: not a results directory, a folder of them, nor a .parquet export")
    unique = {d.resolve(): d for d in directories}  # a directory named twice (itself and its folder) counts once
    return list(unique.values()), parquets, skipped


def is_results_directory(path: Path) -> bool:
    return (path / "config.json").is_file() and (path / "runs.csv").is_file()


def directory_metadata(directory: Path, tables: dict) -> tuple[dict, dict[str, str]]:
    """(the directory's metadata, {node: its machine id}) from its config.json and machine record."""
    meta = {
        "directory": str(directory),
        "config": short_hash({section: tables["config"].get(section) for section in TRAINING}),
        "commit": str(tables["machine"].get("git_commit") or ""),
        "started_utc": str(tables["machine"].get("started_utc") or ""),
    }
    return meta, fingerprints(tables["machine"])


def directory_rows(directory: Path, machines: dict[str, str]) -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
    """(each job's latest attempt joined with the directory's metadata and its node's machine id, the
    epochs of those attempts, a line per row left out), read by the store's one reader; `machines` gains
    the nodes' fingerprints. A job with no start time (runs.csv's nor the machine record's) has no place in a
    series: it is left out with a line."""
    tables = load_results(directory)
    meta, prints = directory_metadata(directory, tables)
    machines.update({short_hash(text): text for text in prints.values()})
    rows = latest_attempts(tables["runs"]).assign(**meta)
    rows["machine"] = [short_hash(prints[node]) if node in prints else f"node {node}" for node in rows["node"]]
    started = pd.to_datetime(rows["started_at"], unit="s", utc=True, errors="coerce")
    rows["run_time"] = started.fillna(pd.to_datetime(meta["started_utc"], utc=True, errors="coerce"))
    left_out = left_out_lines(tables["refused"])
    if untimed := int(rows["run_time"].isna().sum()):
        left_out.append(f"{directory}: {untimed} job(s) without a start time (runs.csv's started_at, machine.json's started_utc); left out")
        rows = rows[rows["run_time"].notna()]
    epochs = tables["epochs"].merge(rows.loc[rows["status"] == "ok", ["directory", *job_key(), "attempt"]], on=[*job_key(), "attempt"])
    return rows, epochs[["directory", *job_key(), "epoch", "train_loss", "test_loss"]], left_out


def load_history(paths: list[str]) -> History:
    """Every input's latest attempts joined with their metadata, and the per-run medians of each series."""
    directories, parquets, skipped = results_directories(paths)
    machines: dict[str, str] = {}
    rows, epochs = [], []
    for directory in directories:
        try:
            found, losses, left_out = directory_rows(directory, machines)
        except FrameBenchError as exc:
            skipped.append(f"skipped {directory}: {' '.join(str(exc).split())[:160]}")
            continue
        rows.append(found)
        epochs.append(losses)
        skipped += left_out
    for path in parquets:
        try:
            found, left_out = read_parquet(path)
        except FrameBenchError as exc:
            skipped.append(f"skipped {path}: {' '.join(str(exc).split())[:160]}")
            continue
        rows.append(found)
        skipped += left_out
    if not rows:
        raise FrameBenchError("no results directory to read: " + "; ".join(skipped))
    joined = pd.concat(rows, ignore_index=True)
    no_epochs = pd.DataFrame(columns=["directory", *job_key(), "epoch", "train_loss", "test_loss"])
    return History(
        rows=joined,
        runs=per_run(joined),
        epochs=pd.concat(epochs, ignore_index=True) if epochs else no_epochs,
        machines=machines,
        skipped=skipped,
    )


def read_parquet(path: Path) -> tuple[pd.DataFrame, list[str]]:
    """A history exported with --parquet, read back with DuckDB, its rows checked as a table's are
    (store.reader.checked_rows), and a line per row left out; a file of another shape is one error."""
    try:
        rows = duckdb.sql(f"SELECT * FROM read_parquet('{str(path).replace(chr(39), chr(39) * 2)}')").df()
    except duckdb.Error as exc:
        raise FrameBenchError(f"{path} cannot be read as a history export ({' '.join(str(exc).split())[:160]})") from None
    expected = [*columns("runs"), *EXPORT_COLUMNS]
    if missing := [c for c in expected if c not in rows.columns]:
        raise FrameBenchError(f"{path} is not a history export (no column {', '.join(missing[:3])}); pass one `history --parquet` wrote")
    table, refused = checked_rows(rows[columns("runs")], path)
    text = EXPORT_COLUMNS[:-1]
    rows = pd.concat([table, rows.loc[table.index, text].fillna("").astype(str), rows.loc[table.index, ["run_time"]]], axis=1)
    left_out = left_out_lines(refused)
    rows["run_time"] = pd.to_datetime(rows["run_time"], utc=True, errors="coerce").dt.tz_convert("UTC")
    if untimed := int(rows["run_time"].isna().sum()):
        left_out.append(f"{path}: {untimed} row(s) whose run_time is no time; left out")
    return rows[rows["run_time"].notna()].reset_index(drop=True), left_out


def per_run(rows: pd.DataFrame) -> pd.DataFrame:
    """One row per (series, run): the store's medians over the run's ok repeats, in run time then commit order."""
    keys = [*series_key(), "directory"]
    results = ok_results(rows)
    runs = medians_over_repeats(results, keys)
    grouped = results.groupby(keys, sort=False, dropna=False)
    about = pd.DataFrame(
        {
            "run_id": grouped["run_id"].first(),
            "commit": grouped["commit"].first(),
            "run_time": grouped["run_time"].min(),
            "versions": grouped["framework_version"].agg(lambda v: " ".join(sorted(set(v)))),
        }
    ).reset_index()
    runs = runs.merge(about, on=keys).sort_values([*series_key(), "run_time", "commit"], kind="stable").reset_index(drop=True)
    runs["series"] = [short_hash(key) for key in runs[series_key()].itertuples(index=False)]
    runs["page"] = [short_hash(key) for key in runs[page_key()].itertuples(index=False)]
    runs["anchor"] = ["run-" + short_hash(d) for d in runs["directory"]]
    return runs


def export_parquet(history_rows: pd.DataFrame, out: str) -> None:
    """The joined rows as one Parquet file: `framebench history OUT.parquet` (or DuckDB anywhere) reads it back."""
    con = duckdb.connect()
    con.register("rows", history_rows)
    try:
        con.sql(f"COPY rows TO '{out.replace(chr(39), chr(39) * 2)}' (FORMAT parquet)")
    except duckdb.Error as exc:
        raise FrameBenchError(f"cannot write --parquet {out} ({' '.join(str(exc).split())[:160]})") from None
