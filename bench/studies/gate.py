"""The regression gate measured as an instrument on this machine (`framebench study gate`, `make bench-gate`).

Each verdict is reached the two ways a user can reach it, at the same wall-time budget (--repeats
a side): `gate`, a `framebench gate --base BASE --new NEW` from a clone (BASE and NEW in lockstep in
one run, paired statistics: the path users take); and `separate`, the rule before it: a `framebench
run` of BASE, then one of NEW, compared by compare's unpaired rule with its busy and machine-speed
guards. NEW is identical to BASE (A/A: any REGRESSION is a false alarm) or a real code change: a
commit of the study's own clone whose NumPy backend does N% more work per epoch
(framebench.studies.slowdown), built as an environment of its own like any revision.

Conditions: A/A quiet; A/A with --neighbours `yes` processes beside the whole verdict (busy); A/A and
+10% beside an intermittent neighbour (--neighbours processes, in phase, alternating 2-5 s busy and
2-5 s idle); +N% quiet for each of --effects. Each round runs every (condition, rule) once, in a
shuffled order. A rerun adds what is missing (a verdict counts once its marker is written; a
half-run one is redone), no verdict starts after --budget-min, and the report is written from what
there is; --report-only redraws it.

    framebench study gate --rounds 60 --budget-min 900 --directory results/gate
"""

from __future__ import annotations

import argparse
import json
import math
import random
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import binomtest

from framebench.driver import revisions
from framebench.driver.gate import GATE_TIME_TOL
from framebench.errors import FrameBenchError
from framebench.reports.comparison import Group, Options, Tolerances, compare_groups, environment_groups, held_back
from framebench.reports.markdown import to_markdown
from framebench.reports.plots import save_figure
from framebench.reports.summary import BUSY_FRACTION
from framebench.reports.verdicts import Kind
from framebench.store.reader import latest_attempts, load_results
from framebench.studies.slowdown import slower_revision

HELP = "false alarms and power of the lockstep gate beside separate runs (A/A, neighbours, real slowdowns): results/gate/report.md"
RUNS_FOLDER = "runs"  # under --directory: one folder per verdict (not committed)
CLONE_FOLDER = "clone"  # under --directory: the clone holding BASE and the slower revisions on branches of their own
MARKER = "verdict.json"  # written last in a verdict's folder: the verdict is complete
STUDY_FILE = "study.json"  # under --directory: the revision and the settings its verdicts measured
IDENTITY = ("repeats", "epochs", "preset", "dataset", "hidden", "threads", "neighbours")  # settings every verdict of a study shares
BASE_BRANCH = "study-base"
RULES = ("gate", "separate")
INTERMITTENT = (2.0, 5.0)  # seconds an intermittent neighbour stays busy, then idle: drawn uniformly in this range
NEIGHBOUR_CODE = """
import random, sys, time
rng = random.Random(int(sys.argv[1]))
while True:
    busy_until = time.monotonic() + rng.uniform({low}, {high})
    while time.monotonic() < busy_until:
        pass
    time.sleep(rng.uniform({low}, {high}))
"""


@dataclass(frozen=True)
class Settings:
    rounds: int  # rounds wanted (a round: every condition once by every rule)
    repeats: int  # --repeats of every gate and of each separate run
    epochs: int | None  # --epochs (None: the preset's)
    preset: str  # the configuration trained
    dataset: str  # its data
    hidden: str  # --hidden: sets how long an epoch takes
    threads: int  # --threads of every run
    effects: tuple[float, ...]  # slowdowns of the quiet A/B conditions (0.05 = 5%)
    neighbours: int  # processes beside the run in the busy and intermittent conditions
    time_tol: float  # the gate's --time-tol (the same for the separate rule)
    budget_s: float  # no verdict starts after this many seconds (the study ends on time, with what it has)
    directory: Path  # where the clone, the verdicts, report.md and gate.png go
    base: str | None  # the revision measured (default: the working tree of the repository the study runs in)
    rules: tuple[str, ...]  # which rules to run


@dataclass(frozen=True)
class Condition:
    name: str  # "A/A quiet", "+10% intermittent", ...
    share: float  # NEW's slowdown (0: the same code)
    neighbour: str  # "" (quiet), "busy" or "intermittent"

    @property
    def folder(self) -> str:
        return self.name.replace("/", "").replace(" ", "-").replace("+", "plus").replace("%", "pct")


def conditions(settings: Settings) -> list[Condition]:
    return [
        Condition("A/A quiet", 0.0, ""),
        Condition("A/A busy", 0.0, "busy"),
        Condition("A/A intermittent", 0.0, "intermittent"),
        Condition("+10% intermittent", 0.10, "intermittent"),
        *(Condition(f"+{effect:.0%}", effect, "") for effect in settings.effects),
    ]


