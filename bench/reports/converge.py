"""The commands `framebench rcp` and `framebench converge`, and the RCP file between them: `rcp`
derives reference convergence points from the reference backend's runs and writes them (framebench
ships DEFAULT_FILE), `converge` holds a results directory to them (or to another directory, key by
key) by MLPerf's rule (framebench.reports.convergence), prints its verdicts, writes them as Markdown
and JSON where asked and exits with their status.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd

from framebench.errors import FrameBenchError
from framebench.reports.convergence import (
    ALPHA,
    MIN_SEEDS,
    REFERENCE,
    Workload,
    decide,
    key_columns,
    seed_epochs,
    unreachable_line,
    workload_of,
)
from framebench.reports.markdown import escape_markdown, format_table, write_output
from framebench.reports.verdicts import FAIL, PASS, UNDECIDED, Report, Verdict, exit_status, publish_decided
from framebench.store.job import NOT_RUN
from framebench.store.metadata import seeds_text, swept_field
from framebench.store.reader import latest_attempts, load_results, refuse_unreadable

DEFAULT_FILE = Path(__file__).resolve().parent / "rcps.csv"
WORKLOAD = ["preset", "dataset", "target_acc", "eval_every", "training"]  # what an RCP is per
RCP_COLUMNS = [*WORKLOAD, "backend", "seed", "epochs_to_target", "steps_to_target"]


def finished_runs(tables: dict, where: str) -> pd.DataFrame:
    """A directory's latest attempts that were not declined; a sweep is refused (its values are other workloads)."""
    if swept_field(tables["config"]):
        raise FrameBenchError(f"{where} is a sweep; converge and rcp read a run of one configuration (no --sweep)")
    runs = latest_attempts(tables["runs"])
    return runs[~runs["status"].isin(NOT_RUN)]


# --- RCP files --------------------------------------------------------------------------------------


def derive_rcps(directories: list[str], backend: str) -> pd.DataFrame:
    """One row per (workload, seed) of the reference backend's runs (variant default, fp32): its epochs
    (and steps) to target, the median over repeats. Every run must have reached the target, and every
    workload hold at least 2 x MIN_SEEDS seeds."""
    rows = []
    for directory in directories:
        tables = load_results(directory)
        refuse_unreadable(tables["refused"])
        workload = workload_of(tables["config"])
        runs = finished_runs(tables, directory)
        runs = runs[(runs["backend"] == backend) & (runs["variant"] == REFERENCE[1]) & (runs["precision"] == REFERENCE[2])]
        if runs.empty:
            raise FrameBenchError(
                f"{directory} has no run of {backend}/{REFERENCE[1]} at {REFERENCE[2]}: an RCP comes from the reference backend"
            )
        epochs = seed_epochs(runs, directory)
        if np.isinf(epochs).any():
            missed = ", ".join(epochs.index[np.isinf(epochs)])
            raise FrameBenchError(
                f"{directory}: {backend} did not reach the target {workload.target_acc:g} at seed(s) {missed}; an RCP holds converged "
                "runs only: lower --target-acc or raise --epochs"
            )
        steps = pd.to_numeric(runs["steps_to_target"], errors="coerce").groupby(runs["seed"].astype(str)).median()
        rows += [
            {**vars(workload), "backend": backend, "seed": seed, "epochs_to_target": value, "steps_to_target": steps[seed]}
            for seed, value in epochs.items()
        ]
    table = pd.DataFrame(rows, columns=RCP_COLUMNS).drop_duplicates([*WORKLOAD, "seed"])
    for workload, group in table.groupby(WORKLOAD, sort=False):
        if len(group) < 2 * MIN_SEEDS:
            raise FrameBenchError(
                f"{Workload(*workload).describe()}: {len(group)} seeds; an RCP needs {2 * MIN_SEEDS} or more: run more --seeds"
            )
    return table


