"""The regression gate's statistics on synthetic tables: known effects, known noise, fixed seeds.

Every table here is made up, so no test depends on how fast this machine is: each asserts what the
gate decides from numbers whose truth the test set.
"""

from __future__ import annotations

import dataclasses
import itertools
import math

import numpy as np
import pandas as pd
import pytest

from framebench.errors import FrameBenchError
from framebench.reports.comparison import ONE_REPEAT, Group, Options, Tolerances, compare_groups
from framebench.reports.stats import SEED, Interval, paired_ratio, ratio_of_medians, repeats_to_settle, walsh_median
from framebench.reports.summary import calibration_warnings
from framebench.reports.verdicts import Kind, Verdict, exit_status, worst
from framebench.studies.gate_report import goals
from framebench.studies.gate_rounds import RULES, Settings, check_same_study
from framebench.studies.slowdown import slower_source
from tests import tables
from tests.conftest import REPO

OPTIONS = Options(Tolerances(acc_tol=0.005, time_tol=0.10), compare_accuracy=True, compare_time=True)
EPOCHS = 8  # per job; the first is excluded from every time


def group(
    label: str,
    seconds: float,
    *,
    repeats: int = 3,
    between: float = 0.01,
    within: float = 0.01,
    seed: int = 0,
    acc: float = 0.95,
    busy: float = 0.01,
    calibration: float = 0.05,
    levels: tuple[float, ...] | None = None,
) -> Group:
    """A group of `repeats` jobs of numpy/default whose epochs take `seconds` times a per-repeat factor
    (spread `between`; or exactly `levels`) times a per-epoch factor (spread `within`), lognormal and seeded."""
    rng = np.random.default_rng(seed)
    runs, epochs = [], []
    for repeat in range(repeats):
        level = seconds * (levels[repeat] if levels else math.exp(rng.normal(0, between)))
        times = level * np.exp(rng.normal(0, within, EPOCHS))
        times[0] *= 3  # a slow first epoch, which must not count
        job = {"run_id": label, "repeat": repeat}
        measured = {"final_test_acc": acc, "other_cpu_frac": busy, "calib_before_s": calibration, "calib_after_s": calibration}
        runs.append(tables.run_row(**job, epoch_s=float(np.median(times[1:])), implementation="abc", **measured))
        epochs += [{**row, "epoch_s": t} for row, t in zip(tables.epoch_rows(**job, epochs=EPOCHS), times, strict=True)]
    return Group(pd.DataFrame(runs), pd.DataFrame(epochs), tables.MACHINE, label)


def decided(base: Group, new: Group, options: Options = OPTIONS) -> pd.Series:
    table = compare_groups(base, new, options)
    assert len(table) == 1
    return table.iloc[0]


def test_a_slowdown_beyond_the_tolerance_is_a_regression_whose_interval_holds_it():
    row = decided(group("BASE", 1.0), group("NEW", 1.3, seed=1))
    assert row["verdict"] == Verdict(Kind.REGRESSION, "time")
    assert 1.1 < row["time_low"] < 1.3 < row["time_high"] < 1.4
    assert row["time"] == f"×{row['time_ratio']:.3f} [{row['time_low']:.3f}, {row['time_high']:.3f}]"


def test_the_first_epoch_is_left_out():
    base, new = group("BASE", 1.0), group("NEW", 1.0, seed=1)
    new.epochs.loc[new.epochs["epoch"] == 1, "epoch_s"] *= 100  # a compile 100x slower changes nothing
    assert decided(base, new)["verdict"] == Verdict(Kind.NO_CHANGE)


def test_an_effect_inside_the_tolerance_is_no_change():
    row = decided(group("BASE", 1.0), group("NEW", 1.03, seed=1))
    assert row["verdict"] == Verdict(Kind.NO_CHANGE) and 1 / 1.1 <= row["time_low"] and row["time_high"] <= 1.1


def test_a_speedup_beyond_the_tolerance_is_an_improvement():
    assert decided(group("BASE", 1.0), group("NEW", 0.7, seed=1))["verdict"] == Verdict(Kind.IMPROVED)


