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

Here is the rule (the bounds, the verdict on one key's seeds) and report.md's convergence section; the
commands that apply it and the RCP file they share are framebench.reports.converge.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.optimize import bisect
from scipy.stats import ttest_ind_from_stats

from framebench.errors import FrameBenchError
from framebench.reports import profiles
from framebench.reports.markdown import escape_markdown, to_markdown
from framebench.reports.verdicts import Kind, Verdict
from framebench.store.job import NOT_RUN, OK, summary_names
from framebench.store.metadata import swept_field
from framebench.store.reader import latest_attempts

ALPHA = 0.05  # the t-test's level, as MLPerf's
SEARCH_TOLERANCE = 1e-4  # epochs: where the binary search for a bound stops, as MLPerf's
MIN_SEEDS = 5  # the fewest runs MLPerf asks of any benchmark; a reference needs twice a submission's seeds
T_QUANTILE_BOUND = 6.32  # Student's t 95% quantile is below this for any degrees of freedom (6.314 at 1): brackets the upper search
REFERENCE = ("numpy", "default", "fp32")  # the backend, variant and precision RCPs are measured with


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


def unreachable_line(runs: pd.DataFrame, workload: Workload, epochs: int) -> str | None:
    """The one line saying no run reached the target at all (the target, not a backend, is the problem), or None."""
    if runs.empty or pd.to_numeric(runs["epochs_to_target"], errors="coerce").notna().any():
        return None
    best = pd.to_numeric(runs["final_test_acc"], errors="coerce").max()
    return (
        f"no run reached the target {workload.target_acc:g} at any seed (the best final test accuracy was {best:.4f}): it is above "
        f"what {workload.preset} on {workload.dataset} reaches in {epochs} epochs; lower --target-acc or raise --epochs"
    )


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
