"""Performance profiles over workloads, as AlgoPerf scores training algorithms (`framebench profile`).

AlgoPerf (mlcommons/algorithmic-efficiency, DOCUMENTATION.md "Benchmark score using performance
profiles", and scoring/performance_profile.py, read for this module): a submission's time on a
workload is its time to the target (a run that misses it takes forever, ∞; over several studies,
the median); its performance ratio on the workload is that time over the fastest submission's; a
ratio above r_max = 4 gets no credit and is set to ∞; the performance profile ρ(τ) is the share of
workloads whose ratio is at most τ, and the benchmark score is the area under ρ from 1 to r_max,
normalised by r_max − 1, in [0, 1]. AlgoPerf's code integrates ρ with the trapezoidal rule on a grid
of τ; ρ is a step function, so its area here is exact: each workload with a finite ratio r adds
(r_max − r) / (r_max − 1) / n.

Here a submission is a backend/variant on a device (and environment; and precision, unless precisions
are asked to be workloads), a workload a (preset, dataset) a results directory trained to its target
(× precision when asked), a study a seed: a submission's time on a workload is the median over its
runs (seeds and repeats) of the time to target, ∞ for a run that did not converge or did not finish.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from framebench.errors import FrameBenchError
from framebench.reports.markdown import escape_markdown, format_table, to_markdown, write_markdown
from framebench.store.job import NOT_RUN, OK
from framebench.store.reader import latest_attempts, load_results

R_MAX = 4.0  # AlgoPerf's upper limit of τ: a ratio above it gets no credit
MEASURES = {"seconds": "time_to_target_s", "steps": "steps_to_target", "epochs": "epochs_to_target"}  # --by -> runs.csv column
SUBMISSION = ["backend", "variant", "device", "env"]  # what a profile's line is per (precision too, unless it makes workloads)
TAUS = 301  # points of τ in [1, R_MAX] on the figure (ρ is a step function; the score is computed exactly)


def submission_columns(precision_workloads: bool) -> list[str]:
    return SUBMISSION if precision_workloads else [*SUBMISSION, "precision"]


def workload_columns(precision_workloads: bool) -> list[str]:
    return ["preset", "dataset", "precision"] if precision_workloads else ["preset", "dataset"]


def label(values: tuple, columns: list[str]) -> str:
    """backend/variant device[ env][ precision], the parts at their usual value left out."""
    named = dict(zip(columns, values, strict=True))
    extra = [str(named[c]) for c in columns[3:] if named[c] not in ("", "current", "fp32")]
    return " ".join([f"{named['backend']}/{named['variant']}", str(named["device"]), *extra])


def times_to_target(runs: pd.DataFrame, measure: str, precision_workloads: bool) -> pd.DataFrame:
    """Submissions × workloads: the median over a submission's runs of its time to target, ∞ for a run
    that did not reach it (ok without a time, or not ok), ∞ for a workload it never ran; runs declined
    (unavailable, unsupported) do not count. Labels are the index and the columns."""
    column = MEASURES[measure]
    runs = latest_attempts(runs)
    runs = runs[~runs["status"].isin(NOT_RUN)].copy()
    if runs.empty:
        raise FrameBenchError("no run finished or failed in the directories given: there is no time to target to profile")
    reached = pd.to_numeric(runs[column], errors="coerce")
    runs["time"] = np.where((runs["status"] == OK) & reached.notna(), reached, math.inf)
    submissions, workloads = submission_columns(precision_workloads), workload_columns(precision_workloads)
    runs["submission"] = [label(key, submissions) for key in runs[submissions].itertuples(index=False, name=None)]
    runs["workload"] = [" ".join(map(str, key)) for key in runs[workloads].itertuples(index=False, name=None)]
    table = runs.groupby(["submission", "workload"], sort=False)["time"].median().unstack("workload")
    return table.fillna(math.inf)


def performance_ratios(times: pd.DataFrame) -> pd.DataFrame:
    """Each time over the fastest on its workload, ∞ above R_MAX (and on a workload nobody reached)."""
    ratios = times / times.min(axis=0)
    return ratios.where(ratios <= R_MAX, math.inf).fillna(math.inf)


def rho(ratios: pd.DataFrame, taus: np.ndarray) -> pd.DataFrame:
    """ρ(τ) per submission (rows) at each τ (columns): the share of workloads with ratio ≤ τ."""
    shares = (ratios.to_numpy()[:, :, None] <= np.asarray(taus)[None, None, :]).mean(axis=1)  # submissions x taus, at once
    return pd.DataFrame(shares, index=ratios.index, columns=taus)


def scores(ratios: pd.DataFrame) -> pd.Series:
    """The normalised area under ρ from 1 to R_MAX, exactly: the mean over workloads of (R_MAX − r) / (R_MAX − 1), 0 for r = ∞."""
    credit = ((R_MAX - ratios) / (R_MAX - 1)).clip(lower=0).fillna(0)
    return credit.mean(axis=1).rename("score")


def profile_figure(ratios: pd.DataFrame, path: Path, title: str) -> None:
    """ρ(τ) of every submission on [1, R_MAX], its score in the legend."""
    from framebench.reports.plots import plt, save_figure

    taus = np.linspace(1.0, R_MAX, TAUS)
    curves, score = rho(ratios, taus), scores(ratios)
    fig, axes = plt.subplots(figsize=(9, 4.8))
    for submission in score.sort_values(ascending=False).index:
        axes.step(taus, curves.loc[submission], where="post", label=f"{submission} (score {score[submission]:.3f})")
    axes.set(
        title=title,
        xlabel=f"τ: time to target over the fastest's (ratios above {R_MAX:g} get no credit)",
        ylabel="ρ(τ): share of workloads within τ",
        xlim=(1, R_MAX),
        ylim=(-0.02, 1.02),
    )
    axes.grid(alpha=0.3)
    axes.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)


def profile_table(times: pd.DataFrame, ratios: pd.DataFrame) -> pd.DataFrame:
    """One row per submission: its score, then per workload its time and ratio (∞ shown as inf)."""
    table = pd.DataFrame({"submission": times.index, "score": scores(ratios).to_numpy()})
    for workload in times.columns:
        table[f"{workload}: time"] = times[workload].to_numpy()
        table[f"{workload}: ratio"] = ratios[workload].to_numpy()
    return table.sort_values("score", ascending=False, kind="stable").reset_index(drop=True)


def report_lines(times: pd.DataFrame, ratios: pd.DataFrame, measure: str, figure: str) -> list[str]:
    """The profile as a report section: what it is, the table, the figure."""
    return [
        "## Performance profile",
        "",
        f"Time to target in {escape_markdown(measure)}, per submission (rows) and workload: the median over its runs (seeds), "
        f"∞ where it did not converge; ratio to the fastest on the workload, ∞ above {R_MAX:g}; score: the normalised area under "
        f"ρ(τ) from 1 to {R_MAX:g} (AlgoPerf's), 1 for the fastest everywhere.",
        "",
        to_markdown(profile_table(times, ratios)),
        f"![Performance profiles ρ(τ)]({figure})",
        "",
    ]


def run_profile(directories: list[str], *, measure: str, precision_workloads: bool, out: str | None) -> int:
    """Print every submission's score and its times and ratios; with --out, write report.md and profile.png there."""
    if measure not in MEASURES:
        raise FrameBenchError(f"--by {measure!r}: choose one of {', '.join(MEASURES)}")
    runs = pd.concat([load_results(d)["runs"] for d in directories], ignore_index=True)
    times = times_to_target(runs, measure, precision_workloads)
    ratios = performance_ratios(times)
    print(format_table(profile_table(times, ratios)))
    if out:
        folder = Path(out)
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise FrameBenchError(f"cannot write --out {out} ({exc.strerror or exc})") from None
        profile_figure(ratios, folder / "profile.png", f"Performance profiles, {len(times.columns)} workload(s), time in {measure}")
        sources = [f"- {escape_markdown(d)}" for d in directories]
        command = escape_markdown(" ".join(["framebench", *sys.argv[1:]]))
        lines = [
            "# framebench performance profile",
            "",
            f"{command}, over:",
            "",
            *sources,
            "",
            *report_lines(times, ratios, measure, "profile.png"),
        ]
        print(write_markdown(folder / "report.md", lines, "the profile above was printed in full"))
    return 0
