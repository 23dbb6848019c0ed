"""Reading a results directory: the one reader every report, gate and the history go through.

Every table is read against the tables' schema (framebench.store.schema): a torn last row is left
out with a warning, anything that is not a framebench table is one clear error, config.json and the
machine record are checked for shape (framebench.store.metadata) before any command reads them.
What a result *is* is defined here once: a job's latest attempt (`latest_attempts`) and the medians
over a group's ok repeats (`medians_over_repeats`).
"""

from __future__ import annotations

import csv
import io
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from framebench.errors import FrameBenchError
from framebench.store import job, schema
from framebench.store.metadata import read_config, read_machine

NAN_SPELLINGS = ["", "nan", "NaN", "-nan"]  # an empty number cell, however a writer spelled it


@dataclass(frozen=True)
class Refused:
    """A table row a reader left out: one of its cells breaks its column's rule (framebench.store.schema.Cell)."""

    path: Path  # the table (or export) it is a row of
    row: int  # 1-based, the header not counted
    column: str  # the first column whose cell breaks its rule
    value: str  # the cell as read
    rule: str  # what the column holds
    job: tuple | None = None  # the key (job.key_columns()) of the job it is a row of, where its key cells are readable

    def __str__(self) -> str:
        shown = self.value if len(self.value) <= 40 else self.value[:40] + "..."
        return f"{self.path}: row {self.row}, column {self.column}: {shown!r} is not {self.rule}"


def read_rows(directory: Path, table: str) -> tuple[pd.DataFrame, list[Refused]]:
    """One table's rows that make sense, and the rows left out because one of their cells breaks its
    column's rule. A torn last line is left out with a warning; anything that is not a framebench table
    (another header, not CSV, not UTF-8) is one clear error. A UTF-8 byte order mark (a spreadsheet's
    save) is accepted."""
    columns = schema.columns(table)
    path = directory / f"{table}.csv"
    if not path.exists():
        return empty_table(columns), []
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise FrameBenchError(f"{path} cannot be read ({exc.strerror or exc})") from None
    if not raw:
        return empty_table(columns), []
    torn = not raw.endswith(b"\n")
    try:
        text = raw[: raw.rfind(b"\n") + 1].decode("utf-8-sig")  # whole lines only (the header is written whole, so it is there)
        header = next(csv.reader(io.StringIO(text)))
        if header not in (columns, older_columns(table)):
            raise ValueError(f"columns {header[:4]}… are not {table}.csv's")
        rows = parse_rows(text, columns)
        rows = rows.assign(**{c: "" if schema.cell(c).kind == "text" else math.nan for c in columns if c not in header})[columns]
    except StopIteration:
        raise FrameBenchError(f"{path} is not a framebench table (no header line); pass a directory `framebench run` wrote") from None
    except (UnicodeDecodeError, ValueError, pd.errors.ParserError) as exc:
        reason = (str(exc).splitlines() or [type(exc).__name__])[0][:120]
        raise FrameBenchError(f"{path} is not a framebench table ({reason}); pass a directory `framebench run` wrote") from None
    if torn:
        print(f"warning: {path}: ignoring a torn last row (the writer was interrupted)", file=sys.stderr)
    return checked_rows(rows, path)


def parse_rows(text: str, columns: list[str]) -> pd.DataFrame:
    """The table's cells, number columns as numbers where every cell of them is one, else as the text
    written (checked_rows then names the cell that is not)."""
    numbers = [c for c in columns if schema.cell(c).kind != "text"]
    empty = {c: NAN_SPELLINGS if c in numbers else [""] for c in columns}
    read = lambda dtypes: pd.read_csv(io.StringIO(text), keep_default_na=False, na_values=empty, dtype=dtypes)  # noqa: E731
    try:
        return read({c: float if c in numbers else str for c in columns})
    except ValueError as exc:
        if isinstance(exc, pd.errors.ParserError):
            raise
        return read(str)  # a cell that is no number: read every cell as written, to name it


