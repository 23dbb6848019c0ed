"""The summary table: one row per point of the matrix (backend, variant, device, ...[, sweep value]), aggregated over repeats and seeds.

Only each job's latest attempt counts (a retry or a resume supersedes it), and only `ok` runs give
times and accuracies; every other outcome is shown with its count and reason, never as a figure.
"""

from __future__ import annotations

import pandas as pd

from framebench.store import job
from framebench.store.job import NOT_RUN, summary_names
from framebench.store.reader import latest_attempts, medians_over_repeats, ok_results

BUSY_FRACTION = 0.15  # other processes used more than this share of the CPUs during a job: its time is suspect
CALIBRATION_DRIFT = (
    0.2  # a job's calibrations differ by more than this ratio (before vs after, or vs the run's usual): the machine changed speed
)
MEDIANS = {  # summary column -> runs.csv column whose median over ok repeats it shows, beside the store's medians_over_repeats
    "first_epoch_s": "first_epoch_s",
    "setup_s": "setup_s",
    "samples_per_s": "samples_per_s",
    "test_loss": "final_test_loss",
    "time_to_target_s": "time_to_target_s",
    "floor_epoch_s": "floor_epoch_s",
    "efficiency": "efficiency",
    "own_floor_epoch_s": "own_floor_epoch_s",
    "overhead_efficiency": "overhead_efficiency",
}
OVER_REPEATS = {
    "repeats": "runs_ok",
    "epoch_s": "median_epoch_s",
    "epoch_s_min": "min_epoch_s",
    "epoch_s_max": "max_epoch_s",
    "acc": "test_acc",
}
SUMMARY_COLUMNS = [
    "runs_ok",
    "median_epoch_s",
    "min_epoch_s",
    "max_epoch_s",
    "first_epoch_s",
    "setup_s",
    "samples_per_s",
    "test_acc",
    "test_loss",
    "time_to_target_s",
    "floor_epoch_s",
    "efficiency",
    "own_floor_epoch_s",
    "overhead_efficiency",
    "peak_rss_mb",
    "not_ok",
    "reason",
]


def group_columns(runs: pd.DataFrame) -> list[str]:
    """Rows are per point of the matrix (backend, variant, device, ...; seeds pooled), and per sweep value when the runs sweep a field."""
    return summary_names() + (["sweep_field", "sweep_value"] if runs["sweep_field"].astype(bool).any() else [])


def point_label(row, pooled: bool = False) -> str:
    """E.g. "numpy/default on cpu, env=old": the row's point, dimensions at their default left out (as a
    job's label); `pooled` leaves out the replicates (the seed) too, for a row that stands for all of them."""
    extra = "".join(
        f", {d.name}={getattr(row, d.name)}"
        for d in job.DIMENSIONS
        if d.name not in job.LABEL_NAMED and not (pooled and d.replicate) and getattr(row, d.name, d.default) not in (d.default, "")
    )
    return f"{row.backend}/{row.variant} on {row.device}{extra}"


def not_run(runs: pd.DataFrame) -> list[str]:
    """One line per (backend, variant, device) that did not run here, with the reason."""
    skipped = latest_attempts(runs)
    skipped = skipped[skipped["status"].isin(NOT_RUN)].drop_duplicates(summary_names() + ["status", "error"])
    return [f"{point_label(r, pooled=True)}: {r.status}: {r.error}" for r in skipped.itertuples()]


def busy_warnings(runs: pd.DataFrame) -> list[str]:
    """One line per job during which other processes used more than BUSY_FRACTION of the CPUs."""
    busy = latest_attempts(runs)
    busy = busy[busy["other_cpu_frac"] > BUSY_FRACTION]
    return [
        f"{point_label(r)}, repeat {r.repeat + 1} ({r.node}): machine busy, other processes used "
        f"{r.other_cpu_frac:.0%} of the CPUs; its times are suspect"
        for r in busy.itertuples()
    ]


def calibration_drifted(before: float | None, after: float | None) -> bool:
    """Whether a job's calibrations before and after it disagree beyond CALIBRATION_DRIFT."""
    return before is not None and after is not None and max(before, after) > (1 + CALIBRATION_DRIFT) * min(before, after)


