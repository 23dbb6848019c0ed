"""Accuracy thresholds: `framebench thresholds` derives them from measured runs, `framebench check`
holds a results directory to them. A threshold is the lowest final test accuracy measured for its
(preset, dataset, backend, precision, epochs, sweep value) across the runs given, every seed's its own
run, minus a stated margin, and holds for a run at any seed; it is regenerated from new measurements,
never edited down to make a check pass.

`check` passes only what it verified: a run that did not finish ok fails whatever the thresholds say,
and a run without a threshold fails too unless --allow-missing is given.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from framebench.errors import FrameBenchError
from framebench.reports.markdown import format_table
from framebench.store.job import accuracy_key_columns
from framebench.store.metadata import seeds_text, swept_field
from framebench.store.reader import latest_attempts, load_results, refuse_unreadable
from framebench.store.schema import text_columns

DEFAULT_FILE = Path(__file__).resolve().parent / "thresholds.csv"


def runs_with_epochs(directory: str) -> pd.DataFrame:
    """The latest attempt of each job, with the configured epoch count (from config.json) as a column;
    a row that cannot be read refuses the whole directory (check and thresholds decide on every run)."""
    tables = load_results(directory)
    refuse_unreadable(tables["refused"])
    runs = latest_attempts(tables["runs"]).copy()
    epochs, by_value = tables["config"]["train"]["epochs"], swept_field(tables["config"]) == "epochs"
    runs["epochs"] = [int(v) if by_value else epochs for v in runs["sweep_value"]]
    return runs


def derive(directories: list[str], margin: float) -> pd.DataFrame:
    if not 0 <= margin < math.inf:
        raise FrameBenchError(f"--margin must be a finite number >= 0, got {margin}")
    runs = pd.concat([runs_with_epochs(d) for d in directories])
    if runs.empty:
        raise FrameBenchError(f"no runs in {', '.join(directories)}; thresholds come from measured runs")
    runs = runs[runs["status"] != "unsupported"]  # declined by its configuration alone: it has no accuracy to keep
    bad = runs[(runs["status"] != "ok") | runs["final_test_acc"].isna()]
    if not bad.empty:
        raise FrameBenchError(
            f"{len(bad)} run(s) did not finish ok with an accuracy (e.g. {bad.iloc[0]['backend']}: {bad.iloc[0]['status']}); "
            "thresholds come from complete runs only"
        )
    grouped = runs.groupby(accuracy_key_columns())["final_test_acc"]
    table = pd.DataFrame({"measured_min": grouped.min(), "measured_runs": grouped.size()}).reset_index()
    table["margin"] = margin
    table["min_test_acc"] = (table["measured_min"] - margin).round(4)
    return table[columns()]


def columns() -> list[str]:
    """A thresholds file's header."""
    return accuracy_key_columns() + ["min_test_acc", "measured_min", "measured_runs", "margin"]


def load_thresholds(path: Path) -> pd.DataFrame:
    """The thresholds file, every threshold a number in [0, 1] and every epochs a positive integer: an
    empty, NaN or non-numeric one is an error here, not a silent pass (or a traceback) later."""
    if not path.is_file():
        raise FrameBenchError(f"no thresholds file at {path}; make one with `framebench thresholds DIR --output {path}`")
    try:
        table = pd.read_csv(
            path,
            comment="#",
            dtype=dict.fromkeys(["preset", "dataset", *(c for c in accuracy_key_columns() if c in text_columns())], str),
            keep_default_na=False,
            na_values=["", "nan", "NaN"],
        )
    except (UnicodeDecodeError, ValueError, pd.errors.ParserError, OSError) as exc:
        raise FrameBenchError(f"{path} cannot be read as a thresholds file ({str(exc).splitlines()[0][:120]})") from None
    missing = set(columns()) - set(table.columns)
    if missing:
        raise FrameBenchError(f"{path} lacks columns {sorted(missing)}; regenerate it with `framebench thresholds`")
    threshold, epochs = (pd.to_numeric(table[c], errors="coerce") for c in ("min_test_acc", "epochs"))
    bad = table[~threshold.between(0, 1) | ~(epochs > 0) | (epochs % 1 != 0)]
    if not bad.empty:
        row = bad.iloc[0]
        raise FrameBenchError(
            f"{path}: the row for {row['backend']} ({row['preset']}, {row['dataset']}) has threshold {str(row['min_test_acc'])!r} and "
            f"epochs {str(row['epochs'])!r}: a threshold must be a number in [0, 1] and epochs a positive integer; regenerate it "
            "with `framebench thresholds`"
        )
    table["min_test_acc"], table["epochs"] = threshold, epochs.astype(int)
    text_keys = [c for c in accuracy_key_columns() if c in text_columns()]
    table[text_keys] = table[text_keys].fillna("")
    return table


