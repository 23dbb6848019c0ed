"""Step changes in a series of per-run medians, found by a penalised change-point method.

Method: PELT (ruptures.Pelt) over the series in run order, with the L1 cost model ("l1": a segment
costs the sum of absolute deviations from its median) and min_size=2 (a level is at least two runs).
Under that cost a single outlier costs about the same inside a segment as in a segment of its own
with a neighbour, so it never pays for a breakpoint: a change needs two runs on each side. The
penalty per breakpoint is PENALTY * sigma * ln(n): n runs, sigma the series' noise scale, the largest
of (a) the robust spread of run-to-run differences (MAD of the first differences, scaled to a normal
standard deviation, over sqrt(2)), (b) the median half-range of each run's repeats (a step inside the
repeats' own spread is not claimed) and (c) the metric's floor. Times are judged on log seconds
(steps are relative), accuracies as they are.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
import ruptures
from scipy.stats import bootstrap, median_abs_deviation

PENALTY = 4.0  # per breakpoint, times sigma * ln(n): no false step in 200 simulated 3%-noise series, a 15% step found in most
CONFIDENCE = 0.95  # of the interval on a change's effect


@dataclass(frozen=True)
class Metric:
    column: str  # per-run median column of the history's runs table
    low: str  # column of the smallest repeat in the run
    high: str  # column of the largest repeat in the run
    label: str  # how it is named on a page
    unit: str  # appended to a value when printed
    log: bool  # detect on log values: steps are relative
    floor: float  # smallest noise scale assumed (log units when `log`)
    worse: int  # +1 when a rise is a regression (time), -1 when a fall is (accuracy)


TIME = Metric("epoch_s", "epoch_s_min", "epoch_s_max", "epoch time", " s", True, 0.01, +1)
ACCURACY = Metric("acc", "acc_min", "acc_max", "test accuracy", "", False, 0.001, -1)
METRICS = (TIME, ACCURACY)


@dataclass(frozen=True)
class Change:
    metric: Metric  # what changed
    index: int  # position in the series of the first run after the step
    before: float  # median of the per-run values since the previous change
    after: float  # median of the per-run values until the next change
    effect: float  # after / before for a log metric, after - before otherwise
    low: float  # lower end of the CONFIDENCE bootstrap interval of `effect`
    high: float  # upper end of it

    @property
    def regression(self) -> bool:
        neutral = 1.0 if self.metric.log else 0.0
        return (self.effect - neutral) * self.metric.worse > 0


def noise_scale(x: np.ndarray, half_ranges: np.ndarray, floor: float) -> float:
    differences = median_abs_deviation(np.diff(x), scale="normal") / math.sqrt(2) if len(x) > 2 else 0.0
    spread = float(np.nanmedian(half_ranges)) if np.isfinite(half_ranges).any() else 0.0
    return max(differences, spread, floor)


def breakpoints(values: np.ndarray, lows: np.ndarray, highs: np.ndarray, metric: Metric) -> list[int]:
    """Indices of the first run of each new level (see the module's docstring for the method)."""
    if len(values) < 4:
        return []
    transform = np.log if metric.log else np.asarray
    x = transform(values)
    sigma = noise_scale(x, (transform(highs) - transform(lows)) / 2, metric.floor)
    model = ruptures.Pelt(model="l1", min_size=2, jump=1).fit(x.reshape(-1, 1))
    return model.predict(pen=PENALTY * sigma * math.log(len(x)))[:-1]


def effect_interval(before: np.ndarray, after: np.ndarray, metric: Metric) -> tuple[float, float]:
    """Percentile bootstrap (scipy) over the runs on each side of the step."""

    def effect(b, a, axis):
        return np.median(a, axis=axis) / np.median(b, axis=axis) if metric.log else np.median(a, axis=axis) - np.median(b, axis=axis)

    result = bootstrap((before, after), effect, confidence_level=CONFIDENCE, method="percentile", n_resamples=2000, rng=0)
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def detect(series: pd.DataFrame, metric: Metric) -> list[Change]:
    """The changes in one series (its runs in order, one row each)."""
    values = series[metric.column].to_numpy(float)
    cuts = breakpoints(values, series[metric.low].to_numpy(float), series[metric.high].to_numpy(float), metric)
    edges = [0, *cuts, len(values)]
    changes = []
    for start, cut, end in zip(edges, edges[1:], edges[2:], strict=False):
        before, after = values[start:cut], values[cut:end]
        b, a = float(np.median(before)), float(np.median(after))
        low, high = effect_interval(before, after, metric)
        changes.append(Change(metric, cut, b, a, a / b if metric.log else a - b, low, high))
    return changes


@dataclass(frozen=True)
class Found:
    series: pd.DataFrame  # the series' runs, in order
    change: Change  # what changed, at series.iloc[change.index]
    latest: bool  # the last change of this metric in its series (what the series is like now)

    @property
    def first_after(self) -> pd.Series:
        return self.series.iloc[self.change.index]

    @property
    def last_before(self) -> pd.Series:
        return self.series.iloc[self.change.index - 1]


def all_changes(runs: pd.DataFrame) -> list[Found]:
    """Every change of every series, newest first."""
    found = []
    for _, series in runs.groupby("series", sort=False):
        series = series.reset_index(drop=True)
        for metric in METRICS:
            changes = detect(series, metric)
            found += [Found(series, change, i == len(changes) - 1) for i, change in enumerate(changes)]
    return sorted(found, key=lambda f: f.first_after["run_time"], reverse=True)
