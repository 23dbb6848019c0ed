"""Reduced precision against fp32, backend by backend: how much faster its epoch got, how much of its
own GEMMs' speed-up reached the epoch, where the rest went, and what it cost in accuracy.

Derived from the summary table (each job's latest attempt, ok runs, medians over repeats), so it is
rewritten with every report. A run's GEMM floor is its own library's products at the run's
precision (framebench.driver.probe, framebench.reports.floors), so a bf16 epoch is measured against bf16 GEMMs.
"""

from __future__ import annotations

import pandas as pd

from framebench.reports.markdown import to_markdown
from framebench.reports.summary import summary

BASELINE = "fp32"
COLUMNS = [
    "precision",
    "epoch_s",
    "fp32_epoch_s",
    "speedup",
    "gemm_speedup",
    "share_of_gemm_saving",
    "other_change_s",
    "overhead_efficiency",
    "fp32_overhead_efficiency",
    "test_acc",
    "acc_diff",
]


def precision_table(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per (series, precision other than fp32) that has an fp32 twin: `speedup` is fp32's
    epoch over this one's; `gemm_speedup` the same for the backend's own GEMM floor; of the time those
    GEMMs saved, `share_of_gemm_saving` reached the epoch; `other_change_s` is how the rest of the
    epoch (everything but the products: casts, elementwise work, the optimiser, the framework) changed;
    `acc_diff` is the final test accuracy's difference from fp32's."""
    table = summary(runs)
    if "precision" not in table or BASELINE not in set(table["precision"]) or table["precision"].nunique() < 2:
        return pd.DataFrame(columns=COLUMNS)
    swept_precision = "sweep_field" in table and (table["sweep_field"] == "precision").all()
    keys = [c for c in table.columns[: table.columns.get_loc("runs_ok")] if c != "precision"]
    if swept_precision:  # the sweep value is the precision itself: it does not tell the series apart
        keys = [c for c in keys if c not in ("sweep_field", "sweep_value")]
    measured = ["median_epoch_s", "own_floor_epoch_s", "overhead_efficiency", "test_acc"]
    fp32 = table[table["precision"] == BASELINE][keys + measured]
    merged = table[table["precision"] != BASELINE].merge(fp32, on=keys, suffixes=("", "_fp32"))
    gemm_saving = merged["own_floor_epoch_s_fp32"] - merged["own_floor_epoch_s"]
    epoch_saving = merged["median_epoch_s_fp32"] - merged["median_epoch_s"]
    result = pd.DataFrame(
        {
            **{key: merged[key] for key in keys},
            "precision": merged["precision"],
            "epoch_s": merged["median_epoch_s"],
            "fp32_epoch_s": merged["median_epoch_s_fp32"],
            "speedup": merged["median_epoch_s_fp32"] / merged["median_epoch_s"],
            "gemm_speedup": merged["own_floor_epoch_s_fp32"] / merged["own_floor_epoch_s"],
            "share_of_gemm_saving": epoch_saving / gemm_saving.where(gemm_saving > 0),
            "other_change_s": (merged["median_epoch_s"] - merged["own_floor_epoch_s"])
            - (merged["median_epoch_s_fp32"] - merged["own_floor_epoch_s_fp32"]),
            "overhead_efficiency": merged["overhead_efficiency"],
            "fp32_overhead_efficiency": merged["overhead_efficiency_fp32"],
            "test_acc": merged["test_acc"],
            "acc_diff": merged["test_acc"] - merged["test_acc_fp32"],
        }
    )
    return result[keys + COLUMNS]


def report_section(runs: pd.DataFrame) -> list[str]:
    """report.md lines comparing each precision with fp32 (none when the runs hold one precision)."""
    table = precision_table(runs)
    if table.empty:
        return []
    return [
        "## Precision against fp32",
        "",
        "`speedup`: fp32's steady-state epoch over this precision's; `gemm_speedup`: the same for the backend's own GEMM "
        "floor (its library's products at each precision, at the model's shapes); `share_of_gemm_saving`: the epoch time "
        "saved over the GEMM time saved (empty where the GEMMs got no faster); `other_change_s`: how the epoch's time "
        "outside the products changed (casts, elementwise work, optimiser, framework); `overhead_efficiency`: own floor "
        "over epoch at each precision; `acc_diff`: final test accuracy minus fp32's.",
        "",
        to_markdown(table),
    ]