def branch(share: float) -> str:
    return BASE_BRANCH if share == 0 else f"study-slower-{share * 100:g}pct"


def prepare_clone(settings: Settings) -> Path:
    """The study's clone (sharing the repository's objects, nothing checked out), BASE on its branch and
    each slower revision on one of its own: the user's repository gets no branch."""
    source = revisions.resolve(settings.base, Path.cwd())
    clone = settings.directory / CLONE_FOLDER
    if not (clone / ".git").is_dir():
        subprocess.run(["git", "clone", "--quiet", "--shared", "--no-checkout", str(source.repository), str(clone)], check=True)
    if revisions.git(clone, "branch", "--force", BASE_BRANCH, source.commit).returncode != 0:
        raise FrameBenchError(f"cannot put {source.describe()} on a branch of {clone}")
    for share in {c.share for c in conditions(settings)} - {0.0}:
        slower_revision(clone, source.commit, share, branch(share))
    check_same_study(settings, source.commit)
    print(f"BASE: {source.describe()}; slower revisions on branches of {clone}", file=sys.stderr)
    return clone


def check_same_study(settings: Settings, commit: str) -> None:
    """A directory holds one study: the verdicts a rerun adds must measure the same revision the same way."""
    identity = {"base": commit, **{name: str(getattr(settings, name)) for name in IDENTITY}}
    path = settings.directory / STUDY_FILE
    if path.is_file() and (recorded := json.loads(path.read_text())) != identity:
        differ = ", ".join(name for name in identity if recorded.get(name) != identity[name])
        raise FrameBenchError(f"{settings.directory} holds a study with another {differ}; pass another --directory to start a new one")
    path.write_text(json.dumps(identity, indent=2))


def neighbours_for(condition: Condition, settings: Settings, seed: int) -> list[subprocess.Popen]:
    """The processes beside a verdict: `yes` (busy), the intermittent loop (in phase: one seed), or none."""
    if condition.neighbour == "busy":
        return [subprocess.Popen(["yes"], stdout=subprocess.DEVNULL) for _ in range(settings.neighbours)]
    if condition.neighbour == "intermittent":
        code = NEIGHBOUR_CODE.format(low=INTERMITTENT[0], high=INTERMITTENT[1])
        return [subprocess.Popen([sys.executable, "-c", code, str(seed)]) for _ in range(settings.neighbours)]
    return []


def run_flags(settings: Settings, folder: Path, run_id: str) -> list[str]:
    flags = ["--backends", "numpy", "--preset", settings.preset, "--dataset", settings.dataset, "--hidden", settings.hidden]
    flags += ["--repeats", str(settings.repeats), "--threads", str(settings.threads), "--no-floors"]
    flags += ["--epochs", str(settings.epochs)] if settings.epochs else []
    return flags + ["--results-dir", str(folder), "--run-id", run_id]


def verdict_commands(settings: Settings, clone: Path, condition: Condition, rule: str, folder: Path) -> list[list[str]]:
    """The command lines of one verdict: a gate, or BASE's run then NEW's."""
    framebench = [sys.executable, "-m", "framebench"]
    if rule == "gate":
        decision = ["--time-tol", str(settings.time_tol), "--json", str(folder / "gate.json")]
        return [
            [*framebench, "gate", "--base", BASE_BRANCH, "--new", branch(condition.share), *decision, *run_flags(settings, folder, "gate")]
        ]
    sides = {"base": BASE_BRANCH, "new": branch(condition.share)}
    return [
        [*framebench, "run", "--env", f"side={revisions.resolve(ref, clone).requirement}", *run_flags(settings, folder, side)]
        for side, ref in sides.items()
    ]