def rcp_text(table: pd.DataFrame, command: str, measured: list[str]) -> str:
    """The RCP file: its rows, headed by what an RCP is, the commands that measured the runs and the one that derived it."""
    header = [
        f"# Reference convergence points: epochs (and steps) to the target accuracy of {REFERENCE[0]}/{REFERENCE[1]} at {REFERENCE[2]},",
        f"# one row per seed, per workload ({', '.join(WORKLOAD)}); `framebench converge` holds a run to them by MLPerf's rule.",
        "# Runs measured by:",
        *(f"#   {line}" for line in measured),
        f"# Derived by: {command}",
    ]
    return "\n".join(header) + "\n" + table.to_csv(index=False)


def load_rcps(path: Path) -> pd.DataFrame:
    """An RCP file, each row's epochs a finite number > 0; anything else one line naming the fix."""
    fix = f"regenerate it with `framebench rcp DIR... --output {path}`"
    if not path.is_file():
        raise FrameBenchError(f"no RCP file at {path}; {fix}")
    try:
        table = pd.read_csv(path, comment="#", dtype={"preset": str, "dataset": str, "training": str, "backend": str, "seed": str})
    except (UnicodeDecodeError, ValueError, pd.errors.ParserError, OSError) as exc:
        raise FrameBenchError(f"{path} cannot be read as an RCP file ({str(exc).splitlines()[0][:120]}); {fix}") from None
    if missing := sorted(set(RCP_COLUMNS) - set(table.columns)):
        raise FrameBenchError(f"{path} lacks columns {missing}; {fix}")
    numbers = {name: pd.to_numeric(table[name], errors="coerce") for name in ("epochs_to_target", "target_acc", "eval_every")}
    bad = table[~(numbers["epochs_to_target"] > 0) | ~np.isfinite(numbers["epochs_to_target"]) | numbers["target_acc"].isna()]
    if not bad.empty or numbers["eval_every"].isna().any():
        raise FrameBenchError(f"{path}: a row has no finite epochs to target, target or evaluation interval; {fix}")
    return table.assign(**numbers)


def reference_epochs(rcps: pd.DataFrame, workload: Workload, source: str) -> np.ndarray:
    """The RCP of `workload` in a loaded RCP file; another workload's is refused as not comparable, naming what differs."""
    held = {Workload(*key) for key in rcps[WORKLOAD].itertuples(index=False, name=None)}
    match = next((w for w in held if not w.difference(workload)), None)
    if match is None:
        closest = "; ".join(f"{w.describe()} (differs: {w.difference(workload)})" for w in held) or "nothing"
        raise FrameBenchError(f"{source} holds no RCP comparable with {workload.describe()}: it holds {closest}")
    mine = rcps[[Workload(*key) == match for key in rcps[WORKLOAD].itertuples(index=False, name=None)]]
    return mine["epochs_to_target"].to_numpy(float)


# --- the commands -----------------------------------------------------------------------------------


def converge_table(directory: str, reference: Path | None, base: str | None) -> tuple[pd.DataFrame, list[str], Workload]:
    """One row per key of `directory`: its seeds' figures and verdict; with the lines to print before it."""
    tables = load_results(directory)
    refuse_unreadable(tables["refused"])
    workload = workload_of(tables["config"])
    runs = finished_runs(tables, directory)
    if runs.empty:
        raise FrameBenchError(f"{directory} holds no run that trained; there is nothing to check")
    lines = [f"{directory}: {workload.describe()}, seeds {seeds_text(tables['config']) or '-'}"]
    if base is not None:
        base_tables = load_results(base)
        refuse_unreadable(base_tables["refused"])
        if difference := workload_of(base_tables["config"]).difference(workload):
            raise FrameBenchError(f"--base {base} is not comparable with {directory}: {difference}")
        base_runs, fixed = finished_runs(base_tables, base), None
        lines.append(f"reference: {base}, key by key (seeds {seeds_text(base_tables['config']) or '-'})")
    else:
        source = reference or DEFAULT_FILE
        fixed, base_runs = reference_epochs(load_rcps(source), workload, str(source)), None
        lines.append(f"reference: {source}, {len(fixed)} seeds of {'/'.join(REFERENCE)}")
    if line := unreachable_line(runs, workload, tables["config"]["train"]["epochs"]):
        lines.append(line)
    rows = []
    for key, group in runs.groupby(key_columns(), sort=False):
        named = dict(zip(key_columns(), key, strict=True))
        where = f"{directory}: {named['backend']}/{named['variant']}"
        ref, note = fixed, ""
        if base_runs is not None:
            ref, note = base_reference(base_runs, named, base)
        verdict, figures = decide(seed_epochs(group, where), ref, note)
        rows.append({**named, **figures, "verdict": verdict})
    return pd.DataFrame(rows), lines, workload