def checked_rows(rows: pd.DataFrame, path: Path) -> tuple[pd.DataFrame, list[Refused]]:
    """`rows` (a table's columns; number columns as numbers or as text) without the rows a cell of which
    breaks its column's rule (schema.cell), typed: numbers as floats, integer columns without an empty cell
    as integers, text with "" for empty. Returns them and a Refused per row left out."""
    columns = list(rows.columns)
    specs = [schema.cell(c) for c in columns]
    numbers = [i for i, spec in enumerate(specs) if spec.kind != "text"]
    values, empty = number_cells(rows[[columns[i] for i in numbers]])
    rules = [specs[i] for i in numbers]
    low, high = np.array([r.low for r in rules], dtype=float), np.array([r.high for r in rules], dtype=float)
    integer, required = np.array([r.kind == "int" for r in rules], dtype=bool), np.array([r.required for r in rules], dtype=bool)
    with np.errstate(invalid="ignore"):
        inside = np.isfinite(values) & (values >= low) & (values <= high) & (~integer | (values % 1 == 0))
    bad = np.zeros(rows.shape, dtype=bool)
    bad[:, numbers] = (empty & required) | (~empty & ~inside)
    for i, spec in enumerate(specs):
        if spec.kind == "text" and (spec.required or spec.choices):
            bad[:, i] = breaks_text(rows.iloc[:, i], spec).to_numpy()
    broken = bad.any(axis=1)
    refused = refusals(rows[broken], bad[broken], path)
    kept = values[~broken] if refused else values
    converted = {
        columns[i]: kept[:, j].astype("int64") if specs[i].kind == "int" and not np.isnan(kept[:, j]).any() else kept[:, j]
        for j, i in enumerate(numbers)
    }
    text = rows.loc[~broken, [c for i, c in enumerate(columns) if i not in numbers]].fillna("")
    typed = pd.concat([text, pd.DataFrame(converted, index=text.index)], axis=1)[columns]  # the index stays each row's place in the file
    return typed, refused


def number_cells(written: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """(the cells as floats, which are empty) of number columns read as numbers or, where a column
    holds text, as written (a cell that is no number is then NaN but not empty)."""
    if all(pd.api.types.is_float_dtype(dtype) or pd.api.types.is_integer_dtype(dtype) for dtype in written.dtypes):
        values = written.to_numpy(dtype=float, na_value=np.nan)  # read as numbers: every cell is one, or empty
        return values, np.isnan(values)
    values = np.empty(written.shape, order="F")  # column by column
    empty = np.empty(written.shape, dtype=bool, order="F")
    for position, column in enumerate(written.columns):
        cells = written[column]
        if pd.api.types.is_numeric_dtype(cells) and not pd.api.types.is_bool_dtype(cells):
            values[:, position] = cells.to_numpy(dtype=float, na_value=np.nan)
            empty[:, position] = np.isnan(values[:, position])
        else:
            values[:, position] = pd.to_numeric(cells, errors="coerce").to_numpy(dtype=float, na_value=np.nan)
            empty[:, position] = (cells.isna() | cells.astype(str).isin(NAN_SPELLINGS)).to_numpy()
    return values, empty


def breaks_text(written: pd.Series, spec: schema.Cell) -> pd.Series:
    """Per cell of a text column, whether it breaks `spec` (required, or not one of its choices)."""
    empty = written.isna() | (written.astype(str) == "")
    bad = empty & spec.required
    return bad | (~empty & ~written.isin(spec.choices)) if spec.choices else bad


def refusals(rows: pd.DataFrame, bad: np.ndarray, path: Path) -> list[Refused]:
    """A Refused per row of `rows` (each with a bad cell, flagged in `bad`): its first bad cell, and its
    job where the row's key cells are readable."""
    columns = list(rows.columns)
    keys = [columns.index(c) for c in job.key_columns()] if set(job.key_columns()) <= set(columns) else None
    refused = []
    for index, cells, flags in zip(rows.index, rows.to_numpy(dtype=object), bad, strict=True):
        first = int(np.argmax(flags))
        readable = keys is not None and not flags[keys].any()
        key = tuple(int(float(cells[i])) if columns[i] == "repeat" else text_of(cells[i]) for i in keys) if readable else None
        refused.append(Refused(path, int(index) + 1, columns[first], text_of(cells[first]), schema.cell(columns[first]).rule, key))
    return refused


def text_of(cell) -> str:
    return "" if pd.isna(cell) else str(cell)


def read_table(directory: Path, table: str) -> pd.DataFrame:
    """One table, for a command that must read every row of it (resume, which numbers attempts from
    them): a row that breaks its columns' rules is an error (refuse_unreadable)."""
    rows, refused = read_rows(directory, table)
    refuse_unreadable(refused)
    return rows


def older_columns(table: str) -> list[str]:
    """The header `table`.csv had before the columns of schema.ADDED_COLUMNS: such a table reads with them empty."""
    return [c for c in schema.columns(table) if c not in schema.ADDED_COLUMNS.get(table, [])]


def refuse_unreadable(refused: list[Refused]) -> None:
    """A gate (and resume) decides nothing on rows it could not read: one line naming the first such
    cell, and how many more rows there are."""
    if refused:
        more = f" (and {len(refused) - 1} more row(s))" if len(refused) > 1 else ""
        raise FrameBenchError(
            f"{refused[0]}{more}; this command decides nothing on rows it cannot read: fix or remove the row, or rerun its job"
        )


def left_out_lines(refused: list[Refused]) -> list[str]:
    """A report's lines for the rows it left out: one per file and column, naming its first bad row."""
    groups: dict[tuple, list[Refused]] = {}
    for row in refused:
        groups.setdefault((row.path, row.column), []).append(row)
    return [
        f"{rows[0]}; the row is left out" + (f", and {len(rows) - 1} more row(s) with a bad {rows[0].column}" if len(rows) > 1 else "")
        for rows in groups.values()
    ]


def empty_table(columns: list[str]) -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype=str if c in schema.text_columns() else float) for c in columns})


