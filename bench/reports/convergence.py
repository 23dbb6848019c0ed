"""Convergence as a verdict: `framebench rcp` derives reference convergence points (RCPs), `framebench
converge` holds a results directory to them, MLPerf Training's way.

What was read for this module: mlcommons/training_policies `training_rules.adoc` ("Benchmark Results":
a result is the mean of N runs after dropping the fastest and the slowest, a single non-converging run
may be dropped as the slowest, more than one invalidates it; "Reference Convergence Points (RCPs)": at
least 2N reference runs, a one-sided two-sample Student's t-test with similar variances at p = 0.05
gives the maximum acceptable speed-up; "Appendix: RCP Examples", the worked example a test reproduces)
and mlcommons/logging `mlperf_logging/rcp_checker/rcp_checker.py` (`compute_rcp_stats`: the reference
epochs sorted, one dropped at each end, their mean and np.std; `_find_min_acceptable_mean`: a binary
search between 0 and the reference mean, to a tolerance of 1e-4 epochs, for the lowest mean that the
t-test (scipy.stats.ttest_ind_from_stats, equal_var=True, made one-sided) at α = 0.05 cannot call
faster, the submission counted as N − 2 runs; `_eval_submission_record`: pass if the submission's
trimmed mean ≥ RCP mean / max speed-up, and one faster than the RCP mean but within that bound has its
score normalised by RCP mean / its mean; a run that did not converge counts as infinitely slow).

Here: a run's convergence is its epochs to the target accuracy (fractional: steps / steps per epoch,
at the resolution of --eval-every), which depends on the seed and on the arithmetic, never on the
machine's speed, so references can be measured on any machine, busy or not. An RCP is per workload:
(preset, dataset, target accuracy, evaluation interval, the training configuration but its epoch
count), from the reference backend, numpy/default at fp32, at >= 2 x MIN_SEEDS seeds, every one of
which reached the target: MLPerf's RCPs come from the reference implementation in FP32, and every
backend here is proven equal to the float64 oracle step by step, so a backend (or a precision) whose
convergence departs from the reference's beyond the seed-to-seed spread is what the check exists to
find. `--base DIR` takes the reference from another directory instead, key by key (the same backend).

Per key (the matrix's point, seeds pooled) of N seeds, MLPerf's rule: fewer than MIN_SEEDS seeds, or
a reference of fewer than 2N, is `inconclusive`; more than one seed that did not converge (not ok, or
ok without reaching the target) is `did not converge in k of N seeds`; otherwise the trimmed mean is
held to [RCP mean / max speed-up, RCP mean x max slow-down]: below, `faster than the reference allows`
(usually a bug, e.g. test data leaking into training); above, `SLOWER TO CONVERGE`. The upper bound
is not MLPerf's (a slower submission only hurts its submitter there); it is the mirror image, the
same t-test one-sided the other way, found by the same search.
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.optimize import bisect
from scipy.stats import ttest_ind_from_stats

from framebench.errors import FrameBenchError
from framebench.reports import profiles
from framebench.reports.markdown import escape_markdown, format_table, to_markdown
from framebench.reports.verdicts import FAIL, PASS, UNDECIDED, Kind, Verdict, exit_status
from framebench.store.job import NOT_RUN, OK, summary_names
from framebench.store.reader import latest_attempts, load_results, refuse_unreadable, seeds_text, swept_field

ALPHA = 0.05  # the t-test's level, as MLPerf's
SEARCH_TOLERANCE = 1e-4  # epochs: where the binary search for a bound stops, as MLPerf's
MIN_SEEDS = 5  # the fewest runs MLPerf asks of any benchmark; a reference needs twice a submission's seeds
T_QUANTILE_BOUND = 6.32  # Student's t 95% quantile is below this for any degrees of freedom (6.314 at 1): brackets the upper search
REFERENCE = ("numpy", "default", "fp32")  # the backend, variant and precision RCPs are measured with
DEFAULT_FILE = Path(__file__).resolve().parent / "rcps.csv"
WORKLOAD = ["preset", "dataset", "target_acc", "eval_every", "training"]  # what an RCP is per
RCP_COLUMNS = [*WORKLOAD, "backend", "seed", "epochs_to_target", "steps_to_target"]
NOT_FINISHED = "did not finish ok"


@dataclass(frozen=True)
class Workload:
    """What makes two directories' epochs to target comparable."""

    preset: str  # the preset the configuration started from
    dataset: str  # what it trained on
    target_acc: float  # the test accuracy whose first crossing counts
    eval_every: int  # steps between evaluations (0: each epoch's end): the resolution of epochs to target
    training: str  # the model and train sections but the epoch count, as canonical JSON

    def describe(self) -> str:
        every = f"every {self.eval_every} steps" if self.eval_every else "at each epoch's end"
        return f"{self.preset} on {self.dataset}, target {self.target_acc:g}, evaluated {every}"

    def difference(self, other: Workload) -> str:
        """How `other` differs from this one, in words ("" when it does not)."""
        named = [
            f"{name} {getattr(other, name)!r} instead of {getattr(self, name)!r}"
            for name in ("preset", "dataset", "target_acc", "eval_every")
            if getattr(self, name) != getattr(other, name)
        ]
        if not named and self.training != other.training:
            mine, theirs = json.loads(self.training), json.loads(other.training)
            fields = [f"{section}.{k}" for section in mine for k in mine[section] if mine[section][k] != theirs.get(section, {}).get(k)]
            named.append(f"the training configuration ({', '.join(fields) or 'its fields'})")
        return "; ".join(named)