def base_reference(base_runs: pd.DataFrame, key: dict, base: str) -> tuple[np.ndarray | None, str]:
    """BASE's epochs for the same key as the reference, or None with why (absent, or not every seed converged)."""
    mine = base_runs[(base_runs[list(key)] == list(key.values())).all(axis=1)]
    if mine.empty:
        return None, f"{base} did not run this key"
    epochs = seed_epochs(mine, base)
    if np.isinf(epochs).any():
        return None, f"{base} did not converge in {int(np.isinf(epochs).sum())} of {len(epochs)} seeds: no reference"
    return epochs.to_numpy(float), ""


def conclusion(verdicts: list[Verdict]) -> tuple[int, str]:
    kinds = [v.kind for v in verdicts]
    status = exit_status(kinds)
    failed = sum(kind.exit_status == FAIL for kind in kinds)
    if status == FAIL:
        return FAIL, f"{failed} key(s) do not converge as the reference"
    if status == UNDECIDED or not any(kind.verified for kind in kinds):
        return UNDECIDED, "not every key was verified (inconclusive, or nothing ran): refused"
    return PASS, "every key converges as the reference"


def run_converge(directory: str, *, reference: Path | None, base: str | None, markdown: str | None, json_file: str | None) -> int:
    """Print the verdict of every key of `directory` (and write it as Markdown and JSON where asked); the exit status of the verdicts."""
    if reference is not None and base is not None:
        raise FrameBenchError("converge takes --reference FILE or --base DIR, not both")
    table, lines, workload = converge_table(directory, reference, base)
    status, concluded = conclusion(list(table["verdict"]))
    shown = table.assign(verdict=table["verdict"].map(str))
    rule = (
        f"MLPerf's RCP rule: trimmed mean epochs to target (fastest and slowest seed dropped) within [reference mean / max speed-up, "
        f"its mirror], the bounds from a one-sided two-sample t-test at alpha {ALPHA:g}; at least {MIN_SEEDS} seeds, a reference of 2N"
    )
    document = {"directory": directory, "workload": vars(workload), "rule": rule}
    report = Report("framebench converge", escape_markdown(rule), lines, concluded, status, document, markdown, json_file)
    publish_decided(table, shown, report)
    return status


def run_rcp(directories: list[str], *, backend: str, output: Path | None) -> int:
    """Print the RCP file, or write it to `output` (never, unasked, into the installed package)."""
    table = derive_rcps(directories, backend)
    measured = [f"{t['machine'].get('command', '?')}  (seeds {seeds_text(t['config']) or '?'})" for t in map(load_results, directories)]
    text = rcp_text(table, " ".join(["framebench", *sys.argv[1:]]), measured)
    if output is None:
        print(text, end="")
        return 0
    write_output(str(output), "--output", text)
    summary = table.groupby(["preset", "dataset", "target_acc", "eval_every"])["epochs_to_target"].agg(["size", "mean", "std"])
    print(format_table(summary.reset_index()))
    print(output)
    return 0