def load_results(directory: str | Path) -> dict:
    """Read a results directory back: {'runs', 'epochs', 'steps', 'gemm'} DataFrames of the rows that
    make sense, 'config' and 'env' dicts, as written (the reports derive floors and efficiencies from
    gemm.csv: framebench.reports.floors), and 'refused': the rows left out (Refused). A report shows what
    it left out (left_out_lines); a gate refuses to decide (refuse_unreadable)."""
    directory = Path(directory)
    for required in ("runs.csv", "config.json"):
        if not (directory / required).is_file():
            raise FrameBenchError(f"{directory} is not a results directory (no {required}); pass the folder `framebench run` printed")
    tables: dict = {}
    refused = []
    for table in schema.TABLE_NAMES:
        tables[table], left_out = read_rows(directory, table)
        refused += left_out
    for table in schema.TABLE_NAMES:  # a renamed or copied directory reads as itself: its rows may carry the old name
        if "run_id" in tables[table]:
            tables[table]["run_id"] = directory.name
    tables["config"] = read_config(directory)
    tables["machine"] = read_machine(directory)
    tables["runs"], off_sweep = rows_of_the_sweep(tables["runs"], tables["config"], directory / "runs.csv")
    tables["refused"] = refused + off_sweep
    tables["runs"] = without_jobs(tables["runs"], {r.job for r in tables["refused"] if r.job and r.path.name == "runs.csv"})
    return tables


def without_jobs(runs: pd.DataFrame, jobs: set[tuple]) -> pd.DataFrame:
    """`runs` without any attempt of `jobs`: a job whose latest row was left out has no result, and an
    earlier attempt it superseded must not read as one."""
    if not jobs:
        return runs
    return runs.loc[np.array([key not in jobs for key in runs[job.key_columns()].itertuples(index=False, name=None)], dtype=bool)]


def rows_of_the_sweep(runs: pd.DataFrame, config: dict, path: Path) -> tuple[pd.DataFrame, list[Refused]]:
    """The runs whose sweep field and value are config.json's (its sweep is what they ran), and a Refused
    per other row: a value the sweep never had would be read as a configuration nobody ran."""
    if "sweep" not in config:  # written before the sweep was recorded
        return runs, []
    field, values = config["sweep"]["field"], config["sweep"]["values"]
    bad = (runs["sweep_field"] != field) | ~runs["sweep_value"].isin(values)
    keys, rule = job.key_columns(), f"a value of config.json's sweep ({field or 'none'}: {', '.join(values)})"
    refused = [
        Refused(path, index + 1, column, str(row[column]), rule, tuple(row[keys]))
        for index, row in runs[bad].iterrows()
        for column in ["sweep_field" if row["sweep_field"] != field else "sweep_value"]
    ]
    return runs[~bad], refused


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
