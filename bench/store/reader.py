"""Reading a results directory: the one reader every report, gate and the history go through.

Every table is read against the job contract's columns (framebench.store.job): a torn last row is left
out with a warning, anything that is not a framebench table is one clear error, config.json and the
machine record are checked for shape (CONFIG_SHAPE, MACHINE_SHAPE) before any command reads them.
What a result *is* is defined here once: a job's latest attempt (`latest_attempts`) and the medians
over a group's ok repeats (`medians_over_repeats`).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import sys
from pathlib import Path

import pandas as pd

from framebench.core.config import ModelConfig, TrainConfig
from framebench.errors import FrameBenchError
from framebench.store import job


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise FrameBenchError(f"{path} cannot be read ({exc}); it is not a framebench results file") from None


NUMBER = (int, float)
STRINGS = "list of strings"
FIELD_SHAPES = {"int": int, "float": NUMBER, "str": str, "bool": bool, "tuple[int, ...]": [int]}  # a config dataclass field's JSON


def fields_shape(cls) -> dict:
    """The JSON shape of a configuration dataclass as config.json holds it (dataclasses.asdict)."""
    return {f.name: FIELD_SHAPES[f.type] for f in dataclasses.fields(cls)}


CONFIG_SHAPE = {  # config.json's fields and what each holds (a field missing is older framebench's, and allowed)
    "format_version": int,
    "framebench_version": str,
    "preset": str,
    "dataset": str,
    "data_dir": (str, type(None)),
    "data_source": str,
    "model": fields_shape(ModelConfig),
    "train": fields_shape(TrainConfig),
    "threads": int,
    "sweep": {"field": str, "values": STRINGS},
    "target_acc": NUMBER,
    "floors": bool,
    "lockstep": bool,
    "matrices": [{"axes": dict, "repeats": int, "seed": int, "same_seed": bool}],
    "envs": {"*": STRINGS},
}
NODE_SHAPE = {  # one node's environment in env.json
    "python": str,
    "libraries": {"*": str},
    "cpu": str,
    "cores": (int, type(None)),
    "threads": int,
    "os": str,
    "machine": str,
    "gpus": [dict],
    "kernel_settings": {"*": str},
}
ENV_SHAPE = {  # env.json's fields this framebench reads and what each holds (others are kept, unread)
    **NODE_SHAPE,
    "git_commit": str,
    "command": str,
    "started_utc": str,
    "nodes": {"*": NODE_SHAPE},
    "earlier": [dict],
    "environments": {"*": dict},
}


def shape_error(value, shape, where: str, closed: bool = False) -> str | None:
    """Where `value` departs from `shape` (a type, a tuple of types, STRINGS, a {field: shape} dict
    whose fields are optional and whose "*" is any other field's, or a one-item list: a list of that
    shape), or None. `closed`: a field a {field: shape} without "*" does not name is an error (a newer
    framebench's field, which this one would misread)."""
    if isinstance(shape, dict):
        if not isinstance(value, dict):
            return f"{where} holds {str(value)[:60]!r}, not an object"
        if closed and "*" not in shape and (unknown := sorted(set(value) - set(shape))):
            return f"{where}.{unknown[0]} is a field this framebench does not know"
        fields = ((k, v, shape.get(k, shape.get("*"))) for k, v in value.items())
        return next((e for k, v, inner in fields if inner is not None and (e := shape_error(v, inner, f"{where}.{k}", closed))), None)
    if isinstance(shape, list):
        if not isinstance(value, list):
            return f"{where} holds {str(value)[:60]!r}, not a list"
        return next((e for i, v in enumerate(value) if (e := shape_error(v, shape[0], f"{where}[{i}]", closed))), None)
    if shape == STRINGS:
        return shape_error(value, [str], where)
    types = shape if isinstance(shape, tuple) else (shape,)
    if isinstance(value, bool) != (bool in types) or not isinstance(value, types):
        return f"{where} holds {str(value)[:60]!r}, not {' or '.join(t.__name__ for t in types)}"
    return None


def read_metadata(path: Path, shape: dict, known_only: bool) -> dict:
    """config.json or env.json, checked against its shape; `known_only` refuses fields this
    framebench does not know (a newer framebench's). Anything else is one line naming the field."""
    data = read_json(path)
    fix = "it is damaged or from another framebench version; rerun the matrix with this one"
    if not isinstance(data, dict):
        raise FrameBenchError(f"{path} holds {str(data)[:60]!r}, not an object; {fix}")
    if error := shape_error(data, shape, path.name, closed=known_only):
        raise FrameBenchError(f"{path}: {error}; {fix}")
    return data


def read_config(directory: Path) -> dict:
    return read_metadata(directory / "config.json", CONFIG_SHAPE, known_only=True)


def read_env(directory: Path) -> dict:
    """env.json, or {} where the directory has none."""
    return read_metadata(directory / "env.json", ENV_SHAPE, known_only=False) if (directory / "env.json").exists() else {}


def read_table(directory: Path, table: str) -> pd.DataFrame:
    """One table, every whole row of it: a torn last line is left out with a warning; anything that is
    not a framebench table is one clear error."""
    columns = job.columns(table)
    path = directory / f"{table}.csv"
    if not path.exists():
        return empty_table(columns)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise FrameBenchError(f"{path} cannot be read ({exc.strerror or exc})") from None
    if not raw:
        return empty_table(columns)
    torn = not raw.endswith(b"\n")
    try:
        text = raw[: raw.rfind(b"\n") + 1].decode()  # whole lines only (the header is written whole, so it is there)
        header = next(csv.reader(io.StringIO(text)))
        if header not in (columns, older_columns(table)):
            raise ValueError(f"columns {header[:4]}… are not {table}.csv's")
        dtypes = {c: str for c in job.text_columns() if c in columns}
        missing = {c: [""] if c in dtypes else ["", "nan", "NaN", "-nan"] for c in columns}  # a number column's NaN, however written
        rows = pd.read_csv(io.StringIO(text), keep_default_na=False, na_values=missing, dtype=dtypes).fillna({c: "" for c in dtypes})
        rows = rows.assign(**{c: "" if c in dtypes else math.nan for c in columns if c not in header})[columns]
    except StopIteration:
        raise FrameBenchError(f"{path} is not a framebench table (no header line); pass a directory `framebench run` wrote") from None
    except (UnicodeDecodeError, ValueError, pd.errors.ParserError) as exc:
        reason = (str(exc).splitlines() or [type(exc).__name__])[0][:120]
        raise FrameBenchError(f"{path} is not a framebench table ({reason}); pass a directory `framebench run` wrote") from None
    if torn:
        print(f"warning: {path}: ignoring a torn last row (the writer was interrupted)", file=sys.stderr)
    return rows


def older_columns(table: str) -> list[str]:
    """The header `table`.csv had before the columns of job.ADDED_COLUMNS: such a table reads with them empty."""
    return [c for c in job.columns(table) if c not in job.ADDED_COLUMNS.get(table, [])]


def empty_table(columns: list[str]) -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype=str if c in job.text_columns() else float) for c in columns})