def workload_of(config: dict) -> Workload:
    """A results directory's workload, from its config.json (the epoch count left out: it bounds a
    run, it does not change when the run converges)."""
    train = {k: v for k, v in config["train"].items() if k != "epochs"}
    training = json.dumps({"model": config["model"], "train": train}, sort_keys=True, separators=(",", ":"))
    return Workload(config["preset"], config["dataset"], float(config["target_acc"]), int(train.get("eval_every", 0)), training)


@dataclass(frozen=True)
class Bounds:
    """What the reference allows a submission of `runs` seeds: MLPerf's minimum mean, and its mirror."""

    mean: float  # the reference's trimmed mean epochs to target
    sd: float  # their standard deviation (np.std, as MLPerf's)
    seeds: int  # reference runs
    low: float  # the lowest trimmed mean the one-sided t-test cannot call faster
    high: float  # the highest it cannot call slower

    @property
    def max_speedup(self) -> float:
        return self.mean / self.low if self.low > 0 else math.inf


def trimmed(values: np.ndarray) -> np.ndarray:
    """The values sorted, the fastest and the slowest dropped (MLPerf's "olympic" scoring)."""
    return np.sort(np.asarray(values, dtype=float))[1:-1]


def bounds(reference: np.ndarray, runs: int) -> Bounds:
    """The bounds a submission of `runs` runs is held to, by MLPerf's binary search on scipy's t-test
    (its trimmed runs, runs − 2, against the reference's trimmed ones, with the reference's SD)."""
    kept = trimmed(reference)
    mean, sd = float(np.mean(kept)), float(np.std(kept))
    if sd == 0:  # every reference run converged at the same evaluation: nothing else is like it (MLPerf's rule too)
        return Bounds(mean, sd, len(reference), mean, mean)

    def p_value(candidate: float, side: str) -> float:
        return float(ttest_ind_from_stats(candidate, sd, len(kept), mean, sd, runs - 2, equal_var=True, alternative=side).pvalue)

    faster = lambda m: p_value(m, "less") - ALPHA  # noqa: E731  (rises from < 0 at 0 to 0.45 at the mean)
    slower = lambda m: ALPHA - p_value(m, "greater")  # noqa: E731
    low = bisect(faster, 0.0, mean, xtol=SEARCH_TOLERANCE) if faster(0.0) < 0 else 0.0
    reach = T_QUANTILE_BOUND * sd * math.sqrt(1 / len(kept) + 1 / (runs - 2))
    high = bisect(slower, mean, mean + reach, xtol=SEARCH_TOLERANCE)
    return Bounds(mean, sd, len(reference), low, high)