def check(directory: str, thresholds_path: Path, *, allow_missing: bool) -> tuple[list[str], list[str]]:
    """(failures, notes): every run that missed, did not finish ok, or (unless allowed) has no threshold."""
    runs = runs_with_epochs(directory)
    if runs.empty:
        raise FrameBenchError(f"{directory} holds no runs; there is nothing to check")
    runs = runs.merge(load_thresholds(thresholds_path), on=accuracy_key_columns(), how="left")
    failures, notes = [], []
    for run in runs.itertuples():
        sweep = f", {run.sweep_field}={run.sweep_value}" if run.sweep_field else ""
        where = (
            f"{run.backend}/{run.variant} on {run.device} ({run.preset}, {run.dataset}, {run.precision}, {run.epochs} epochs{sweep}, "
            f"seed {run.seed}, repeat {run.repeat + 1})"
        )
        if run.status == "unsupported":  # the configuration alone declines it: nothing to verify, ever
            notes.append(f"{where}: unsupported ({run.error})")
        elif run.status != "ok":
            failures.append(f"{where}: run {run.status}" + (f" ({run.error})" if run.error else "") + "; its accuracy is not verified")
        elif pd.isna(run.final_test_acc):
            failures.append(f"{where}: ok but without a test accuracy")
        elif pd.isna(run.min_test_acc):
            (notes if allow_missing else failures).append(f"{where}: no threshold in {thresholds_path}")
        elif run.final_test_acc < run.min_test_acc:
            failures.append(f"{where}: test accuracy {run.final_test_acc:.4f} < threshold {run.min_test_acc:.4f}")
    return failures, notes


def run_check(directory: str, thresholds_path: Path, *, allow_missing: bool) -> int:
    failures, notes = check(directory, thresholds_path, allow_missing=allow_missing)
    for line in notes:
        print(f"note: {line}")
    for line in failures:
        print(f"FAIL: {line}")
    if failures:
        print(
            f"{len(failures)} run(s) failed the check"
            + (
                ""
                if allow_missing
                else " (pass --allow-missing to accept runs without a threshold)"
                if any("no threshold" in f for f in failures)
                else ""
            )
        )
        return 1
    print("all runs meet their thresholds")
    return 0


def measured_by(directories: list[str]) -> list[str]:
    """The command that measured each results directory, with its seeds."""
    return [f"{t['machine'].get('command', '?')}  (seeds {seeds_text(t['config']) or '?'})" for t in map(load_results, directories)]


def thresholds_text(table: pd.DataFrame, command: str, measured: list[str]) -> str:
    """The thresholds file: the table, headed by how it was made (this command and the commands that measured its runs)."""
    header = [
        f"# Minimum final test accuracy per ({', '.join(accuracy_key_columns())}): the lowest measured over measured_runs runs,",
        "# minus margin. Runs measured by:",
        *(f"#   {line}" for line in measured),
        f"# Derived by: {command}",
    ]
    return "\n".join(header) + "\n" + table.to_csv(index=False)


def run_derive(directories: list[str], *, margin: float, output: Path | None) -> int:
    """Print the thresholds file, or write it to `output` (never, unasked, into the installed package)."""
    import sys

    table = derive(directories, margin)
    text = thresholds_text(table, " ".join(["framebench", *sys.argv[1:]]), measured_by(directories))
    if output is None:
        print(text, end="")
        return 0
    try:
        output.write_text(text)
    except OSError as exc:
        raise FrameBenchError(f"cannot write --output {output} ({exc.strerror or exc})") from None
    print(format_table(table))
    print(output)
    return 0