def load_results(directory: str | Path) -> dict:
    """Read a results directory back: {'runs', 'epochs', 'steps', 'gemm'} DataFrames plus 'config' and
    'env' dicts, as written (the reports derive floors and efficiencies from gemm.csv: framebench.reports.floors)."""
    directory = Path(directory)
    for required in ("runs.csv", "config.json"):
        if not (directory / required).is_file():
            raise FrameBenchError(f"{directory} is not a results directory (no {required}); pass the folder `framebench run` printed")
    tables: dict = {table: read_table(directory, table) for table in job.TABLE_NAMES}
    for table in job.TABLE_NAMES:  # a renamed or copied directory reads as itself: its rows may carry the old name
        if "run_id" in tables[table]:
            tables[table]["run_id"] = directory.name
    tables["config"] = read_config(directory)
    tables["env"] = read_env(directory)
    return tables


def node_environments(env: dict) -> dict[str, dict]:
    """{node name: its environment} from env.json (one written before nodes were recorded is its own node)."""
    return env.get("nodes") or {env.get("machine", ""): env}


def swept_field(config: dict) -> str:
    """The field config.json's sweep varies ("" when the run is no sweep)."""
    return config.get("sweep", {}).get("field", "")


def seeds_text(config: dict) -> str:
    """How config.json's matrices seeded their repeats, e.g. "0 + repeat" ("" when none is recorded)."""
    return "; ".join(f"{m['seed']}" if m["same_seed"] else f"{m['seed']} + repeat" for m in config.get("matrices", []))


def latest_attempts(runs: pd.DataFrame) -> pd.DataFrame:
    """Each job's last attempt, in the order the jobs were written."""
    if runs.empty:
        return runs
    return runs.sort_values("attempt", kind="stable").drop_duplicates(["run_id", *job.key_columns()], keep="last").sort_index()


def ok_results(latest: pd.DataFrame) -> pd.DataFrame:
    """Of jobs' latest attempts, those that are results: ended ok with an epoch time and an accuracy."""
    return latest[(latest["status"] == job.OK) & latest["median_epoch_s"].notna() & latest["final_test_acc"].notna()]


def medians_over_repeats(results: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Per group of `keys` of `results` (ok_results rows): how many repeats, and the median, fastest and
    slowest steady-state epoch and the median, lowest and highest final accuracy over them: what every
    report and the history show for a group of repeats."""
    grouped = results.groupby(keys, sort=False, dropna=False)
    epoch, acc = grouped["median_epoch_s"], grouped["final_test_acc"]
    return pd.DataFrame(
        {
            "repeats": grouped.size(),
            "epoch_s": epoch.median(),
            "epoch_s_min": epoch.min(),
            "epoch_s_max": epoch.max(),
            "acc": acc.median(),
            "acc_min": acc.min(),
            "acc_max": acc.max(),
        }
    ).reset_index()