def seed_epochs(rows: pd.DataFrame, where: str) -> pd.Series:
    """{seed: epochs to target} of one key's runs (latest attempts, none declined): the median over a
    seed's repeats, ∞ for a run that did not reach the target (ok without it, or not ok). An ok run
    without an accuracy is no framebench result: refused."""
    broken = rows[(rows["status"] == OK) & rows["final_test_acc"].isna()]
    if not broken.empty:
        raise FrameBenchError(
            f"{where}: seed {broken['seed'].iloc[0]} ran ok but its test accuracy is NaN; it is no framebench result: rerun it"
        )
    epochs = pd.to_numeric(rows["epochs_to_target"], errors="coerce")
    reached = np.where((rows["status"] == OK) & epochs.notna(), epochs, math.inf)
    return pd.Series(reached, index=rows["seed"].astype(str)).groupby(level=0, sort=False).median()


def decide(submission: pd.Series, reference: np.ndarray | None, reference_note: str = "") -> tuple[Verdict, dict]:
    """The verdict on one key's seeds ({seed: epochs, ∞ = did not converge}) against the reference's
    epochs (None: there is none, `reference_note` says why), with its figures."""
    seeds, missed = len(submission), int(np.isinf(submission).sum())
    figures = {"seeds": seeds, "converged": seeds - missed, "epochs": math.nan, "low": math.nan, "high": math.nan, "reference": ""}
    if seeds < MIN_SEEDS:
        return Verdict(Kind.INCONCLUSIVE, f"{seeds} seeds", f"the rule needs at least {MIN_SEEDS}"), figures
    if missed > 1:
        return Verdict(Kind.DID_NOT_CONVERGE, f"in {missed} of {seeds} seeds"), figures
    if reference is None:
        return Verdict(Kind.INCONCLUSIVE, f"{seeds} seeds", reference_note), figures
    if len(reference) < 2 * seeds:
        return Verdict(Kind.INCONCLUSIVE, f"{seeds} seeds", f"the reference holds {len(reference)}; the rule needs 2 x {seeds}"), figures
    limits = bounds(reference, seeds)
    mean = float(np.mean(trimmed(submission.to_numpy())))  # a single miss (∞) is dropped as the slowest
    figures |= {"epochs": mean, "low": limits.low, "high": limits.high}
    figures["reference"] = f"{limits.mean:.4g} ± {limits.sd:.2g} ({limits.seeds} seeds)"
    notes = [f"1 of {seeds} seeds did not converge, dropped as the slowest"] if missed else []
    if mean < limits.low:
        reason = f"{mean:.4g} epochs < {limits.low:.4g} (the reference's {limits.mean:.4g} / max speed-up {limits.max_speedup:.4f})"
        return Verdict(Kind.TOO_FAST, reason, "; ".join(notes)), figures
    if mean > limits.high:
        reason = f"{mean:.4g} epochs > {limits.high:.4g} (the reference's {limits.mean:.4g} x {limits.high / limits.mean:.4f})"
        return Verdict(Kind.SLOWER_TO_CONVERGE, reason, "; ".join(notes)), figures
    if mean < limits.mean:
        notes.append(f"faster than the reference's mean within its bound: normalised x{limits.mean / mean:.4f}")
    return Verdict(Kind.CONVERGES, note="; ".join(notes)), figures


def key_columns() -> list[str]:
    """What one verdict is per: the matrix's point, seeds pooled."""
    return [*summary_names(), "sweep_value"]


def finished_runs(tables: dict, where: str) -> pd.DataFrame:
    """A directory's latest attempts that were not declined; a sweep is refused (its values are other workloads)."""
    if swept_field(tables["config"]):
        raise FrameBenchError(f"{where} is a sweep; converge and rcp read a run of one configuration (no --sweep)")
    runs = latest_attempts(tables["runs"])
    return runs[~runs["status"].isin(NOT_RUN)]


