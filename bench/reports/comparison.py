"""compare's decision: two groups of tables (`Group`) in, one typed Verdict (framebench.reports.verdicts)
per key out, with the figures behind it. Nothing is loaded, printed or written here: the command
(framebench.reports.compare) does that, so `framebench compare`, `framebench gate` and the gate study
decide one way.

A gate passes (exit 0) only what it verified. Every key (seed, backend, variant, device, dataset, preset,
sweep value) that ran ok in BASE must run ok in NEW; a seed only one side ran (the other ran the same
point at other seeds) is noted, `not compared`. Time is the ratio of NEW's median steady-state
epoch to BASE's with a 95% interval from a hierarchical bootstrap (framebench.reports.stats), and the
verdict reads the interval against --time-tol:

- REGRESSION: the interval lies above 1 (NEW is slower) and the estimate beyond 1 + tol;
- improved: the mirror image (below 1, estimate under 1 / (1 + tol));
- no change: the whole interval inside [1 / (1 + tol), 1 + tol];
- inconclusive: anything else, with about how many repeats would settle it.

A time verdict is `not verified` instead when either side's jobs shared the CPU with other processes
(other_cpu_frac above BUSY_FRACTION), or when the machine's own speed (its calibration beside each
job) differs between BASE and NEW by at least half the effect (or half the tolerance); with one
repeat on a side the spread between processes is unknown, so the time verdict claims at most
`no change` or `inconclusive`, never a regression. Accuracy, seed by seed, is the difference of medians over repeats
with its interval (a regression: beyond --acc-tol and the interval below 0), or with one repeat
today's tolerance rule. Accuracy is compared only between the same training configuration, and
timings only between nodes with the same machine fingerprint.

`compare_groups` decides two groups of tables, whichever directories they came from, so two
environments inside one results directory compare like two directories, with two differences
(`compare DIR --base-env A --new-env B`, and `framebench gate`): a change of the backend's code
between them is what is measured, never "not comparable"; and where every repeat of a key ran in
lockstep (framebench.driver.lockstep), time is judged from the pairs of adjacent epochs
(stats.paired_ratio: the Hodges-Lehmann estimate of their log-ratios, repeats the outer level of the
bootstrap) against the same band, with no busy or machine-speed guard: both epochs of a pair saw the
same neighbours and the same host state.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from framebench.errors import FrameBenchError
from framebench.reports.epoch_times import paired_log_ratios, slotted_epochs, steady_epochs
from framebench.reports.stats import Interval, difference_of_medians, median_difference, paired_ratio, ratio_of_medians, repeats_to_settle
from framebench.reports.summary import BUSY_FRACTION
from framebench.reports.verdicts import Kind, Verdict, worst
from framebench.store.job import NOT_RUN, replicate_names, series_columns
from framebench.store.metadata import node_records
from framebench.store.reader import latest_attempts

TRAINING = ("model", "train")  # config.json sections that decide what accuracy a run reaches
ONE_REPEAT = "1 repeat: the spread between processes is unknown; use --repeats 3"
TABLE_COLUMNS = ["verdict", "time", "accuracy", "repeats", "note"]
FIGURE_COLUMNS = [
    "epoch_s_base",
    "epoch_s_new",
    "time_ratio",
    "time_low",
    "time_high",
    "acc_base",
    "acc_new",
    "d_acc",
    "d_acc_low",
    "d_acc_high",
    "repeats_base",
    "repeats_new",
    "machine_ratio",
    "busy_base",
    "busy_new",
    "pairs",
]


@dataclass(frozen=True)
class Tolerances:
    acc_tol: float  # largest accepted drop in test accuracy (absolute, e.g. 0.005 = half a point)
    time_tol: float  # largest accepted relative growth of the steady-state epoch time (0.1 = 10%)

    def validate(self) -> None:
        for name in ("acc_tol", "time_tol"):
            if not 0 <= getattr(self, name) < math.inf:
                raise FrameBenchError(f"--{name.replace('_', '-')} must be a finite number >= 0, got {getattr(self, name)}")


@dataclass(frozen=True)
class Group:
    """One side of a comparison: the tables of a results directory, or of one environment inside one."""

    runs: pd.DataFrame  # runs.csv rows (every attempt; the latest of each job counts)
    epochs: pd.DataFrame  # epochs.csv rows of those runs (may be empty: each job then counts by its median_epoch_s)
    machine: dict  # the machine record: the nodes whose fingerprints decide which timings are comparable
    label: str  # how verdicts name this side ("BASE", "NEW", an environment's name)


@dataclass(frozen=True)
class Options:
    tolerances: Tolerances  # --acc-tol and --time-tol
    compare_accuracy: bool  # whether the training configurations allow comparing accuracy
    compare_time: bool  # whether timings are compared at all (not with --accuracy-only)
    any_machine: bool = False  # --allow-machine-diff: timings compared whatever the nodes' fingerprints
    paired: bool = False  # the groups are two environments of one run: where they ran in lockstep, time is judged from epoch pairs
    judge_code_changes: bool = False  # a change of the backend's code between the groups is what is measured (a gate), not refused


def fingerprints(machine: dict) -> dict[str, str]:
    """{node: what makes its timings comparable}: host, CPU, cores, kernel settings and GPUs."""
    return {
        name: json.dumps(
            [
                node.get("machine"),
                node.get("cpu"),
                node.get("cores"),
                node.get("kernel_settings"),
                [g.get("name") for g in node.get("gpus", [])],
            ],
            sort_keys=True,
        )
        for name, node in node_records(machine).items()
    }


def prepared(group: Group, any_machine: bool) -> pd.DataFrame:
    """Latest attempts, each with its node's fingerprint (threads included), whether it is a usable ok,
    its steady-state epoch times (first epoch excluded) and its calibration."""
    runs = latest_attempts(group.runs).copy()
    prints = fingerprints(group.machine)
    runs["fingerprint"] = (
        "any"
        if any_machine
        else [f"{prints.get(node, node)} threads={threads}" for node, threads in zip(runs["node"], runs["threads"], strict=True)]
    )
    runs["usable"] = (runs["status"] == "ok") & runs["final_test_acc"].notna() & runs["median_epoch_s"].notna()
    runs["steady"] = steady_epochs(runs, group.epochs)
    runs["slotted"] = slotted_epochs(runs, group.epochs)
    runs["calibration"] = runs[["calib_before_s", "calib_after_s"]].mean(axis=1)
    return runs


def outcome(rows: pd.DataFrame) -> str:
    """'ok' when every repeat is a usable ok, else the first problem with its error."""
    if rows["usable"].all():
        return "ok"
    bad = rows[~rows["usable"]].iloc[0]
    if bad["status"] == "ok":
        return "ok without accuracy or time"
    return f"{bad['status']}" + (f": {bad['error']}" if bad["error"] else "")


def compare_groups(base: Group, new: Group, options: Options) -> pd.DataFrame:
    """One row per key in either group: the key, a verdict, the rendered time and accuracy effects and
    the figures behind them (FIGURE_COLUMNS)."""
    keys = series_columns()
    b, n = prepared(base, options.any_machine), prepared(new, options.any_machine)
    rows = []
    for key in pd.concat([b[keys], n[keys]]).drop_duplicates().itertuples(index=False):
        in_base, in_new = b[(b[keys] == list(key)).all(axis=1)], n[(n[keys] == list(key)).all(axis=1)]
        one_sided = seed_of_one_side(key._asdict(), (b, n), (in_base, in_new), (base.label, new.label))
        decided = render({"repeats_base": len(in_base), "repeats_new": len(in_new), "verdict": one_sided}) if one_sided else None
        rows.append({**key._asdict(), **(decided or decide(in_base, in_new, options, (base.label, new.label)))})
    return pd.DataFrame(rows, columns=keys + TABLE_COLUMNS + FIGURE_COLUMNS)


def seed_of_one_side(key: dict, sides: tuple[pd.DataFrame, ...], rows: tuple[pd.DataFrame, ...], labels: tuple[str, str]) -> Verdict | None:
    """A key one side lacks while it ran the same point at other seeds: that seed is noted, not compared
    (accuracy is compared seed by seed, and a seed only one side ran has nothing to pair with)."""
    pooled = [c for c in key if c not in replicate_names()]
    (base, new), (in_base, in_new), (base_label, new_label) = sides, rows, labels
    for side, mine, ran_only_in in ((base, in_base, new_label), (new, in_new, base_label)):
        if mine.empty and not side.empty and (side[pooled] == [key[c] for c in pooled]).all(axis=1).any():
            seeds = ", ".join(f"{name} {key[name]}" for name in replicate_names())
            return Verdict(Kind.NOT_COMPARED, note=f"{seeds} ran only in {ran_only_in}")
    return None


def decide(b: pd.DataFrame, n: pd.DataFrame, options: Options, labels: tuple[str, str]) -> dict:
    """The verdict of one key and its figures."""
    base_ok, new_ok = b[b["usable"]], n[n["usable"]]
    figures = {"repeats_base": len(base_ok), "repeats_new": len(new_ok)}
    if absent := presence(b, n, labels):
        return render({**figures, "verdict": absent})
    if not options.judge_code_changes and (changed := code_change(base_ok, new_ok)):
        return render({**figures, "verdict": Verdict(Kind.NOT_COMPARABLE, changed)})
    accuracy = accuracy_effect(base_ok, new_ok, options.tolerances, options.paired)
    figures.update(accuracy)
    timing = time_effect(base_ok, new_ok, options, labels) if options.compare_time else {}
    figures.update(timing)
    time = timing.get("time_verdict")
    regressed = [
        what
        for what, bad in (
            ("accuracy", accuracy["acc_regressed"] and options.compare_accuracy),
            ("time", time is not None and time.kind is Kind.REGRESSION),
        )
        if bad
    ]
    if regressed:
        verdict = Verdict(Kind.REGRESSION, " and ".join(regressed))
    elif time is None:
        verdict = Verdict(Kind.NO_CHANGE, note="accuracy only") if options.compare_accuracy else Verdict(Kind.NOT_VERIFIED)
    elif not options.compare_accuracy and time.kind.verified:
        verdict = Verdict(time.kind, note="time only")
    else:
        verdict = time
    return render({**figures, "verdict": verdict})


def presence(b: pd.DataFrame, n: pd.DataFrame, labels: tuple[str, str]) -> Verdict | None:
    """The verdict of a key that did not run ok on both sides (None when it did)."""
    base_label, new_label = labels
    declined = lambda rows: not rows.empty and rows["status"].isin(NOT_RUN).all()  # noqa: E731
    if n.empty:
        return Verdict(Kind.REGRESSION, f"missing in {new_label}") if not b.empty and not declined(b) else Verdict(Kind.NOT_RUN)
    new_outcome = outcome(n)
    if new_outcome != "ok":
        if declined(n) and (b.empty or declined(b)):
            return Verdict(Kind.NOT_RUN, note=n["status"].iloc[0])
        return Verdict(Kind.REGRESSION, f"{new_label} {new_outcome}")
    if b.empty:
        return Verdict(Kind.NEW)
    if not b["usable"].any():
        return Verdict(Kind.FIXED, note=f"{base_label} {outcome(b)}")
    return None


def code_change(base_ok: pd.DataFrame, new_ok: pd.DataFrame) -> str:
    """How the backend's own code differs between the runs ("" where it is the same): a change there is
    framebench's, not the framework's, and is never reported as the framework's regression."""
    before, after = set(base_ok["implementation"]), set(new_ok["implementation"])
    if before == after:
        return ""
    return f"the {base_ok['backend'].iloc[0]} backend's code changed ({', '.join(sorted(before))} -> {', '.join(sorted(after))})"