def run_verdict(settings: Settings, clone: Path, round_number: int, condition: Condition, rule: str) -> None:
    """One verdict into its folder, its neighbours beside it, then its marker (with its wall time)."""
    folder = settings.directory / RUNS_FOLDER / f"round{round_number:03d}-{rule}-{condition.folder}"
    if (folder / MARKER).is_file():
        return
    shutil.rmtree(folder, ignore_errors=True)  # a half-run verdict is redone whole
    folder.mkdir(parents=True)
    processes = neighbours_for(condition, settings, seed=round_number)
    started, statuses = time.monotonic(), []
    try:
        for command in verdict_commands(settings, clone, condition, rule, folder):
            finished = subprocess.run(command, cwd=clone, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            statuses.append(finished.returncode)
            if finished.returncode >= 128 or "error: " in finished.stderr:
                raise FrameBenchError(
                    f"{folder.name}: {' '.join(command[3:5])} ended {finished.returncode}: {finished.stderr.strip()[-400:]}"
                )
    finally:
        for process in processes:
            process.kill()
            process.wait()
    record = {"round": round_number, "condition": condition.name, "rule": rule, "wall_s": time.monotonic() - started, "statuses": statuses}
    (folder / MARKER).write_text(json.dumps(record, indent=2))


def collect(settings: Settings) -> None:
    """Run rounds until --rounds are complete or the time budget is spent."""
    clone = prepare_clone(settings)
    started = time.monotonic()
    for round_number in range(settings.rounds):
        verdicts = [(condition, rule) for condition in conditions(settings) for rule in settings.rules]
        random.Random(round_number).shuffle(verdicts)
        for condition, rule in verdicts:
            if time.monotonic() - started > settings.budget_s:
                print(f"time budget spent in round {round_number + 1}", file=sys.stderr)
                return
            run_verdict(settings, clone, round_number, condition, rule)
        print(f"round {round_number + 1} of {settings.rounds} done ({time.monotonic() - started:.0f} s)", file=sys.stderr, flush=True)


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
    """How busy the machine was over every job of the study, and its span."""
    folders = [p.parent for p in (settings.directory / RUNS_FOLDER).glob("*/*/runs.csv")]
    runs = [load_results(folder)["runs"].assign(run_id=f"{folder.parent.name}/{folder.name}") for folder in folders]  # one id per run
    jobs = latest_attempts(pd.concat(runs))
    spread = lambda values: ", ".join(f"{k} {values.quantile(q):.1%}" for k, q in (("p50", 0.5), ("p90", 0.9), ("max", 1.0)))  # noqa: E731
    return {
        "jobs": len(jobs),
        "other": spread(jobs["other_cpu_frac"]),
        "steal": spread(jobs["steal_frac"]),
        "hours": float(jobs["ended_at"].max() - jobs["started_at"].min()) / 3600,
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
        f"- {load['jobs']} jobs over {load['hours']:.1f} h; other processes' CPU share {load['other']}; steal {load['steal']}",
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


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--rounds", type=int, default=60, help="rounds wanted (default 60: the goals' false-alarm bound needs 60 A/A verdicts)"
    )
    parser.add_argument("--repeats", type=int, default=3, help="--repeats of every gate and of each separate run")
    parser.add_argument("--epochs", type=int, default=None, help="epochs per job (default: the preset's)")
    parser.add_argument("--preset", default="tutorial000", help="the configuration trained")
    parser.add_argument("--dataset", default="digits", help="its data")
    parser.add_argument("--hidden", default="4096", help="hidden widths (default 4096: a digits epoch of about a tenth of a second)")
    parser.add_argument("--threads", type=int, default=1, help="--threads of every run")
    parser.add_argument("--effects", default="0.02,0.05,0.10,0.20", help="the slowdowns of the quiet A/B conditions")
    parser.add_argument("--neighbours", type=int, default=2, help="processes beside the run in the busy and intermittent conditions")
    parser.add_argument("--time-tol", type=float, default=GATE_TIME_TOL, help=f"the gate's --time-tol (default {GATE_TIME_TOL:g})")
    parser.add_argument("--budget-min", type=float, default=900.0, help="start no verdict after this many minutes")
    parser.add_argument("--base", default=None, help="the revision measured (default: the working tree here)")
    parser.add_argument("--rules", default=",".join(RULES), help="gate, separate, or both (default)")
    parser.add_argument(
        "--directory", type=Path, default=Path("results/gate"), help="where the clone, the verdicts, report.md and gate.png go"
    )
    parser.add_argument("--report-only", action="store_true", help="redraw report.md and gate.png from the verdicts already there")


def run(args: argparse.Namespace) -> int:
    rules = tuple(r.strip() for r in args.rules.split(",") if r.strip())
    if not rules or set(rules) - set(RULES):
        raise FrameBenchError(f"--rules {args.rules}: name gate, separate or both")
    settings = Settings(
        rounds=args.rounds,
        repeats=args.repeats,
        epochs=args.epochs,
        preset=args.preset,
        dataset=args.dataset,
        hidden=args.hidden,
        threads=args.threads,
        effects=tuple(float(v) for v in args.effects.split(",")),
        neighbours=args.neighbours,
        time_tol=args.time_tol,
        budget_s=args.budget_min * 60,
        directory=args.directory.resolve(),
        base=args.base,
        rules=rules,
    )
    if not args.report_only:
        collect(settings)
    print(write_report(settings))
    return 0
