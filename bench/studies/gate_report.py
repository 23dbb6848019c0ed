"""The gate study's analysis and report (framebench.studies.gate): each complete verdict's folder read
back through compare's rules, the rates with their exact intervals, the issue's goals, the figure and
report.md. Apart from running the rounds (framebench.studies.gate_rounds) because it reads only what
they left, which `--report-only` redraws.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import binomtest

from framebench.errors import FrameBenchError
from framebench.reports.comparison import Group, Options, Tolerances, compare_groups, environment_groups, held_back
from framebench.reports.markdown import to_markdown
from framebench.reports.plots import save_figure
from framebench.reports.summary import BUSY_FRACTION
from framebench.reports.verdicts import Kind
from framebench.store.reader import latest_attempts, load_results
from framebench.studies.gate_rounds import INTERMITTENT, MARKER, RULES, RUNS_FOLDER, Settings, conditions


def decide(folder: Path, rule: str, settings: Settings) -> pd.Series:
    """The verdict compare_groups reaches on a verdict's folder: the gate's paired rule, or the unpaired
    rule between two separate runs (a code change judged, not refused, as the gate does)."""
    tolerances = Tolerances(acc_tol=0.005, time_tol=settings.time_tol)
    if rule == "gate":
        groups = environment_groups(load_results(folder / "gate"), "base", "new", folder)
        options = Options(tolerances, compare_accuracy=True, compare_time=True, any_machine=True, paired=True, judge_code_changes=True)
    else:
        sides = [load_results(folder / side) for side in ("base", "new")]
        groups = [Group(t["runs"], t["epochs"], t["machine"], label) for t, label in zip(sides, ("BASE", "NEW"), strict=True)]
        options = Options(tolerances, compare_accuracy=True, compare_time=True, any_machine=True, judge_code_changes=True)
    return compare_groups(*groups, options).iloc[0]


def outcomes(settings: Settings) -> pd.DataFrame:
    """One row per complete verdict: its rule, condition, kind, ratio and interval, and the variants of the
    rule the report weighs (a busy guard on the gate; the separate rule's interval without its guards)."""
    rows = []
    for marker in sorted((settings.directory / RUNS_FOLDER).glob(f"*/{MARKER}")):
        record = json.loads(marker.read_text())
        decided = decide(marker.parent, record["rule"], settings)
        kind, busy = decided["verdict"].kind, max(decided["busy_base"], decided["busy_new"])
        interval_alone = bool(decided["time_low"] > 1 and decided["time_ratio"] > 1 + settings.time_tol)
        guarded = held_back(decided.to_dict(), settings.time_tol, ("BASE", "NEW")) is not None
        rows.append(
            {
                "round": record["round"],
                "condition": record["condition"],
                "rule": record["rule"],
                "verdict": str(decided["verdict"]),
                "kind": kind,
                "time_ratio": decided["time_ratio"],
                "time_low": decided["time_low"],
                "time_high": decided["time_high"],
                "pairs": decided["pairs"],
                "busy": busy,
                "wall_s": record["wall_s"],
                "regression": kind is Kind.REGRESSION,
                "with_guards": kind is Kind.REGRESSION and not guarded,  # the gate's verdict had compare's guards held it back
                "interval_alone": interval_alone,
            }
        )
    return pd.DataFrame(rows)


def share(count: int, total: int) -> str:
    """E.g. "1/8 (12%; 95% CI 0-53%)": the rate with its exact (Clopper-Pearson) interval."""
    interval = binomtest(count, total).proportion_ci(confidence_level=0.95)
    return f"{count}/{total} ({count / total:.0%}; 95% CI {interval.low:.0%}-{interval.high:.0%})"


def upper_bound(count: int, total: int) -> float:
    """The exact one-sided 95% upper bound of a rate (Clopper-Pearson): 0 of 59 bounds it below 5%."""
    return binomtest(count, total).proportion_ci(confidence_level=0.90).high


def rates(table: pd.DataFrame, settings: Settings) -> pd.DataFrame:
    """Per condition and rule: how often each verdict came, REGRESSION with its exact interval."""
    order = {c.name: i for i, c in enumerate(conditions(settings))}
    rows = []
    for (condition, rule), group in sorted(table.groupby(["condition", "rule"]), key=lambda item: (order.get(item[0][0], 99), item[0][1])):
        count = lambda kind, g=group: int((g["kind"] == kind).sum())  # noqa: E731
        rows.append(
            {
                "condition": condition,
                "rule": rule,
                "verdicts": len(group),
                "REGRESSION": share(int(group["regression"].sum()), len(group)),
                "not verified": count(Kind.NOT_VERIFIED),
                "inconclusive": count(Kind.INCONCLUSIVE),
                "no change": count(Kind.NO_CHANGE),
                "improved": count(Kind.IMPROVED),
                "interval alone: REGRESSION": share(int(group["interval_alone"].sum()), len(group)),
                "gate + busy/speed guards: REGRESSION": share(int(group["with_guards"].sum()), len(group)) if rule == "gate" else "-",
                "median ratio": round(float(group["time_ratio"].median()), 4),
                "median wall s": round(float(group["wall_s"].median()), 1),
            }
        )
    return pd.DataFrame(rows)


def goals(table: pd.DataFrame) -> list[str]:
    """The issue's goals for the gate, each met or with its measured distance."""
    gate = table[table["rule"] == "gate"]

    def rate(condition: str, column: str = "regression", kinds=None) -> tuple[int, int]:
        rows = gate[gate["condition"] == condition]
        hits = rows["kind"].isin(kinds).sum() if kinds else rows[column].sum()
        return int(hits), len(rows)

    lines = []
    clean = math.ceil(math.log(0.05) / math.log(0.95))  # A/A verdicts without a false alarm that bound the rate at 5%
    for condition in ("A/A quiet", "A/A busy", "A/A intermittent"):
        k, n = rate(condition)
        if n:
            upper = upper_bound(k, n)
            short = f"{k} false alarm(s)" if k else f"{n} verdicts are too few to bound it at 5% ({clean} clean ones would)"
            verdict = "met" if upper <= 0.05 else f"not met: the bound is {upper:.1%}; {short}"
            lines.append(f"- {condition}, REGRESSION <= 5% (one-sided 95% upper bound): {share(k, n)}: {verdict}")
    k, n = rate("A/A quiet", kinds=[Kind.NOT_VERIFIED, Kind.INCONCLUSIVE])
    if n:
        lines.append(
            f"- A/A quiet, not verified + inconclusive <= 10%: {share(k, n)}: "
            + ("met" if k / n <= 0.10 else f"not met by {k / n - 0.10:.0%}")
        )
    for condition, goal in (("+5%", 0.90), ("+10%", 0.99), ("+10% intermittent", 0.80)):
        k, n = rate(condition)
        if n:
            lines.append(
                f"- power at {condition} >= {goal:.0%}: {share(k, n)}: " + ("met" if k / n >= goal else f"not met by {goal - k / n:.0%}")
            )
    walls = table.groupby("rule")["wall_s"].median()
    if {"gate", "separate"} <= set(walls.index):
        met = walls["gate"] <= walls["separate"]
        lines.append(
            f"- wall time per verdict <= BASE + NEW run separately: gate {walls['gate']:.0f} s, separate {walls['separate']:.0f} s "
            "(medians): " + ("met" if met else f"not met by {walls['gate'] / walls['separate'] - 1:.0%}")
        )
    return lines


def repeats_for(table: pd.DataFrame, settings: Settings) -> list[str]:
    """What the A/A intervals say about precision: the median half-width (log scale) per rule, and the
    repeats a side that would make it half the tolerance (width ~ 1/sqrt(repeats))."""
    lines = []
    for rule, rows in table[table["condition"].str.startswith("A/A")].groupby("rule"):
        half = float(((np.log(rows["time_high"]) - np.log(rows["time_low"])) / 2).median())
        needed = math.ceil(settings.repeats * (half / (math.log1p(settings.time_tol) / 2)) ** 2)
        lines.append(
            f"- {rule}: the median A/A interval spans ±{math.expm1(half):.1%}; half the tolerance (±{settings.time_tol / 2:.1%}) "
            f"would take about {needed} repeats a side"
        )
    return lines


def write_figure(table: pd.DataFrame, settings: Settings, path: Path) -> None:
    """Each verdict's ratio with its 95% interval, per condition, the gate left and the separate runs
    right of each tick, coloured by the verdict."""
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
    figure, axis = plt.subplots(figsize=(11, 5))
    for position, name in enumerate(names):
        for side, rule in enumerate(RULES):
            rows = table[(table["condition"] == name) & (table["rule"] == rule)].reset_index(drop=True)
            for offset, row in rows.iterrows():
                x = position + (side - 0.5) * 0.4 + (offset - (len(rows) - 1) / 2) * 0.3 / max(len(rows), 1)
                yerr = [[row["time_ratio"] - row["time_low"]], [row["time_high"] - row["time_ratio"]]]
                axis.errorbar(x, row["time_ratio"], yerr=yerr, fmt="o" if rule == "gate" else "s", ms=3, color=colours[row["kind"]])
    axis.axhline(1, color="black", lw=0.8)
    axis.axhline(1 + settings.time_tol, color="tab:red", lw=0.8, ls="--", label=f"1 + tolerance ({settings.time_tol:.0%})")
    for kind, colour in colours.items():
        axis.plot([], [], "o", color=colour, label=kind.value)
    axis.set_xticks(range(len(names)), names, fontsize=8)
    axis.set_ylabel("NEW / BASE epoch time, 95% interval")
    axis.set_title("Each verdict: the lockstep gate (circles, left) and separate runs (squares, right)")
    axis.legend(fontsize=7, loc="upper left")
    figure.tight_layout()
    save_figure(figure, path)
    plt.close(figure)


def machine_load(settings: Settings) -> dict:
    """How busy the machine was over every job of the study, its span and how long an epoch took."""
    folders = [p.parent for p in (settings.directory / RUNS_FOLDER).glob("*/*/runs.csv")]
    tables = [load_results(folder) for folder in folders]
    ids = [f"{folder.parent.name}/{folder.name}" for folder in folders]  # one run id per run
    runs = [t["runs"].assign(run_id=run_id) for t, run_id in zip(tables, ids, strict=True)]
    jobs = latest_attempts(pd.concat(runs))
    epochs = pd.concat(t["epochs"] for t in tables)
    spread = lambda values: ", ".join(f"{k} {values.quantile(q):.1%}" for k, q in (("p50", 0.5), ("p90", 0.9), ("max", 1.0)))  # noqa: E731
    return {
        "jobs": len(jobs),
        "other": spread(jobs["other_cpu_frac"]),
        "steal": spread(jobs["steal_frac"]),
        "hours": float(jobs["ended_at"].max() - jobs["started_at"].min()) / 3600,
        "epoch_s": float(epochs.loc[epochs["epoch"] > 1, "epoch_s"].median()),  # after the warm-up epoch
    }


def write_report(settings: Settings) -> Path:
    table = outcomes(settings)
    if table.empty:
        raise FrameBenchError(f"{settings.directory / RUNS_FOLDER} holds no complete verdict; run the study first (without --report-only)")
    load = machine_load(settings)
    write_figure(table, settings, settings.directory / "gate.png")
    epochs = f"--epochs {settings.epochs}" if settings.epochs else "the preset's epochs"
    lines = [
        "# The regression gate, measured",
        "",
        "Generated by `make bench-gate` (`framebench study gate`). Each verdict is reached two ways at the same budget: `gate`, a",
        "`framebench gate` (BASE and NEW in lockstep in one run, judged from the pairs of adjacent epochs), and `separate`, a `framebench",
        "run` of BASE then one of NEW judged by compare's unpaired rule with its busy and machine-speed guards. A/A verdicts compare",
        "identical code (a REGRESSION is a false alarm); `+N%` verdicts a real commit whose NumPy backend does N% more work per epoch",
        "(`framebench.studies.slowdown`), so a REGRESSION there is a detection.",
        "",
        "## Settings",
        "",
        f"- {table['round'].nunique()} round(s); `--backends numpy --preset {settings.preset} --dataset {settings.dataset} --hidden "
        f"{settings.hidden} --repeats {settings.repeats} --threads {settings.threads} --no-floors`, {epochs}; "
        f"`--time-tol {settings.time_tol:g}`",
        f"- busy: {settings.neighbours} `yes` processes beside the whole verdict; intermittent: {settings.neighbours} processes in phase, "
        f"alternating {INTERMITTENT[0]:g}-{INTERMITTENT[1]:g} s busy and as long idle",
        f"- {load['jobs']} jobs over {load['hours']:.1f} h, a median epoch (after the first) of {load['epoch_s']:.3f} s; "
        f"other processes' CPU share {load['other']}; steal {load['steal']}",
        "",
        "## Verdicts",
        "",
        "`interval alone` reads the interval without any guard (lower bound > 1 and ratio > 1 + tol); `gate + busy/speed guards`",
        f"is the gate's REGRESSION had compare's guards (busy above {BUSY_FRACTION:.0%}, machine speed) held it back: where it is lower",
        "than the gate's own count, a guard would have prevented that many false alarms or detections.",
        "",
        to_markdown(rates(table, settings)),
        "![Each verdict's ratio with its interval](gate.png)",
        "",
        "## Against the goals",
        "",
        *goals(table),
        "",
        "## Precision",
        "",
        *repeats_for(table, settings),
        "",
        "## Every verdict",
        "",
        to_markdown(
            table.drop(columns=["kind", "regression", "with_guards", "interval_alone"]).sort_values(["round", "condition", "rule"])
        ),
    ]
    path = settings.directory / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path