def calibration_warnings(runs: pd.DataFrame) -> list[str]:
    """One line per job during which the machine itself changed speed (its calibrations before and
    after disagree) or that ran at a speed unlike the run's usual (its calibration off the run's median)."""
    jobs = latest_attempts(runs)
    own = jobs[["calib_before_s", "calib_after_s"]].mean(axis=1)
    usual = own.median()
    lines = []
    for row, calibration in zip(jobs.itertuples(), own, strict=True):
        where = f"{point_label(row)}, repeat {row.repeat + 1} ({row.node})"
        if calibration_drifted(row.calib_before_s, row.calib_after_s):
            lines.append(
                f"{where}: the machine changed speed during it (calibration {row.calib_before_s:.3g} s before, "
                f"{row.calib_after_s:.3g} s after); its times are suspect"
            )
        elif max(calibration, usual) > (1 + CALIBRATION_DRIFT) * min(calibration, usual):
            lines.append(f"{where}: the machine ran ×{calibration / usual:.2f} the run's usual calibration time; its times are suspect")
    return lines


def summary(runs: pd.DataFrame) -> pd.DataFrame:
    """Median and spread (min-max) over repeats of the steady-state epoch time, plus the first
    epoch (tracing/compilation) reported apart, throughput and final test accuracy; the same
    columns whatever happened, so a run in which nothing trained still has a (short) table."""
    runs = latest_attempts(runs)
    runs = runs[~runs["status"].isin(NOT_RUN)]
    keys = group_columns(runs)
    if runs.empty:
        return pd.DataFrame(columns=keys + SUMMARY_COLUMNS)
    results = ok_results(runs)
    table = medians_over_repeats(results, keys).set_index(keys)[list(OVER_REPEATS)].rename(columns=OVER_REPEATS)
    ok = results.groupby(keys, sort=False)
    for column, source in MEDIANS.items():
        table[column] = ok[source].median()
    table["peak_rss_mb"] = ok["peak_rss_mb"].max()
    problems = (
        runs[runs["status"] != "ok"]
        .groupby(keys, sort=False)
        .agg(
            not_ok=("status", lambda s: ", ".join(f"{v} x{n}" for v, n in s.value_counts().items())),
            reason=("error", "first"),
        )
    )
    order = runs.drop_duplicates(keys).set_index(keys).index
    table = table.join(problems, how="outer").reindex(order)
    table["runs_ok"] = table["runs_ok"].fillna(0).astype(int)
    return table.reset_index()[keys + SUMMARY_COLUMNS]


def precision_series(table: pd.DataFrame, swept: str) -> pd.DataFrame:
    """Figures and sweep tables draw one series per (backend, variant, device). Where a table holds
    several precisions and the sweep does not vary precision itself, each precision is a series of
    its own: its name joins the device's ("cpu bf16")."""
    if table.empty or swept == "precision" or table["precision"].nunique() < 2:
        return table
    return table.assign(device=table["device"] + " " + table["precision"])


def perf_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Backend, variant, preset, steady-state epoch, both floors and efficiencies, and the speed-up
    over the same backend's `tutorial` variant on the same preset."""
    runs = latest_attempts(runs)
    ok = runs[runs["status"] == "ok"].groupby(["preset", "backend", "variant", "device"], sort=False)
    table = pd.DataFrame(
        {
            "median_epoch_s": ok["median_epoch_s"].median(),
            "spread_s": ok["median_epoch_s"].max() - ok["median_epoch_s"].min(),
            "floor_epoch_s": ok["floor_epoch_s"].median(),
            "own_floor_epoch_s": ok["own_floor_epoch_s"].median(),
            "efficiency": ok["efficiency"].median(),
            "overhead_efficiency": ok["overhead_efficiency"].median(),
            "first_epoch_s": ok["first_epoch_s"].median(),
        }
    ).reset_index()
    tutorial = table[table["variant"] == "tutorial"].set_index(["preset", "backend", "device"])["median_epoch_s"]
    keys = list(zip(table["preset"], table["backend"], table["device"], strict=True))
    table["speedup_vs_tutorial"] = [tutorial.get(k, float("nan")) for k in keys] / table["median_epoch_s"]
    return table


def machine_load(runs: pd.DataFrame) -> str:
    """How busy the machine was while the study ran, from the runs' own records."""
    return (
        f"load average at job start {runs['loadavg_1m'].min():.1f}-{runs['loadavg_1m'].max():.1f}; other processes used "
        f"{runs['other_cpu_frac'].median():.0%} of the CPUs (median over jobs, {runs['other_cpu_frac'].max():.0%} at most)"
    )