def accuracy_effect(base_ok: pd.DataFrame, new_ok: pd.DataFrame, tolerances: Tolerances, paired: bool = False) -> dict:
    """Difference of the median final accuracies with an interval over repeats (>= 2 a side); a drop
    beyond --acc-tol whose interval lies below 0 regresses. With one repeat: the tolerance rule alone.
    `paired` (two environments of one run, every repeat on both sides with the same seed): the median
    of each repeat's difference instead, so equal arithmetic gives exactly 0 whatever the seeds' spread."""
    base, new = (rows.set_index("repeat")[["seed", "final_test_acc"]] for rows in (base_ok, new_ok))
    if paired and set(base.index) == set(new.index) and base["seed"].equals(new.loc[base.index, "seed"]):
        effect = median_difference((new.loc[base.index, "final_test_acc"] - base["final_test_acc"]).to_numpy(float))
    else:
        effect = difference_of_medians(base_ok["final_test_acc"].to_numpy(float), new_ok["final_test_acc"].to_numpy(float))
    one_repeat = min(len(base_ok), len(new_ok)) < 2
    regressed = effect.estimate < -tolerances.acc_tol and (one_repeat or effect.high < 0)
    return {
        "acc_base": base_ok["final_test_acc"].median(),
        "acc_new": new_ok["final_test_acc"].median(),
        "d_acc": effect.estimate,
        "d_acc_low": math.nan if one_repeat else effect.low,
        "d_acc_high": math.nan if one_repeat else effect.high,
        "acc_regressed": regressed,
    }


