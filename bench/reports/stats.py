"""The statistics of a regression gate: how much slower NEW is than BASE, with an interval that
honours how the data were taken.

Epochs of one process are not independent (they share its placement, its allocator, the machine's
state while it ran); repeats, each its own process, are. The interval therefore comes from a
hierarchical bootstrap: resample the repeats, then the steady-state epochs within each resampled
repeat, and take the ratio of the two groups' medians. Everything is vectorised and seeded, so a
comparison gives the same numbers every time it is run.

Where BASE and NEW ran in lockstep (framebench.driver.lockstep), each NEW epoch has a BASE epoch run
just before or after it on the same machine state: the effect is then read from the log-ratios of
those pairs (`paired_ratio`), the repeats still the outer level of the bootstrap, and a change of the
machine's speed between repeats, or within one, divides out of every pair.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

RESAMPLES = 4000  # bootstrap resamples: enough for stable 2.5% and 97.5% percentiles
SEED = 20_21  # every bootstrap draws from this seed: the same tables give the same interval
CONFIDENCE = 0.95  # of every interval
MAX_REPEATS_ADVISED = 30  # beyond this, "more repeats" is no advice: the effect sits on the tolerance
WALSH_PAIRS = 1_000  # Walsh averages per bootstrap draw of the paired estimate, at most (all of them up to 44 pairs)


@dataclass(frozen=True)
class Interval:
    estimate: float  # the point estimate (a ratio of medians, or a difference)
    low: float  # lower end of the CONFIDENCE interval
    high: float  # upper end


def padded(repeats: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(values as a repeats x longest matrix padded with NaN, each repeat's count)."""
    counts = np.array([len(r) for r in repeats])
    matrix = np.full((len(repeats), counts.max()), np.nan)
    for row, values in enumerate(repeats):
        matrix[row, : len(values)] = values
    return matrix, counts


def hierarchical_medians(repeats: list[np.ndarray], rng: np.random.Generator, resamples: int = RESAMPLES) -> np.ndarray:
    """`resamples` bootstrap medians: repeats drawn with replacement, then each drawn repeat's own
    values drawn with replacement as many times as it has values; the median pools them all."""
    matrix, counts = padded(repeats)
    chosen = rng.integers(0, len(repeats), size=(resamples, len(repeats)))
    chosen_counts = counts[chosen]
    width = matrix.shape[1]
    positions = np.floor(rng.random((resamples, len(repeats), width)) * chosen_counts[..., None]).astype(int)
    values = matrix[chosen[..., None], positions]
    values[np.arange(width) >= chosen_counts[..., None]] = np.nan  # a shorter repeat contributes only its own count
    return np.nanmedian(values.reshape(resamples, -1), axis=1)


def pooled_median(repeats: list[np.ndarray]) -> float:
    return float(np.median(np.concatenate(repeats)))


def ratio_of_medians(base: list[np.ndarray], new: list[np.ndarray], seed: int = SEED) -> Interval:
    """NEW's median over BASE's, each group a list of repeats (arrays of steady-state epoch seconds)."""
    rng = np.random.default_rng(seed)
    ratios = hierarchical_medians(new, rng) / hierarchical_medians(base, rng)
    tail = (1 - CONFIDENCE) / 2 * 100
    low, high = np.percentile(ratios, [tail, 100 - tail])
    return Interval(pooled_median(new) / pooled_median(base), float(low), float(high))


def walsh_median(values: np.ndarray, most: int | None = None, rng: np.random.Generator | None = None) -> np.ndarray:
    """The Hodges-Lehmann estimate along the last axis: the median of the Walsh averages (x_i + x_j) / 2,
    i <= j, of each row (NaN values left out); with `most`, of at most that many of them, drawn by
    `rng` (the same for every row). Robust (a quarter of the values may be wild), for symmetric noise
    nearly as precise as the mean, and it cancels what adds to some values what it takes from
    others, as a drift does to the two orders of ABBA's pairs."""
    first, second = np.triu_indices(values.shape[-1])
    if most is not None and len(first) > most:
        kept = rng.choice(len(first), size=most, replace=False)
        first, second = first[kept], second[kept]
    return np.nanmedian((values[..., first] + values[..., second]) / 2, axis=-1)


def paired_ratio(repeats: list[np.ndarray], seed: int = SEED) -> Interval:
    """NEW's time over BASE's from paired epochs: `repeats` holds, per repeat (a pair of processes), the
    log-ratios log(NEW / BASE) of its adjacent epoch pairs. The estimate is exp of their Hodges-Lehmann
    estimate (walsh_median); the interval comes from a hierarchical bootstrap, repeats drawn with
    replacement, then each drawn repeat's pairs (the repeats are the independent units: a process's
    placement is shared by all its epochs), each draw's estimate taken over at most WALSH_PAIRS
    Walsh averages so that long runs stay fast."""
    rng = np.random.default_rng(seed)
    matrix, counts = padded(repeats)
    chosen = rng.integers(0, len(repeats), size=(RESAMPLES, len(repeats)))
    chosen_counts = counts[chosen]
    width = matrix.shape[1]
    positions = np.floor(rng.random((RESAMPLES, len(repeats), width)) * chosen_counts[..., None]).astype(int)
    values = matrix[chosen[..., None], positions]
    values[np.arange(width) >= chosen_counts[..., None]] = np.nan
    draws = walsh_median(values.reshape(RESAMPLES, -1), WALSH_PAIRS, rng)
    tail = (1 - CONFIDENCE) / 2 * 100
    low, high = np.percentile(draws, [tail, 100 - tail])
    estimate = walsh_median(np.concatenate(repeats))
    return Interval(float(np.exp(estimate)), float(np.exp(low)), float(np.exp(high)))


def difference_of_medians(base: np.ndarray, new: np.ndarray, seed: int = SEED) -> Interval:
    """NEW's median minus BASE's, one value per repeat (e.g. final test accuracy), repeats resampled."""
    rng = np.random.default_rng(seed)
    draws = lambda values: np.median(values[rng.integers(0, len(values), size=(RESAMPLES, len(values)))], axis=1)  # noqa: E731
    differences = draws(np.asarray(new, float)) - draws(np.asarray(base, float))
    tail = (1 - CONFIDENCE) / 2 * 100
    low, high = np.percentile(differences, [tail, 100 - tail])
    return Interval(float(np.median(new) - np.median(base)), float(low), float(high))


def median_difference(differences: np.ndarray, seed: int = SEED) -> Interval:
    """The median of paired differences (one per repeat: NEW's minus BASE's from the same seed), the
    repeats resampled for its interval."""
    rng = np.random.default_rng(seed)
    draws = np.median(differences[rng.integers(0, len(differences), size=(RESAMPLES, len(differences)))], axis=1)
    tail = (1 - CONFIDENCE) / 2 * 100
    low, high = np.percentile(draws, [tail, 100 - tail])
    return Interval(float(np.median(differences)), float(low), float(high))


def repeats_to_settle(interval: Interval, repeats: int, bound: float) -> int | None:
    """About how many repeats per side would shrink the interval (on the log scale, width ~ 1/sqrt(repeats))
    until it no longer contains `bound`; None when the estimate sits so near the bound that no
    practical number would (more than MAX_REPEATS_ADVISED)."""
    half_width = (math.log(interval.high) - math.log(interval.low)) / 2
    distance = abs(math.log(interval.estimate) - math.log(bound))
    if distance == 0:
        return None
    needed = math.ceil(repeats * (half_width / distance) ** 2)
    return needed if needed <= MAX_REPEATS_ADVISED else None