def test_an_interval_across_the_tolerance_is_inconclusive_and_says_how_many_repeats_would_settle_it():
    spread = (0.95, 1.0, 1.05)  # repeats 5% apart: a 2% slowdown's interval reaches past the 10% tolerance
    row = decided(group("BASE", 1.0, levels=spread), group("NEW", 1.02, levels=spread, seed=1))
    assert row["verdict"] == Verdict(Kind.INCONCLUSIVE, "about 6 repeats a side would settle it")
    assert row["time_low"] < 1.1 < row["time_high"]
    settled = decided(group("BASE", 1.0, repeats=6, levels=spread * 2), group("NEW", 1.02, repeats=6, levels=spread * 2, seed=1))
    assert settled["verdict"] == Verdict(Kind.NO_CHANGE)  # the advice holds: 6 repeats of the same spread settle it


def test_the_interval_widens_with_the_spread_between_repeats_not_only_with_epochs():
    """Epochs of one process are not independent: a spread between processes must widen the interval."""
    tight = decided(group("BASE", 1.0, between=0.0), group("NEW", 1.0, between=0.0, seed=1))
    spread = decided(group("BASE", 1.0, between=0.08), group("NEW", 1.0, between=0.08, seed=1))
    assert (spread["time_high"] - spread["time_low"]) > 3 * (tight["time_high"] - tight["time_low"])


def test_one_repeat_is_named_and_never_called_a_regression():
    slower = decided(group("BASE", 1.0, repeats=1), group("NEW", 1.5, repeats=1, seed=1))
    assert slower["verdict"] == Verdict(Kind.INCONCLUSIVE) and slower["note"] == ONE_REPEAT
    same = decided(group("BASE", 1.0, repeats=1), group("NEW", 1.0, repeats=3, seed=1))
    assert same["verdict"] == Verdict(Kind.NO_CHANGE) and same["note"] == ONE_REPEAT


def test_a_busy_new_is_not_verified_whatever_its_time():
    row = decided(group("BASE", 1.0), group("NEW", 1.5, seed=1, busy=0.47))
    assert row["verdict"] == Verdict(Kind.NOT_VERIFIED, note="busy: NEW's jobs shared the CPU with other processes, 47%")
    base_busy = decided(group("BASE", 1.0, busy=0.3), group("NEW", 1.0, seed=1))
    assert base_busy["verdict"] == Verdict(Kind.NOT_VERIFIED, note="busy: BASE's jobs shared the CPU with other processes, 30%")


def test_accuracy_is_judged_even_when_the_machine_was_busy():
    row = decided(group("BASE", 1.0), group("NEW", 1.5, seed=1, busy=0.47, acc=0.93))
    assert row["verdict"] == Verdict(Kind.REGRESSION, "accuracy")


def test_a_machine_running_slower_during_new_is_not_verified():
    row = decided(group("BASE", 1.0), group("NEW", 1.8, seed=1, calibration=0.09))
    assert row["verdict"] == Verdict(Kind.NOT_VERIFIED, "the machine ran ×1.80 slower during NEW")
    assert row["machine_ratio"] == pytest.approx(1.8)


def test_a_small_calibration_difference_does_not_hold_back_a_large_effect():
    assert decided(group("BASE", 1.0), group("NEW", 1.5, seed=1, calibration=0.052))["verdict"] == Verdict(Kind.REGRESSION, "time")


def test_the_groups_labels_name_the_sides():
    row = decided(group("env-a", 1.0), group("env-b", 1.5, seed=1, busy=0.5))
    assert row["verdict"] == Verdict(Kind.NOT_VERIFIED, note="busy: env-b's jobs shared the CPU with other processes, 50%")


def test_accuracy_with_repeats_has_an_interval_and_one_repeat_falls_back_to_the_tolerance():
    row = decided(group("BASE", 1.0, acc=0.95), group("NEW", 1.0, seed=1, acc=0.94))
    assert row["verdict"] == Verdict(Kind.REGRESSION, "accuracy") and row["d_acc"] == pytest.approx(-0.01)
    assert row["accuracy"] == "-0.0100 [-0.0100, -0.0100]"
    single = decided(group("BASE", 1.0, repeats=1, acc=0.95), group("NEW", 1.0, repeats=1, seed=1, acc=0.947))
    assert single["accuracy"] == "-0.0030" and single["verdict"] == Verdict(Kind.NO_CHANGE) and single["note"] == ONE_REPEAT
    beyond = decided(group("BASE", 1.0, repeats=1, acc=0.95), group("NEW", 1.0, repeats=1, seed=1, acc=0.94))
    assert beyond["accuracy"] == "-0.0100" and beyond["verdict"] == Verdict(Kind.REGRESSION, "accuracy")  # beyond the 0.005 tolerance