def time_effect(base_ok: pd.DataFrame, new_ok: pd.DataFrame, options: Options, labels: tuple[str, str]) -> dict:
    """The time verdict on the nodes both sides share (the worst where they share several)."""
    shared = sorted(set(base_ok["fingerprint"]) & set(new_ok["fingerprint"]))
    if not shared:
        return {"time_verdict": Verdict(Kind.NOT_VERIFIED, f"no node of {labels[1]} has the machine fingerprint of {labels[0]}'s")}
    judged = []
    for fingerprint in shared:
        base, new = base_ok[base_ok["fingerprint"] == fingerprint], new_ok[new_ok["fingerprint"] == fingerprint]
        pairs = paired_log_ratios(base, new) if options.paired else None
        tol = options.tolerances.time_tol
        judged.append(paired_time_verdict(base, new, pairs, tol) if pairs else time_verdict(base, new, tol, labels))
    most_severe = worst(j["time_verdict"] for j in judged)
    return next(j for j in judged if j["time_verdict"] is most_severe)


def effect_figures(base_ok: pd.DataFrame, new_ok: pd.DataFrame, effect: Interval) -> dict:
    """What every time verdict reports: both sides' median steady epoch, the effect, how busy each side was."""
    return {
        "epoch_s_base": float(np.median(np.concatenate(list(base_ok["steady"])))),
        "epoch_s_new": float(np.median(np.concatenate(list(new_ok["steady"])))),
        "time_ratio": effect.estimate,
        "time_low": effect.low,
        "time_high": effect.high,
        "busy_base": base_ok["other_cpu_frac"].max(),
        "busy_new": new_ok["other_cpu_frac"].max(),
    }