def unreachable_line(runs: pd.DataFrame, workload: Workload, epochs: int) -> str | None:
    """The one line saying no run reached the target at all (the target, not a backend, is the problem), or None."""
    if runs.empty or pd.to_numeric(runs["epochs_to_target"], errors="coerce").notna().any():
        return None
    best = pd.to_numeric(runs["final_test_acc"], errors="coerce").max()
    return (
        f"no run reached the target {workload.target_acc:g} at any seed (the best final test accuracy was {best:.4f}): it is above "
        f"what {workload.preset} on {workload.dataset} reaches in {epochs} epochs; lower --target-acc or raise --epochs"
    )


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
    for line in lines:
        print(line)
    print(format_table(shown))
    print(concluded)
    rule = (
        f"MLPerf's RCP rule: trimmed mean epochs to target (fastest and slowest seed dropped) within [reference mean / max speed-up, "
        f"its mirror], the bounds from a one-sided two-sample t-test at alpha {ALPHA:g}; at least {MIN_SEEDS} seeds, a reference of 2N"
    )
    if markdown:
        header = ["## framebench converge", "", escape_markdown(rule), "", *[f"- {escape_markdown(line)}" for line in lines], ""]
        write_output(markdown, "--markdown", "\n".join(header) + to_markdown(shown) + f"\n{escape_markdown(concluded)}\n")
    if json_file:
        keys = json.loads(shown.to_json(orient="records"))
        for key, verdict in zip(keys, table["verdict"], strict=True):
            key["decision"] = verdict.to_json()
        document = {"directory": directory, "workload": vars(workload), "rule": rule, "notes": lines, "exit_status": status}
        write_output(json_file, "--json", json.dumps({**document, "conclusion": concluded, "keys": keys}, indent=2) + "\n")
    return status


def write_output(path: str, flag: str, text: str) -> None:
    try:
        Path(path).write_text(text)
    except OSError as exc:
        raise FrameBenchError(f"cannot write {flag} {path} ({exc.strerror or exc})") from None


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


# --- report.md -------------------------------------------------------------------------------------


def report_section(directory: Path, tables: dict) -> list[str]:
    """A results directory's convergence: per key, how many seeds reached the target and when (median
    steps, epochs and training seconds); the unreachable target said once; with two backends or more,
    their performance profile over the directory's workload (profile.png). Empty without evaluations."""
    runs = latest_attempts(tables["runs"])
    runs = runs[~runs["status"].isin(NOT_RUN)]
    if tables["evals"].empty or runs.empty or swept_field(tables["config"]):
        return []
    workload = workload_of(tables["config"])
    numbers = runs.assign(
        **{c: pd.to_numeric(runs[c], errors="coerce") for c in ("steps_to_target", "epochs_to_target", "time_to_target_s")}
    )
    numbers["reached"] = numbers["seed"].where((numbers["status"] == OK) & numbers["epochs_to_target"].notna())
    grouped = numbers.groupby(key_columns(), sort=False)
    table = pd.DataFrame(
        {
            "seeds": grouped["seed"].nunique(),
            "converged": grouped["reached"].nunique(),
            "median_steps": grouped["steps_to_target"].median(),
            "median_epochs": grouped["epochs_to_target"].median(),
            "median_seconds": grouped["time_to_target_s"].median(),
        }
    ).reset_index()
    line = unreachable_line(runs, workload, tables["config"]["train"]["epochs"])
    times = profiles.times_to_target(runs, "seconds", precision_workloads=False)
    profile = []
    if len(times) > 1:
        ratios = profiles.performance_ratios(times)
        profiles.profile_figure(ratios, directory / "profile.png", f"Performance profiles, {workload.preset} on {workload.dataset}")
        profile = profiles.report_lines(times, ratios, "seconds", "profile.png")
    return [
        "## Convergence",
        "",
        f"{escape_markdown(workload.describe())}: per key, the seeds that reached the target and the median over them of the steps, "
        "epochs and training seconds (evaluation excluded) it took; `framebench converge` holds them to the reference's.",
        "",
        to_markdown(table.drop(columns=["sweep_value"]) if not table["sweep_value"].astype(bool).any() else table),
        *([f"- {escape_markdown(line)}"] if line else []),
        "",
        *profile,
    ]