def test_the_interval_is_the_same_every_time():
    """The bootstrap's draws come from a generator seeded for the gate alone: the same tables give the same
    interval every time (a verdict is reproducible), where another seed would draw another one."""
    rng = np.random.default_rng(7)
    base = [np.exp(rng.normal(0, 0.05, 12)) for _ in range(4)]
    new = [1.1 * np.exp(rng.normal(0, 0.05, 12)) for _ in range(4)]
    first = ratio_of_medians(base, new)
    assert ratio_of_medians(base, new) == first and first.low < first.estimate < first.high
    assert first.estimate == np.median(np.concatenate(new)) / np.median(np.concatenate(base))
    assert ratio_of_medians(base, new, seed=SEED + 1) != first  # the interval is drawn: its seed is what makes it the same


def test_repeats_to_settle_scales_the_interval_by_the_square_root_of_the_repeats():
    interval = Interval(math.exp(0.2), math.exp(0.1), math.exp(0.3))  # half-width 0.1 on the log scale
    assert repeats_to_settle(interval, 3, math.exp(0.15)) == 12  # 3 * (0.1 / 0.05) ** 2
    assert repeats_to_settle(interval, 3, math.exp(0.199)) is None  # the estimate sits on the bound


def test_a_slower_revision_adds_work_to_the_numpy_backend_and_changes_nothing_else():
    source = (REPO / "impls" / "numpy_impl.py").read_text()
    slower = slower_source(source, 0.05)
    assert slower.startswith(source.rstrip("\n")) and "busy_work(0.05 * (time.perf_counter() - started))" in slower
    namespace: dict = {}
    exec(compile(slower, "numpy_impl.py", "exec"), namespace)  # the patched module is valid Python that rebinds train_epoch
    assert namespace["NumpyClassifier"].train_epoch is namespace["_slower_train_epoch"]
    with pytest.raises(FrameBenchError, match="not a share"):
        slower_source(source, 0.0)


def test_a_job_whose_machine_changed_speed_is_flagged():
    runs = group("r", 1.0, repeats=6).runs
    runs.loc[2, "calib_after_s"] = 0.09  # slower after than before: the machine changed speed during the job
    runs.loc[5, ["calib_before_s", "calib_after_s"]] = 0.1  # steady, but twice the run's usual
    warnings = calibration_warnings(runs)
    assert len(warnings) == 2
    assert "repeat 3 (box): the machine changed speed during it (calibration 0.05 s before, 0.09 s after)" in warnings[0]
    assert "repeat 6 (box): the machine ran ×2.00 the run's usual calibration time" in warnings[1]


def test_a_verdict_is_a_value_whose_kind_decides_the_exit_status_and_whose_text_is_made_at_the_edge():
    busy = Verdict(Kind.NOT_VERIFIED, note="busy: NEW's jobs shared the CPU with other processes, 47%")
    slower = Verdict(Kind.REGRESSION, "time")
    assert str(busy) == "not verified (busy: NEW's jobs shared the CPU with other processes, 47%)" and str(slower) == "REGRESSION: time"
    assert worst([Verdict(Kind.NO_CHANGE), busy, slower]) is slower and worst([Verdict(Kind.IMPROVED), busy]) is busy
    assert exit_status([Kind.NO_CHANGE, Kind.NEW]) == 0
    assert exit_status([Kind.NO_CHANGE, Kind.INCONCLUSIVE]) == 2
    assert exit_status([Kind.INCONCLUSIVE, Kind.REGRESSION, Kind.NOT_VERIFIED]) == 1
    assert busy.to_json() == {"kind": "NOT_VERIFIED", "reason": "", "note": busy.note, "text": str(busy)}


PAIRED_OPTIONS = dataclasses.replace(OPTIONS, paired=True, judge_code_changes=True)  # as `compare DIR --base-env --new-env` decides


def machine(position: float, step: float) -> float:
    """The machine's slowness at a point of the run (0 = its start, 1 = its end): `step` times slower
    from the middle on, a change of host state no process here sees."""
    return step if position >= 0.5 else 1.0


