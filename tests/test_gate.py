"""The regression gate's statistics on synthetic tables: known effects, known noise, fixed seeds.

Every table here is made up, so no test depends on how fast this machine is: each asserts what the
gate decides from numbers whose truth the test set.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from framebench.errors import FrameBenchError
from framebench.reports.compare import ONE_REPEAT, Group, Options, Tolerances, compare_groups
from framebench.reports.stats import Interval, ratio_of_medians, repeats_to_settle
from framebench.reports.verdicts import Kind, Verdict, exit_status, worst
from framebench.store.job import DIMENSIONS, columns
from framebench.store.tables import calibration_warnings
from framebench.studies.slowdown import slowdown_share

NODE = {"machine": "box", "cpu": "Some CPU", "cores": 2, "kernel_settings": {}, "gpus": []}
ENV = {"nodes": {"box": NODE}}
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
        keys = {d.name: d.default for d in DIMENSIONS} | {"run_id": label, "backend": "numpy", "dataset": "digits", "preset": "mlp"}
        keys |= {"sweep_field": "", "sweep_value": "", "repeat": repeat, "seed": "0", "attempt": 1}
        row = dict.fromkeys(columns("runs"), np.nan) | keys
        row |= {"node": "box", "host": "box", "status": "ok", "error": "", "threads": 2, "implementation": "abc"}
        row |= {"median_epoch_s": float(np.median(times[1:])), "final_test_acc": acc, "other_cpu_frac": busy}
        row |= {"calib_before_s": calibration, "calib_after_s": calibration}
        runs.append(row)
        epochs += [dict.fromkeys(columns("epochs"), np.nan) | keys | {"epoch": e + 1, "epoch_s": t} for e, t in enumerate(times)]
    return Group(pd.DataFrame(runs), pd.DataFrame(epochs), ENV, label)


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
    assert single["accuracy"] == "-0.0030" and single["verdict"].kind is not Kind.REGRESSION


def test_the_interval_is_the_same_every_time():
    base = [np.array([1.0, 1.1, 0.9]), np.array([1.2, 1.0])]
    new = [np.array([1.3, 1.2]), np.array([1.1, 1.25, 1.4])]
    assert ratio_of_medians(base, new) == ratio_of_medians(base, new)


def test_repeats_to_settle_scales_the_interval_by_the_square_root_of_the_repeats():
    interval = Interval(math.exp(0.2), math.exp(0.1), math.exp(0.3))  # half-width 0.1 on the log scale
    assert repeats_to_settle(interval, 3, math.exp(0.15)) == 12  # 3 * (0.1 / 0.05) ** 2
    assert repeats_to_settle(interval, 3, math.exp(0.199)) is None  # the estimate sits on the bound


@pytest.mark.parametrize("text, share", [("", 0.0), ("0.1", 0.1), ("0", 0.0)])
def test_the_slowdown_share_comes_from_the_environment(monkeypatch, text, share):
    monkeypatch.setenv("FRAMEBENCH_SLOWDOWN", text)
    assert slowdown_share() == share


@pytest.mark.parametrize("text", ["ten", "-0.1", "nan"])
def test_a_bad_slowdown_share_is_one_clear_error(monkeypatch, text):
    monkeypatch.setenv("FRAMEBENCH_SLOWDOWN", text)
    with pytest.raises(FrameBenchError, match="FRAMEBENCH_SLOWDOWN"):
        slowdown_share()


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
