"""GEMM floors and efficiencies, derived from gemm.csv when a results directory is read for a report.

Dividing each GEMM's FLOPs (framebench.core.flops) by the measured time of that shape
(framebench.driver.probe) gives the epoch's floor: `floor_epoch_s` with the fastest library at each
shape, `own_floor_epoch_s` with the backend's own framework; `efficiency` is the floor over the epoch.

The probes run at the start and again at the end of a matrix; each shape keeps its faster time. A
step whose GEMMs take more than PROBE_DISAGREEMENT times as long in one probe as in the other, or a
run that would come out faster than MAX_CREDIBLE_EFFICIENCY of its floor, says the machine was
disturbed while a probe ran: those efficiencies are left empty, with the reason in `floor_note`,
rather than reported wrong."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from framebench.store.reader import load_results

PROBE_DISAGREEMENT = 1.5  # start and end probe of one shape further apart than this: the machine was disturbed
MAX_CREDIBLE_EFFICIENCY = 1.2  # a run this much faster than its GEMM floor means the floor's probe was slowed
FLOOR_COLUMNS = ["floor_epoch_s", "efficiency", "own_floor_epoch_s", "overhead_efficiency", "floor_note"]


def with_efficiencies(runs: pd.DataFrame, gemm: pd.DataFrame) -> pd.DataFrame:
    """`runs` with FLOOR_COLUMNS derived from gemm.csv: each run against its own node's probes for its
    device, precision and sweep value (a bf16 run against bf16 GEMMs). Derived when read, so the end-of-matrix probe counts for every row.

    Each floor keeps, shape by shape, the faster of its probes. A floor whose step time differs
    between the probes by more than PROBE_DISAGREEMENT (judged on the whole step, as the floor uses
    it, not on one microsecond-sized product) leaves its efficiency empty, as does one above
    MAX_CREDIBLE_EFFICIENCY; `floor_note` says why."""
    runs = runs.copy()
    for column in FLOOR_COLUMNS:
        runs[column] = "" if column == "floor_note" else float("nan")
    if runs.empty or gemm.empty:
        return runs
    where = ["node", "device", "precision", "sweep_value"]
    shape = ["kind", "layer"]
    fastest_by_probe = gemm.groupby(where + ["probe"] + shape)["seconds"].min().groupby(where + ["probe"]).sum()
    own_by_probe = gemm.groupby(where + ["library", "probe"])["seconds"].sum()
    best = gemm.groupby(where + ["library"] + shape, as_index=False)["seconds"].min()
    floors = pd.DataFrame(
        {
            "step_s": best.groupby(where + shape)["seconds"].min().groupby(where).sum(),
            "disagreement": fastest_by_probe.groupby(where).max() / fastest_by_probe.groupby(where).min(),
            "probes": fastest_by_probe.groupby(where).size(),
        }
    ).reset_index()
    own = (
        pd.DataFrame(
            {
                "own_step_s": best.groupby(where + ["library"])["seconds"].sum(),
                "own_disagreement": own_by_probe.groupby(where + ["library"]).max() / own_by_probe.groupby(where + ["library"]).min(),
            }
        )
        .reset_index()
        .rename(columns={"library": "gemm_library"})
    )
    merged = runs[where + ["gemm_library"]].merge(floors, on=where, how="left").merge(own, on=where + ["gemm_library"], how="left")
    steps = (runs["samples_per_epoch"] / runs["batch_size"]).to_numpy()
    median = runs["median_epoch_s"].to_numpy()
    runs["floor_epoch_s"] = merged["step_s"].to_numpy() * steps
    runs["own_floor_epoch_s"] = merged["own_step_s"].to_numpy() * steps
    runs["efficiency"] = runs["floor_epoch_s"] / median
    runs["overhead_efficiency"] = runs["own_floor_epoch_s"] / median
    notes = [
        floor_note(*row)
        for row in zip(
            merged["disagreement"],
            merged["own_disagreement"],
            runs["efficiency"],
            runs["overhead_efficiency"],
            merged["probes"],
            strict=True,
        )
    ]
    runs["floor_note"] = notes
    unreliable = runs["floor_note"].str.startswith("unreliable")
    runs.loc[unreliable & ~runs["floor_note"].str.contains("own floor"), "efficiency"] = float("nan")
    runs.loc[unreliable, "overhead_efficiency"] = float("nan")
    return runs


def floor_note(disagreement: float, own_disagreement: float, efficiency: float, overhead_efficiency: float, probes: float) -> str:
    """Why a run's efficiencies are empty, or what to know about its floors ("" when nothing)."""
    if disagreement > PROBE_DISAGREEMENT:
        return f"unreliable: the start and end GEMM probes of the floor disagree by {disagreement:.2f}x (> {PROBE_DISAGREEMENT}x)"
    if max(efficiency, overhead_efficiency) > MAX_CREDIBLE_EFFICIENCY:
        return f"unreliable: efficiency above {MAX_CREDIBLE_EFFICIENCY} (a GEMM probe was slowed)"
    if own_disagreement > PROBE_DISAGREEMENT:
        return f"unreliable own floor: its start and end probes disagree by {own_disagreement:.2f}x (> {PROBE_DISAGREEMENT}x)"
    return "one GEMM probe (no end probe)" if probes == 1 else ""


def unreliable_warnings(runs: pd.DataFrame) -> list[str]:
    """One line per (node, device, sweep value) whose efficiencies were left empty, with the reason."""
    bad = runs[runs["floor_note"].str.startswith("unreliable")]
    return [
        f"{r.node} {r.device}{' ' + r.sweep_field + '=' + r.sweep_value if r.sweep_field else ''}: efficiencies {r.floor_note}"
        for r in bad.drop_duplicates(["node", "device", "sweep_value", "floor_note"]).itertuples()
    ]


def load_with_floors(directory: str | Path) -> dict:
    """A results directory as the reports read it: the store's tables, each run with its floors and efficiencies."""
    tables = load_results(directory)
    tables["runs"] = with_efficiencies(tables["runs"], tables["gemm"])
    return tables