def lockstep_groups(effect: float, *, step: float = 1.0, repeats: int = 3, noise: float = 0.01, seed: int = 0, busy: float = 0.0):
    """BASE and NEW of one lockstep run as the driver writes them: per repeat, their epochs taking turns
    in ABBA order (slots 0, 1, 2, ...), each epoch `effect` (NEW) or 1 (BASE) second times the
    machine's slowness when it ran, times lognormal noise."""
    rng = np.random.default_rng(seed)
    turns = EPOCHS * 2
    sides = {"BASE": ([], []), "NEW": ([], [])}
    for repeat in range(repeats):
        order = [("BASE", "NEW")[side if repeat % 2 == 0 else 1 - side] for side in itertools.islice(itertools.cycle((0, 1, 1, 0)), turns)]
        epoch_of = {"BASE": 0, "NEW": 0}
        for slot, label in enumerate(order):
            epoch_of[label] += 1
            position = (repeat * turns + slot) / (repeats * turns)
            seconds = (effect if label == "NEW" else 1.0) * machine(position, step) * math.exp(rng.normal(0, noise))
            (row,) = tables.epoch_rows(run_id="lockstep", env="both", repeat=repeat, epochs=1)
            sides[label][1].append(row | {"epoch": epoch_of[label], "epoch_s": seconds, "slot": slot})
        for label in sides:
            times = [e["epoch_s"] for e in sides[label][1] if e["repeat"] == repeat]
            measured = {"implementation": label, "final_test_acc": 0.95, "other_cpu_frac": busy, "lockstep": "paired"}
            job = {"run_id": "lockstep", "env": "both", "repeat": repeat}
            sides[label][0].append(tables.run_row(**job, epoch_s=float(np.median(times[1:])), **measured))
    return [Group(pd.DataFrame(runs), pd.DataFrame(epochs), tables.MACHINE, label) for label, (runs, epochs) in sides.items()]


def separate_runs(effect: float, *, step: float, repeats: int = 3, seed: int = 0) -> list[Group]:
    """The same machine measured today's way: BASE's whole run in the first half of the time, NEW's in
    the second (`step` times slower), each a group of `repeats` jobs; the calibration beside each job
    reads the same on both sides, as it did in the field."""
    base, new = lockstep_groups(1.0, repeats=repeats, seed=seed), lockstep_groups(effect, repeats=repeats, seed=seed + 1)
    new_epochs = new[1].epochs.assign(epoch_s=new[1].epochs["epoch_s"] * step)
    for group in (base[0], new[1]):
        group.runs["lockstep"] = ""
        group.runs["implementation"] = "same"  # an A/A: one code
        group.runs[["calib_before_s", "calib_after_s"]] = 0.0025  # the calibration beside each job did not see the host's state
    return [
        Group(base[0].runs, base[0].epochs.assign(slot=np.nan), tables.MACHINE, "BASE"),
        Group(new[1].runs, new_epochs.assign(slot=np.nan), tables.MACHINE, "NEW"),
    ]


@pytest.mark.parametrize("effect, kind", [(1.0, Kind.NO_CHANGE), (1.2, Kind.REGRESSION), (0.8, Kind.IMPROVED)])
def test_a_machine_speed_step_mid_run_leaves_the_paired_verdict_alone(effect, kind):
    steady, stepped = (decided(*lockstep_groups(effect, step=step), PAIRED_OPTIONS) for step in (1.0, 1.4))
    assert steady["verdict"].kind is kind and stepped["verdict"].kind is kind
    assert stepped["time_ratio"] == pytest.approx(effect, rel=0.01) and stepped["time_low"] < effect < stepped["time_high"]
    assert stepped["pairs"] == 3 * (EPOCHS - 1) and stepped["note"] == f"paired: {3 * (EPOCHS - 1)} epoch pairs in lockstep"


def test_the_same_step_between_two_separate_runs_fools_the_unpaired_rule():
    row = decided(*separate_runs(1.0, step=1.4))  # identical code, NEW measured after the host slowed down
    assert row["verdict"] == Verdict(Kind.REGRESSION, "time") and row["time_ratio"] == pytest.approx(1.4, rel=0.02)
    assert math.isnan(row["pairs"])


