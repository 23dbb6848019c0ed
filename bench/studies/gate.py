"""The regression gate measured as an instrument, on this machine (`framebench study gate`, `make bench-gate`).

Each round runs a BASE and then, in a shuffled order, NEW runs of the same code: identical (A/A)
on a quiet machine, identical with busy processes beside it, and with a known injected slowdown
(framebench.studies.slowdown) of each size in --effects. Every NEW is compared with its round's BASE by
`compare_groups`, and by the rule `compare` used before (median ratio beyond the tolerance and NEW's
fastest repeat slower than BASE's slowest), so the report shows the false-alarm rate (A/A called a
regression) and the power (A/B called a regression) of both, with their counts, the settings, the
wall time and how busy the machine was meanwhile.

    framebench study gate --rounds 20 --directory results/gate

A rerun skips the runs already in --directory and adds rounds up to --rounds; `--report-only`
redraws results/gate/report.md and gate.png from what is there.
"""

from __future__ import annotations

import argparse
import math
import os
import random
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import binomtest

from framebench.errors import FrameBenchError
from framebench.reports.compare import Group, Options, Tolerances, compare_groups, held_back
from framebench.reports.markdown import to_markdown
from framebench.reports.plots import save_figure
from framebench.reports.summary import BUSY_FRACTION
from framebench.reports.verdicts import Kind
from framebench.store.reader import latest_attempts, load_results

HELP = "false alarms and power of the regression gate on A/A and injected-slowdown pairs: results/gate/report.md"
PLUGIN = "slowdown=framebench.studies.slowdown:SlowdownClassifier"  # the study's backend, registered for every run
RUNS_FOLDER = "runs"  # under --directory: one results directory per run (not committed)


@dataclass(frozen=True)
class Settings:
    rounds: int  # rounds wanted (a round: one BASE and every NEW condition against it)
    repeats: int  # --repeats of every run
    epochs: int  # epochs per job (the first is excluded from every time)
    preset: str  # the configuration trained
    dataset: str  # its data
    hidden: str  # --hidden of every run: sets how long an epoch takes
    threads: int  # --threads of every run
    effects: tuple[float, ...]  # injected slowdowns of the A/B conditions (0.1 = 10%)
    busy_processes: int  # `yes > /dev/null` processes beside NEW in the busy A/A condition
    time_tol: float  # compare's --time-tol
    budget_s: float  # no round starts after this many seconds (the study ends on time, with what it has)
    directory: Path  # where the runs, report.md and gate.png go


@dataclass(frozen=True)
class Condition:
    name: str  # "base", "A/A quiet", "A/A busy", "+10%", ...
    share: float  # injected slowdown
    busy: bool  # busy processes beside it


def conditions(settings: Settings) -> list[Condition]:
    news = [Condition("A/A quiet", 0.0, False), Condition("A/A busy", 0.0, True)]
    return news + [Condition(f"+{effect:.0%}", effect, False) for effect in settings.effects]


def run_id(round_number: int, condition: Condition) -> str:
    name = condition.name.replace("/", "").replace(" ", "-").replace("+", "plus").replace("%", "pct")
    return f"round{round_number:03d}-{name}"


def complete(directory: Path, repeats: int) -> bool:
    """Whether a run directory holds an ok row for every repeat (a run to skip on a rerun)."""
    runs_file = directory / "runs.csv"
    if not runs_file.exists():
        return False
    runs = latest_attempts(load_results(directory)["runs"])
    return int((runs["status"] == "ok").sum()) >= repeats


