"""The epoch times a time comparison reads of each job: its steady state (the first epoch left out),
the epochs it ran in lockstep with their slots, and the log-ratios of two sides' adjacent lockstep
epochs. compare's decision (framebench.reports.comparison) and report.md's side-by-side of
environments (framebench.reports.environments) both read time from here, so both judge the same
samples.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from framebench.store.job import PAIRED, key_columns
from framebench.store.schema import columns


def job_epochs(runs: pd.DataFrame, epochs: pd.DataFrame) -> list[pd.DataFrame]:
    """Per run, its attempt's epochs.csv rows in epoch order (none where the table holds none of it)."""
    join = ["run_id", *key_columns(), "attempt"]
    grouped = dict(iter(epochs.groupby(join, sort=False))) if not epochs.empty else {}
    empty = pd.DataFrame(columns=columns("epochs"))
    return [grouped.get(tuple(key), empty).sort_values("epoch") for key in runs[join].itertuples(index=False)]


def steady_epochs(runs: pd.DataFrame, epochs: pd.DataFrame) -> list[np.ndarray]:
    """Per run, its attempt's epoch times after the first (all of them if it has only one), or its
    median_epoch_s where epochs.csv holds none of it."""
    steady = []
    for rows, median in zip(job_epochs(runs, epochs), runs["median_epoch_s"], strict=True):
        times = rows["epoch_s"].to_numpy(float)
        steady.append(times[1:] if len(times) > 1 else times if len(times) else np.array([median], float))
    return steady


def slotted_epochs(runs: pd.DataFrame, epochs: pd.DataFrame) -> list[dict[int, tuple[float, float]]]:
    """Per run, {epoch: (seconds, slot)} of its steady-state epochs that ran in lockstep (those with a slot)."""
    return [
        {int(r.epoch): (float(r.epoch_s), float(r.slot)) for r in rows.itertuples() if r.epoch > 1 and not math.isnan(r.slot)}
        for rows in job_epochs(runs, epochs)
    ]


def paired_log_ratios(base_ok: pd.DataFrame, new_ok: pd.DataFrame) -> list[np.ndarray] | None:
    """Per repeat, log(NEW / BASE) of the steady-state epochs the two sides ran in adjacent slots of one
    lockstep pair; None unless every repeat on both sides ran paired to its end (then the unpaired rule
    judges the key)."""
    sides = [rows.set_index("repeat") for rows in (base_ok, new_ok)]
    if set(sides[0].index) != set(sides[1].index) or not all((rows["lockstep"] == PAIRED).all() for rows in sides):
        return None
    ratios = []
    for repeat in sorted(sides[0].index):
        base, new = (rows.loc[repeat, "slotted"] for rows in sides)
        adjacent = [e for e in sorted(base.keys() & new.keys()) if abs(base[e][1] - new[e][1]) == 1]
        if not adjacent:
            return None
        ratios.append(np.log([new[e][0] / base[e][0] for e in adjacent]))
    return ratios