def time_verdict(base_ok: pd.DataFrame, new_ok: pd.DataFrame, tol: float, labels: tuple[str, str]) -> dict:
    """Ratio of medians with its interval, read against the tolerance band, then held back where the
    machine was busy or ran at another speed."""
    effect = ratio_of_medians(list(base_ok["steady"]), list(new_ok["steady"]))
    repeats = min(len(base_ok), len(new_ok))
    figures = {
        **effect_figures(base_ok, new_ok, effect),
        "machine_ratio": new_ok["calibration"].median() / base_ok["calibration"].median(),
        "one_repeat": repeats < 2,
    }
    return {**figures, "time_verdict": held_back(figures, tol, labels) or band_verdict(effect, tol, repeats)}


def paired_time_verdict(base_ok: pd.DataFrame, new_ok: pd.DataFrame, pairs: list[np.ndarray], tol: float) -> dict:
    """The effect from the lockstep pairs' log-ratios (stats.paired_ratio) read against the tolerance
    band. No guard holds it back: a busy neighbour or a slow host state hits both epochs of a pair."""
    effect = paired_ratio(pairs)
    figures = {
        **effect_figures(base_ok, new_ok, effect),
        "machine_ratio": math.nan,  # both sides ran on the same machine states: nothing to tell apart
        "one_repeat": len(pairs) < 2,
        "pairs": sum(len(p) for p in pairs),
    }
    return {**figures, "time_verdict": band_verdict(effect, tol, len(pairs))}


