"""Many results directories as one record, queried with DuckDB where the tables lie (no server, no import).

A series is one benchmark key on one machine under one training configuration: the key columns of
`compare`, the node's machine fingerprint, and a hash of config.json's model and train sections (runs
trained differently are different series, never joined). Its points are runs (results directories),
in run time then git commit order; a point is the median over the run's ok repeats, with their range.
"""

from __future__ import annotations

import csv
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import pandas as pd

from framebench.errors import FrameBenchError
from framebench.reports.compare import TRAINING, fingerprints
from framebench.store.job import columns, key_columns, series_columns
from framebench.store.reader import read_json


def series_key() -> list[str]:
    """What one series shares: the benchmark key, the backend's code, the machine and the training."""
    return [*series_columns(), "implementation", "machine", "config"]


def page_key() -> list[str]:
    """What one dashboard page shows (every machine and backend-code version its own line)."""
    return [*series_columns(), "config"]


def job_key() -> list[str]:
    return ["run_id", *key_columns()]


NUMBERS = ["repeat", "attempt", "median_epoch_s", "final_test_acc", "started_at"]  # runs.csv columns read as numbers
CSV_OPTIONS = "header=true, delim=',', quote='\"', escape='\"', new_line='\\n', strict_mode=false, auto_detect=false, filename=true"


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


def directory_metadata(directory: Path) -> tuple[dict, list[dict]]:
    """(the directory's row of metadata, one row per node with its machine id) from config.json and env.json."""
    config = read_json(directory / "config.json")
    env = read_json(directory / "env.json") if (directory / "env.json").exists() else {}
    if not isinstance(config, dict) or not isinstance(env, dict):
        raise FrameBenchError("config.json or env.json is not a JSON object")
    try:
        prints = fingerprints(env)
    except (AttributeError, TypeError) as exc:
        raise FrameBenchError(f"env.json's nodes are not framebench's ({exc})") from None
    meta = {
        "directory": str(directory),
        "config": short_hash({section: config.get(section) for section in TRAINING}),
        "commit": str(env.get("git_commit") or ""),
        "started_utc": str(env.get("started_utc") or ""),
    }
    nodes = [{"directory": str(directory), "node": node, "machine": short_hash(text), "fingerprint": text} for node, text in prints.items()]
    return meta, nodes


def check_header(path: Path, columns: list[str]) -> None:
    try:
        with path.open(newline="") as handle:
            header = next(csv.reader(handle), None)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise FrameBenchError(f"{path.name} cannot be read ({exc})") from None
    if header != columns:
        raise FrameBenchError(f"{path.name} does not have framebench's columns")


def read_csv(files: list[str], columns: list[str]) -> str:
    """The SQL that reads framebench tables in place: every column as text (cast where used), whatever
    a hostile file holds, and the header's CRLF ending tolerated."""
    types = ", ".join(f"'{c}': 'VARCHAR'" for c in columns)
    listed = ", ".join("'" + f.replace("'", "''") + "'" for f in files)
    return f"read_csv([{listed}], columns={{{types}}}, {CSV_OPTIONS})"


def load_history(paths: list[str]) -> History:
    """Every input's latest attempts joined with their metadata, and the per-run medians of each series."""
    directories, parquets, skipped = results_directories(paths)
    con = duckdb.connect()
    metas, nodes, good = [], [], []
    for directory in directories:
        try:
            meta, machine_rows = directory_metadata(directory)
            check_header(directory / "runs.csv", columns("runs"))
            if (directory / "epochs.csv").exists():
                check_header(directory / "epochs.csv", columns("epochs"))
            con.sql(f"SELECT count(*) FROM {read_csv([str(directory / 'runs.csv')], columns('runs'))}").fetchall()
        except (FrameBenchError, duckdb.Error) as exc:
            skipped.append(f"skipped {directory}: {' '.join(str(exc).split())[:160]}")
            continue
        metas.append(meta)
        nodes += machine_rows
        good.append(directory)
    parts = [joined_rows(con, good, metas, nodes)] if good else []
    parts += [f"SELECT * FROM read_parquet('{str(p).replace(chr(39), chr(39) * 2)}')" for p in parquets]
    if not parts:
        raise FrameBenchError("no results directory to read: " + "; ".join(skipped))
    con.sql("CREATE TABLE rows AS " + " UNION ALL BY NAME ".join(parts))
    epochs = latest_epochs(con, good) if good else pd.DataFrame(columns=["directory", *job_key(), "epoch", "train_loss", "test_loss"])
    return History(
        rows=con.sql("SELECT * FROM rows").df(),
        runs=per_run(con),
        epochs=epochs,
        machines={n["machine"]: n["fingerprint"] for n in nodes},
        skipped=skipped,
    )