def test_a_busy_machine_does_not_hold_back_a_paired_verdict():
    row = decided(*lockstep_groups(1.2, busy=0.5), PAIRED_OPTIONS)
    assert row["verdict"] == Verdict(Kind.REGRESSION, "time") and row["busy_new"] == 0.5


def test_a_key_not_paired_in_every_repeat_falls_back_to_the_unpaired_rule():
    base, new = lockstep_groups(1.0)
    new.runs.loc[new.runs["repeat"] == 1, "lockstep"] = "alone from epoch 3: its partner (env=base) ended failed"
    row = decided(base, new, PAIRED_OPTIONS)
    assert math.isnan(row["pairs"]) and row["verdict"].kind is Kind.NO_CHANGE


def test_only_epochs_in_adjacent_slots_pair():
    base, new = lockstep_groups(1.0, repeats=2)
    new.epochs.loc[new.epochs["epoch"] == 5, "slot"] += 10  # its partner ran long before it: no pair
    assert decided(base, new, PAIRED_OPTIONS)["pairs"] == 2 * (EPOCHS - 2)


def test_a_code_change_is_what_a_gate_measures_and_what_compare_between_directories_refuses():
    base, new = lockstep_groups(1.0)  # the backend's implementation hash differs: BASE -> NEW
    assert decided(base, new, OPTIONS)["verdict"] == Verdict(Kind.NOT_COMPARABLE, "the numpy backend's code changed (BASE -> NEW)")
    assert decided(base, new, PAIRED_OPTIONS)["verdict"] == Verdict(Kind.NO_CHANGE)


def test_the_hodges_lehmann_estimate_cancels_a_drift_that_alternates_with_the_order_and_shrugs_off_an_outlier():
    effect, drift = math.log(1.05), 0.04
    values = np.array([effect + drift * (-1) ** i for i in range(8)])
    assert walsh_median(values) == pytest.approx(effect)
    values[3] += math.log(3)  # one epoch hit by a neighbour
    assert abs(walsh_median(values) - effect) < 0.2 * (np.mean(values) - effect)
    interval = paired_ratio([values, values + 0.01])
    assert interval.low <= 1.05 <= interval.high and interval == paired_ratio([values, values + 0.01])


def verdicts(condition: str, rule: str, kinds: list[Kind], wall_s: float = 30.0) -> list[dict]:
    return [{"condition": condition, "rule": rule, "kind": kind, "regression": kind is Kind.REGRESSION, "wall_s": wall_s} for kind in kinds]


def test_the_study_reads_each_goal_against_its_exact_bound_and_says_the_distance():
    rows = verdicts("A/A quiet", "gate", [Kind.NO_CHANGE] * 59 + [Kind.INCONCLUSIVE])
    rows += verdicts("A/A busy", "gate", [Kind.NO_CHANGE] * 20)
    rows += verdicts("+5%", "gate", [Kind.REGRESSION] * 17 + [Kind.INCONCLUSIVE] * 3)
    rows += verdicts("A/A quiet", "separate", [Kind.NOT_VERIFIED] * 60, wall_s=40.0)
    lines = goals(pd.DataFrame(rows))
    assert lines[0] == "- A/A quiet, REGRESSION <= 5% (one-sided 95% upper bound): 0/60 (0%; 95% CI 0%-6%): met"
    assert lines[1].endswith("not met: the bound is 13.9%; 20 verdicts are too few to bound it at 5% (59 clean ones would)")
    assert lines[2] == "- A/A quiet, not verified + inconclusive <= 10%: 1/60 (2%; 95% CI 0%-9%): met"
    assert lines[3] == "- power at +5% >= 90%: 17/20 (85%; 95% CI 62%-97%): not met by 5%"
    assert lines[4].endswith("gate 30 s, separate 40 s (medians): met")


def test_a_study_directory_measures_one_revision_one_way(tmp_path):
    settings = Settings(3, 3, None, "tutorial000", "digits", "4096", 1, (0.05,), 2, 0.03, 60.0, tmp_path, None, RULES)
    check_same_study(settings, "abc")
    check_same_study(dataclasses.replace(settings, rounds=60, time_tol=0.05), "abc")  # more rounds, another reading: the same study
    with pytest.raises(FrameBenchError, match="holds a study with another base, repeats; pass another --directory"):
        check_same_study(dataclasses.replace(settings, repeats=5), "def")