def band_verdict(effect: Interval, tol: float, repeats: int) -> Verdict:
    """The interval read against [1 / (1 + tol), 1 + tol] (see the module's docstring)."""
    upper, lower = 1 + tol, 1 / (1 + tol)
    if lower <= effect.low and effect.high <= upper:
        return Verdict(Kind.NO_CHANGE)
    if repeats < 2:  # the interval knows only the epochs of one process: too narrow to claim an effect
        return Verdict(Kind.INCONCLUSIVE)
    if effect.low > 1 and effect.estimate > upper:
        return Verdict(Kind.REGRESSION, "time")
    if effect.high < 1 and effect.estimate < lower:
        return Verdict(Kind.IMPROVED)
    bound = upper if effect.estimate > 1 else lower
    needed = repeats_to_settle(effect, repeats, bound)
    return Verdict(Kind.INCONCLUSIVE, f"about {needed} repeats a side would settle it" if needed else "the effect sits on the tolerance")


def held_back(figures: dict, tol: float, labels: tuple[str, str]) -> Verdict | None:
    """Not verified when either side ran busy or the machine's speed differed by at least half the
    effect (or half the tolerance, for an effect smaller than it); None otherwise."""
    for side, label in (("busy_new", labels[1]), ("busy_base", labels[0])):
        if figures[side] > BUSY_FRACTION:
            return Verdict(Kind.NOT_VERIFIED, note=f"busy: {label}'s jobs shared the CPU with other processes, {figures[side]:.0%}")
    speed = figures["machine_ratio"]
    if not math.isnan(speed) and abs(math.log(speed)) >= max(abs(math.log(figures["time_ratio"])), math.log1p(tol)) / 2:
        direction = f"×{speed:.2f} slower" if speed > 1 else f"×{1 / speed:.2f} faster"
        return Verdict(Kind.NOT_VERIFIED, f"the machine ran {direction} during {labels[1]}")
    return None


def render(decided: dict) -> dict:
    """The table's text columns from the figures: `×1.24 [1.19, 1.30]`, `-0.0012 [-0.0030, 0.0004]`."""
    ratio, d_acc = decided.get("time_ratio", math.nan), decided.get("d_acc", math.nan)
    decided["time"] = "" if math.isnan(ratio) else f"×{ratio:.3f} [{decided['time_low']:.3f}, {decided['time_high']:.3f}]"
    decided["accuracy"] = (
        ""
        if math.isnan(d_acc)
        else f"{d_acc:+.4f}" + ("" if math.isnan(decided["d_acc_low"]) else f" [{decided['d_acc_low']:+.4f}, {decided['d_acc_high']:+.4f}]")
    )
    decided["repeats"] = f"{decided['repeats_base']}/{decided['repeats_new']}"
    pairs = decided.get("pairs", math.nan)
    notes = [ONE_REPEAT if decided.get("one_repeat") else "", f"paired: {pairs} epoch pairs in lockstep" if pairs > 0 else ""]
    decided["note"] = "; ".join(filter(None, notes))
    return {name: decided.get(name, math.nan) for name in TABLE_COLUMNS + FIGURE_COLUMNS}


def environment_groups(tables: dict, base_env: str, new_env: str, directory: str | Path) -> list[Group]:
    """BASE and NEW as the two environments of one results directory's tables, their rows keyed alike
    (both environments renamed BASE->NEW) so that compare_groups matches them key by key."""
    groups = []
    for flag, name, label in (("--base-env", base_env, "BASE"), ("--new-env", new_env, "NEW")):
        runs = tables["runs"][tables["runs"]["env"] == name]
        if runs.empty:
            known = ", ".join(sorted(set(tables["runs"]["env"]))) or "none"
            raise FrameBenchError(f"{flag} {name}: {directory} has no runs in that environment (it has: {known})")
        epochs = tables["epochs"][tables["epochs"]["env"] == name]
        both = f"{base_env}->{new_env}"
        groups.append(Group(runs.assign(env=both), epochs.assign(env=both), tables["machine"], label))
    return groups