def run_one(settings: Settings, round_number: int, condition: Condition) -> None:
    """One `framebench run` of the slowdown backend, with busy processes beside it where the condition says."""
    folder = settings.directory / RUNS_FOLDER
    target = folder / run_id(round_number, condition)
    if complete(target, settings.repeats):
        return
    command = [sys.executable, "-m", "framebench", "run", "--backends", "slowdown", "--preset", settings.preset]
    command += ["--dataset", settings.dataset, "--hidden", settings.hidden, "--epochs", str(settings.epochs)]
    command += ["--repeats", str(settings.repeats), "--threads", str(settings.threads), "--no-floors"]
    command += ["--results-dir", str(folder), "--run-id", target.name]
    env = {**os.environ, "FRAMEBENCH_PLUGINS": PLUGIN, "FRAMEBENCH_SLOWDOWN": str(condition.share)}
    hogs = [subprocess.Popen(["yes"], stdout=subprocess.DEVNULL) for _ in range(settings.busy_processes if condition.busy else 0)]
    try:
        finished = subprocess.run(command, env=env, check=False, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()
    if finished.returncode:
        print(f"{target.name}: framebench run exited {finished.returncode}: {finished.stderr.strip()[-300:]}", file=sys.stderr)


def collect(settings: Settings) -> None:
    """Run rounds until --rounds are complete or the time budget is spent."""
    started = time.monotonic()
    for round_number in range(settings.rounds):
        if time.monotonic() - started > settings.budget_s:
            print(f"time budget spent after {round_number} round(s)", file=sys.stderr)
            return
        news = conditions(settings)
        random.Random(round_number).shuffle(news)
        for condition in [Condition("base", 0.0, False), *news]:
            run_one(settings, round_number, condition)
        print(f"round {round_number + 1} of {settings.rounds} done ({time.monotonic() - started:.0f} s)", file=sys.stderr, flush=True)


def old_rule(base: dict, new: dict, tol: float) -> bool:
    """The rule `compare` used before: median of the repeats' medians beyond 1 + tol and NEW's fastest
    repeat slower than BASE's slowest."""
    b = latest_attempts(base["runs"]).query("status == 'ok'")["median_epoch_s"]
    n = latest_attempts(new["runs"]).query("status == 'ok'")["median_epoch_s"]
    return bool(n.median() / b.median() > 1 + tol and n.min() > b.max())


def interval_only(row: pd.Series, tol: float) -> bool:
    """The new rule's statistics without its busy and machine-speed guards: a regression by the interval alone."""
    return bool(row["time_low"] > 1 and row["time_ratio"] > 1 + tol)


def speed_guarded(row: pd.Series, tol: float) -> bool:
    """A regression by the interval that the machine-speed guard lets through (the busy guard left out)."""
    return interval_only(row, tol) and not held_back({**row.to_dict(), "busy_base": 0.0, "busy_new": 0.0}, tol, ("BASE", "NEW"))


def outcomes(settings: Settings) -> pd.DataFrame:
    """One row per (round, NEW condition) found in --directory: the verdicts of the new and old rules."""
    folder, rows = settings.directory / RUNS_FOLDER, []
    # every run is on this one machine: its fingerprint is not in question (env.json recorded whichever BLAS was loaded first)
    options = Options(Tolerances(acc_tol=0.005, time_tol=settings.time_tol), compare_accuracy=True, compare_time=True, any_machine=True)
    for round_number in range(settings.rounds):
        base_dir = folder / run_id(round_number, Condition("base", 0.0, False))
        if not complete(base_dir, settings.repeats):
            continue
        base = load_results(base_dir)
        for condition in conditions(settings):
            new_dir = folder / run_id(round_number, condition)
            if not complete(new_dir, settings.repeats):
                continue
            new = load_results(new_dir)
            decided = compare_groups(
                Group(base["runs"], base["epochs"], base["env"], "BASE"), Group(new["runs"], new["epochs"], new["env"], "NEW"), options
            ).iloc[0]
            rows.append(
                {
                    "round": round_number,
                    "condition": condition.name,
                    "share": condition.share,
                    "verdict": str(decided["verdict"]),
                    "kind": decided["verdict"].kind,
                    "busy": decided["verdict"].note.startswith("busy"),
                    "time_ratio": decided["time_ratio"],
                    "time_low": decided["time_low"],
                    "time_high": decided["time_high"],
                    "machine_ratio": decided["machine_ratio"],
                    "busy_base": decided["busy_base"],
                    "busy_new": decided["busy_new"],
                    "new_rule": decided["verdict"].kind is Kind.REGRESSION,
                    "interval_only": interval_only(decided, settings.time_tol),
                    "speed_guarded": speed_guarded(decided, settings.time_tol),
                    "old_rule": old_rule(base, new, settings.time_tol),
                }
            )
    return pd.DataFrame(rows)


def rates(table: pd.DataFrame, settings: Settings) -> pd.DataFrame:
    """Per condition: how often each rule called a regression (false alarms for A/A, power for A/B), as counts."""
    order = [c.name for c in conditions(settings)]
    grouped = table.groupby("condition", sort=False)
    summary = pd.DataFrame(
        {
            "pairs": grouped.size(),
            "new rule: REGRESSION": grouped["new_rule"].sum(),
            "new: not verified": grouped["kind"].apply(lambda k: (k == Kind.NOT_VERIFIED).sum()),
            "new: inconclusive": grouped["kind"].apply(lambda k: (k == Kind.INCONCLUSIVE).sum()),
            "new: no change": grouped["kind"].apply(lambda k: (k == Kind.NO_CHANGE).sum()),
            "interval alone: REGRESSION": grouped["interval_only"].sum(),
            "interval + speed guard: REGRESSION": grouped["speed_guarded"].sum(),
            "old rule: REGRESSION": grouped["old_rule"].sum(),
            "median ratio": grouped["time_ratio"].median(),
        }
    ).reindex([name for name in order if name in grouped.groups])
    for column in ("new rule: REGRESSION", "interval alone: REGRESSION", "interval + speed guard: REGRESSION", "old rule: REGRESSION"):
        summary[column] = [share(int(k), int(n)) for k, n in zip(summary[column], summary["pairs"], strict=True)]
    return summary.reset_index()


def share(count: int, pairs: int) -> str:
    """E.g. "1/8 (12%; 95% CI 0-53%)": the rate with its exact (Clopper-Pearson) interval."""
    interval = binomtest(count, pairs).proportion_ci(confidence_level=0.95)
    return f"{count}/{pairs} ({count / pairs:.0%}; 95% CI {interval.low:.0%}-{interval.high:.0%})"


def repeats_for_half_tolerance(table: pd.DataFrame, settings: Settings) -> tuple[float, int]:
    """(median A/A interval half-width on the log scale, repeats a side that would shrink it to half the
    tolerance), the width scaling as 1/sqrt(repeats)."""
    aa = table[table["condition"].str.startswith("A/A")]
    half_width = float(((np.log(aa["time_high"]) - np.log(aa["time_low"])) / 2).median())
    return half_width, math.ceil(settings.repeats * (half_width / (math.log1p(settings.time_tol) / 2)) ** 2)


RULES = {"new rule": "new_rule", "interval alone": "interval_only", "interval + speed guard": "speed_guarded", "old rule": "old_rule"}


def goals(table: pd.DataFrame) -> list[str]:
    """One line per rule: its worst A/A false-alarm rate and its power at +10% and +20% against the
    issue's goals (<= 5%; >= 50% and >= 90%)."""
    rate = lambda column, condition: table.loc[table["condition"] == condition, column].mean()  # noqa: E731
    lines = []
    for name, column in RULES.items():
        false_alarms = max(rate(column, "A/A quiet"), rate(column, "A/A busy"))
        power10, power20 = rate(column, "+10%"), rate(column, "+20%")
        met = false_alarms <= 0.05 and power10 >= 0.5 and power20 >= 0.9
        lines.append(
            f"- {name}: false alarms up to {false_alarms:.0%}, power {power10:.0%} at +10% and {power20:.0%} at +20%: "
            + ("goals met" if met else "goals not met")
        )
    return lines


def spread(values: pd.Series) -> dict[str, float]:
    return {"p50": values.quantile(0.5), "p90": values.quantile(0.9), "max": values.max()}


def machine_load(settings: Settings) -> dict:
    """How busy the machine was over every job of the study: other processes' CPU share, steal, and the
    spread of the calibrations (the machine's own speed)."""
    jobs = pd.concat(
        [load_results(d)["runs"] for d in sorted((settings.directory / RUNS_FOLDER).glob("round*")) if (d / "runs.csv").exists()]
    )
    jobs = latest_attempts(jobs)
    calibration = jobs[["calib_before_s", "calib_after_s"]].mean(axis=1)
    return {
        "jobs": len(jobs),
        "other_cpu_frac": spread(jobs["other_cpu_frac"]),
        "steal_frac": spread(jobs["steal_frac"]),
        "calibration_spread": float(calibration.max() / calibration.min()),
        "calibration_p90_over_p10": float(calibration.quantile(0.9) / calibration.quantile(0.1)),
        "wall_s": float(jobs["ended_at"].max() - jobs["started_at"].min()),
    }


def write_figure(table: pd.DataFrame, settings: Settings, path: Path) -> None:
    """Each pair's ratio with its 95% interval, per condition, coloured by the new rule's verdict."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [c.name for c in conditions(settings) if c.name in set(table["condition"])]
    colours = {
        Kind.REGRESSION: "tab:red",
        Kind.NO_CHANGE: "tab:green",
        Kind.INCONCLUSIVE: "tab:orange",
        Kind.NOT_VERIFIED: "tab:gray",
        Kind.IMPROVED: "tab:blue",
    }
    figure, axis = plt.subplots(figsize=(9, 4.5))
    for position, name in enumerate(names):
        rows = table[table["condition"] == name].reset_index(drop=True)
        for offset, row in rows.iterrows():
            x = position + (offset - (len(rows) - 1) / 2) * 0.6 / max(len(rows), 1)
            colour = colours[row["kind"]]
            axis.errorbar(
                x,
                row["time_ratio"],
                yerr=[[row["time_ratio"] - row["time_low"]], [row["time_high"] - row["time_ratio"]]],
                fmt="o",
                ms=3,
                color=colour,
            )
    axis.axhline(1, color="black", lw=0.8)
    axis.axhline(1 + settings.time_tol, color="tab:red", lw=0.8, ls="--", label=f"1 + tolerance ({settings.time_tol:.0%})")
    for kind, colour in colours.items():
        axis.plot([], [], "o", color=colour, label=kind.value)
    axis.set_xticks(range(len(names)), names)
    axis.set_ylabel("NEW / BASE median epoch, 95% interval")
    axis.set_title("The regression gate on A/A and injected-slowdown pairs")
    axis.legend(fontsize=8, loc="upper left")
    figure.tight_layout()
    save_figure(figure, path)
    plt.close(figure)


def write_report(settings: Settings) -> Path:
    table = outcomes(settings)
    if table.empty:
        raise FrameBenchError(f"{settings.directory / RUNS_FOLDER} holds no complete round; run the study first (without --report-only)")
    load = machine_load(settings)
    half_width, repeats_needed = repeats_for_half_tolerance(table, settings)
    aa_pairs = int(table["condition"].str.startswith("A/A quiet").sum())
    aa = table[table["condition"].str.startswith("A/A")]
    covered = int(((aa["time_low"] <= 1) & (aa["time_high"] >= 1)).sum())
    write_figure(table, settings, settings.directory / "gate.png")
    fmt = lambda d: ", ".join(f"{k} {v:.1%}" for k, v in d.items())  # noqa: E731
    lines = [
        "# The regression gate, measured",
        "",
        "Generated by `make bench-gate` (`framebench study gate`): every NEW run compared with its round's BASE.",
        "A/A pairs run identical code (any REGRESSION is a false alarm); `+N%` pairs inject that share of each epoch as extra work",
        "(`framebench.studies.slowdown`), so a REGRESSION there is a detection. With the default tolerance, an injected slowdown below it",
        "should *not* be called a regression: power is meaningful at and above the tolerance.",
        "",
        "## Settings",
        "",
        f"- {table['round'].nunique()} round(s) of one BASE and {len(conditions(settings))} NEW runs each (shuffled order); "
        f"`--preset {settings.preset} --dataset {settings.dataset} --hidden {settings.hidden} --epochs {settings.epochs} "
        f"--repeats {settings.repeats} --threads {settings.threads} --no-floors`; `--time-tol {settings.time_tol:g}`",
        f"- busy condition: {settings.busy_processes} `yes > /dev/null` processes beside NEW",
        f"- wall time of the runs: {load['wall_s'] / 60:.1f} min, {load['jobs']} jobs",
        f"- machine load over every job: other processes' CPU share {fmt(load['other_cpu_frac'])}; "
        f"steal {fmt(load['steal_frac'])}; calibration p90/p10 ×{load['calibration_p90_over_p10']:.2f}, "
        f"max/min ×{load['calibration_spread']:.2f}",
        "",
        "## False alarms and power",
        "",
        "`new rule` is `compare`'s verdict (interval, busy and machine-speed guards); `interval alone` is its interval rule",
        "without the guards (lower bound > 1 and ratio > 1 + tol); `old rule` is the previous gate (median ratio > 1 + tol",
        "and NEW's fastest repeat slower than BASE's slowest).",
        "",
        to_markdown(rates(table, settings)),
        "![Each pair's ratio with its interval](gate.png)",
        "",
        "## Against the goals (false alarms <= 5% quiet and busy; power >= 50% at +10%, >= 90% at +20%)",
        "",
        *goals(table),
        "",
        "## What a real claim needs",
        "",
        f"- The median A/A interval here spans ±{math.expm1(half_width):.1%}; an interval of half the tolerance "
        f"(±{settings.time_tol / 2:.0%}) would take about {repeats_needed} repeats a side under the same load "
        "(width ~ 1/sqrt(repeats)).",
        f"- {covered} of {len(aa)} A/A intervals contain 1 (a 95% interval should, about 95% of the time): the interval "
        "holds the spread between the repeats of one run, not a change of the machine's state between two runs taken "
        "minutes apart; runs that interleave BASE and NEW job by job see the same state and close that gap.",
        f"- {int(table['busy'].sum())} of {len(table)} pairs were held back as busy "
        f"(other processes used more than {BUSY_FRACTION:.0%} of the CPUs): on a machine this shared the gate refuses to judge "
        "time, as designed; the `interval alone` and `interval + speed guard` columns show what its statistics say without that guard.",
        f"- A false-alarm rate shown to be below 5% needs about 60 A/A pairs without one (rule of three); this study has "
        f"{aa_pairs} quiet A/A pair(s), so its rates carry the wide 95% intervals shown.",
        "",
        "## Every pair",
        "",
        to_markdown(table.drop(columns=["share", "kind", "busy"])),
    ]
    path = settings.directory / "report.md"
    path.write_text("\n".join(lines))
    return path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rounds", type=int, default=20, help="rounds wanted (default 20)")
    parser.add_argument("--repeats", type=int, default=3, help="--repeats of every run")
    parser.add_argument("--epochs", type=int, default=8, help="epochs per job")
    parser.add_argument("--preset", default="tutorial000", help="the configuration trained")
    parser.add_argument("--dataset", default="digits", help="its data")
    parser.add_argument("--hidden", default="4096", help="hidden widths (default 4096: a digits epoch of about a tenth of a second)")
    parser.add_argument("--threads", type=int, default=1, help="--threads of every run")
    parser.add_argument("--effects", default="0.03,0.05,0.10,0.20", help="injected slowdowns of the A/B pairs")
    parser.add_argument("--busy-processes", type=int, default=2, help="busy processes beside NEW in the busy A/A condition")
    parser.add_argument("--time-tol", type=float, default=0.10, help="compare's --time-tol")
    parser.add_argument("--budget-min", type=float, default=20.0, help="start no round after this many minutes")
    parser.add_argument("--directory", type=Path, default=Path("results/gate"), help="where the runs, report.md and gate.png go")
    parser.add_argument("--report-only", action="store_true", help="redraw report.md and gate.png from the runs already there")


def run(args: argparse.Namespace) -> int:
    settings = Settings(
        rounds=args.rounds,
        repeats=args.repeats,
        epochs=args.epochs,
        preset=args.preset,
        dataset=args.dataset,
        hidden=args.hidden,
        threads=args.threads,
        effects=tuple(float(v) for v in args.effects.split(",")),
        busy_processes=args.busy_processes,
        time_tol=args.time_tol,
        budget_s=args.budget_min * 60,
        directory=args.directory,
    )
    if not args.report_only:
        collect(settings)
    print(write_report(settings))
    return 0
