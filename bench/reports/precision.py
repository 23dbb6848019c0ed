"""Reduced precision against fp32, backend by backend: how much faster its epoch got, how much of its
own GEMMs' speed-up reached the epoch, where the rest went, and what it cost in accuracy.

Derived from the summary table (each job's latest attempt, ok runs, medians over repeats), so it is
rewritten with every report. A run's GEMM floor is its own library's products at the run's
precision (framebench.core.gemm), so a bf16 epoch is measured against bf16 GEMMs.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

from framebench.reports.plots import save_figure
from framebench.store.tables import not_run, summary, to_markdown

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


def findings(table: pd.DataFrame, study: str) -> list[str]:
    """One generated sentence per row: the epoch's speed-up, the GEMMs', and where the difference went."""
    lines = []
    for row in table.itertuples():
        share = "" if pd.isna(row.share_of_gemm_saving) else f"; {row.share_of_gemm_saving:.0%} of the GEMM time saved reached the epoch"
        lines.append(
            f"- {study}, {row.backend}/{row.variant} {row.precision}: epoch {row.speedup:.2f}x fp32's, its own GEMMs "
            f"{row.gemm_speedup:.2f}x{share}; the rest of the epoch changed by {row.other_change_s:+.3f} s; "
            f"accuracy {row.acc_diff:+.4f}; {verdict(row.speedup, row.gemm_speedup, row.share_of_gemm_saving)}"
        )
    return lines


WELL_USED_SHARE = 0.7  # the share of its GEMMs' saving a bf16 epoch should keep (the rest is overhead the framework added)


def verdict(speedup: float, gemm_speedup: float, share: float = float("nan")) -> str:
    """Whether faster 16-bit GEMMs made a faster epoch (the study's goal), and if not, what is left."""
    if not gemm_speedup > 1:
        return "its 16-bit GEMMs are not faster here, so no epoch speed-up is owed"
    if speedup > 1 and not share < WELL_USED_SHARE:
        return "faster GEMMs, faster epoch"
    if speedup > 1:
        return f"faster GEMMs, faster epoch, but under {WELL_USED_SHARE:.0%} of their saving reached it (the op profile says where it went)"
    return "faster GEMMs but no faster epoch: the work outside the products grew more than they saved (the op profile says which)"


def plot_study(tables: dict[str, pd.DataFrame], path: Path) -> bool:
    """Per study, per backend: the epoch's speed-up over fp32 beside its own GEMMs'."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tables = {study: table for study, table in tables.items() if not table.empty}
    if not tables:
        return False
    fig, panels = plt.subplots(1, len(tables), figsize=(6.5 * len(tables), 4.8), squeeze=False)
    for axes, (study, table) in zip(panels[0], tables.items(), strict=True):
        labels = [f"{r.backend}\n{r.variant}\n{r.precision}" for r in table.itertuples()]
        x = range(len(labels))
        axes.bar([i - 0.2 for i in x], table["speedup"], width=0.4, label="epoch")
        axes.bar([i + 0.2 for i in x], table["gemm_speedup"], width=0.4, label="own GEMM floor")
        axes.axhline(1.0, color="black", linewidth=0.8)
        axes.set_xticks(list(x), labels, fontsize=8)
        axes.set(title=f"{study}: speed-up over fp32", ylabel="fp32 time / time (x)")
        axes.grid(axis="y", alpha=0.3)
        axes.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)
    return True


def machine_load(runs: pd.DataFrame) -> str:
    """How busy the machine was while the study ran, from the runs' own records."""
    return (
        f"load average at job start {runs['loadavg_1m'].min():.1f}-{runs['loadavg_1m'].max():.1f}; other processes used "
        f"{runs['other_cpu_frac'].median():.0%} of the CPUs (median over jobs, {runs['other_cpu_frac'].max():.0%} at most)"
    )


PROFILE_FILE = "ops.json"  # in a study's results directory: `python -m framebench.driver.opprofile`'s profiles of its configuration


def profile_section(directory: Path) -> list[str]:
    """The op profile of a study's configuration (framebench.reports.opprofile), or why there is none."""
    from framebench.reports.opprofile import read_profiles, report_lines

    path = directory / PROFILE_FILE
    if not path.exists():
        return [
            f"No op profile: `{PROFILE_FILE}` is missing (`make bench-precision` writes it with `python -m framebench.driver.opprofile`).",
            "",
        ]
    return [
        f"Where the time goes (`{PROFILE_FILE}`): one epoch per backend and precision under its framework's own profiler, after "
        "one untimed epoch, in a process of its own with the study's threads. `epoch_s` is that epoch with the profiler on; "
        "`ops_s` the time its ops account for (self times: a kernel, XLA thunk or aten op, not the frames around it; the "
        "rest is the calling thread's Python and waiting); `ops_speedup` fp32's `ops_s` over this one's; `casts_per_step` "
        "the dtype conversions a step runs (TensorFlow's Cast, an XLA convert or a fusion XLA named after one, torch's "
        "_to_copy) and `cast_share` their share of `ops_s`. Then each profile's top ops by self time.",
        "",
        *report_lines(read_profiles(path)),
        "",
    ]


def write_study(folder: Path, directories: list[Path]) -> Path:
    """results/precision/report.md and precision.png over the study's results directories (`make bench-precision`),
    each with its op profile."""
    from framebench.reports.report import environment_section, write_markdown
    from framebench.store.results import load_results

    loaded = {d.name: load_results(d) for d in directories}
    tables = {study: precision_table(t["runs"]) for study, t in loaded.items()}
    figure = plot_study(tables, folder / "precision.png")
    lines = [
        "# framebench precision study",
        "",
        "Every backend at fp32 and at bf16 (mixed precision: bf16 products and activations, fp32 weights, optimiser state "
        "and loss), one results directory per configuration: " + ", ".join(f"`{name}/`" for name in loaded) + ". Each "
        "run's GEMM floor is its own library's products at its precision; a backend that cannot train a precision is a "
        "`not run` line with the reason. The verdicts compare medians of the runs made; with one repeat on a shared "
        "machine (its load is stated per configuration) a difference of a few percent is within the noise.",
        "",
    ]
    for directory in directories:
        study, t = directory.name, loaded[directory.name]
        lines += [
            f"## {study}",
            "",
            f"`{t['env'].get('command')}`; {machine_load(t['runs'])}.",
            "",
            to_markdown(tables[study]),
            *findings(tables[study], study),
            *[f"- not run: {line}" for line in not_run(t["runs"])],
            "",
            *profile_section(directory),
        ]
    lines += ["![Speed-up over fp32: the epoch and its own GEMMs](precision.png)", ""] if figure else []
    lines += environment_section(next(iter(loaded.values()))["env"])
    return write_markdown(folder / "report.md", lines, "pass a writable folder")


def main() -> None:
    """`python -m framebench.reports.precision FOLDER DIR...`: the study report over its results directories."""
    folder, *directories = sys.argv[1:]
    print(write_study(Path(folder), [Path(d) for d in directories]))


if __name__ == "__main__":
    main()