def joined_rows(con: duckdb.DuckDBPyConnection, directories: list[Path], metas: list[dict], nodes: list[dict]) -> str:
    """SQL of each job's latest attempt with its directory's metadata and its node's machine id."""
    con.register("meta", pd.DataFrame(metas))
    con.register("nodes", pd.DataFrame(nodes, columns=["directory", "node", "machine", "fingerprint"]))
    files = [str(d / "runs.csv") for d in directories]
    numbers = ", ".join(f"TRY_CAST(r.{c} AS DOUBLE) AS {c}" for c in NUMBERS)
    texts = ", ".join(f"coalesce(r.{c}, '') AS {c}" for c in columns("runs") if c not in NUMBERS)  # an empty cell is text, not NULL
    return f"""
        SELECT {texts}, {numbers}, m.directory, m.config, m.commit,
               coalesce(to_timestamp(TRY_CAST(r.started_at AS DOUBLE)), TRY_CAST(m.started_utc AS TIMESTAMPTZ)) AS run_time,
               coalesce(n.machine, 'node ' || r.node) AS machine
        FROM {read_csv(files, columns("runs"))} r
        JOIN meta m ON r.filename = m.directory || '/runs.csv'
        LEFT JOIN nodes n ON n.directory = m.directory AND n.node = r.node
        QUALIFY row_number() OVER (PARTITION BY m.directory, {", ".join("r." + c for c in job_key())}
                                   ORDER BY TRY_CAST(r.attempt AS DOUBLE) DESC) = 1"""


def per_run(con: duckdb.DuckDBPyConnection) -> pd.DataFrame:
    """One row per (series, run): medians and ranges over the run's ok repeats, in run time then commit order."""
    keys = ", ".join(series_key())
    runs = con.sql(f"""
        SELECT {keys}, directory, any_value(run_id) AS run_id, any_value(commit) AS commit, min(run_time) AS run_time,
               median(median_epoch_s) AS epoch_s, min(median_epoch_s) AS epoch_s_min, max(median_epoch_s) AS epoch_s_max,
               median(final_test_acc) AS acc, min(final_test_acc) AS acc_min, max(final_test_acc) AS acc_max,
               count(*) AS repeats, string_agg(DISTINCT framework_version, ' ') AS versions
        FROM rows
        WHERE status = 'ok' AND median_epoch_s > 0 AND final_test_acc IS NOT NULL
        GROUP BY {keys}, directory
        ORDER BY {keys}, run_time, commit""").df()
    runs["series"] = [short_hash(key) for key in runs[series_key()].itertuples(index=False)]
    runs["page"] = [short_hash(key) for key in runs[page_key()].itertuples(index=False)]
    runs["anchor"] = ["run-" + short_hash(d) for d in runs["directory"]]
    return runs


def latest_epochs(con: duckdb.DuckDBPyConnection, directories: list[Path]) -> pd.DataFrame:
    """Per-epoch losses of the latest attempts, for the loss curves."""
    files = [str(d / "epochs.csv") for d in directories if (d / "epochs.csv").exists()]
    if not files:
        return pd.DataFrame(columns=["directory", *job_key(), "epoch", "train_loss", "test_loss"])
    join = " AND ".join(f"coalesce(e.{c}, '') = CAST(r.{c} AS VARCHAR)" for c in job_key() if c not in NUMBERS)
    return con.sql(f"""
        SELECT r.directory, {", ".join("r." + c for c in job_key())}, TRY_CAST(e.epoch AS DOUBLE) AS epoch,
               TRY_CAST(e.train_loss AS DOUBLE) AS train_loss, TRY_CAST(e.test_loss AS DOUBLE) AS test_loss
        FROM {read_csv(files, columns("epochs"))} e
        JOIN rows r ON e.filename = r.directory || '/epochs.csv' AND {join}
             AND TRY_CAST(e.repeat AS DOUBLE) = r.repeat AND TRY_CAST(e.attempt AS DOUBLE) = r.attempt
        WHERE r.status = 'ok'
        ORDER BY r.directory, epoch""").df()


def export_parquet(history_rows: pd.DataFrame, out: str) -> None:
    """The joined rows as one Parquet file: `framebench history OUT.parquet` (or DuckDB anywhere) reads it back."""
    con = duckdb.connect()
    con.register("rows", history_rows)
    try:
        con.sql(f"COPY rows TO '{out.replace(chr(39), chr(39) * 2)}' (FORMAT parquet)")
    except duckdb.Error as exc:
        raise FrameBenchError(f"cannot write --parquet {out} ({' '.join(str(exc).split())[:160]})") from None
