"""fp32 against bf16 on every backend, one thread (`framebench study precision`, `make bench-precision`): one
results directory per configuration, then results/precision/report.md and precision.png over them: per
backend, the epoch's speed-up beside its own GEMMs', where the rest of the epoch went, and each
configuration's op profile (`framebench ops`: the top ops by self time, the casts a step runs).

A rerun finishes what is missing in each directory (or only redraws the report)."""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from framebench.driver import opprofile
from framebench.driver.request import RunRequest
from framebench.driver.session import run as run_matrix
from framebench.reports.floors import load_with_floors
from framebench.reports.markdown import to_markdown, write_markdown, write_output
from framebench.reports.opprofile import read_profiles, report_lines
from framebench.reports.plots import save_figure
from framebench.reports.precision import precision_table
from framebench.reports.report import machine_section
from framebench.reports.summary import BUSY_FRACTION, machine_load, not_run

HELP = "fp32 against bf16 on every backend, one thread, at several batch sizes, with op profiles: results/precision/report.md"
CONFIGURATIONS = {  # results directory -> (preset, training overrides): batch 128 (mlp), 1024 and 4096 at a fixed step count
    "mlp": ("mlp", {}),
    "scaling-1024": ("scaling", {"batch_size": 1024}),
    "scaling-4096": ("scaling", {"batch_size": 4096}),
}
PROFILED = "tf,keras,jax,keras-jax,torch"  # the backends whose op profiles the study takes (those with a bf16 path and a profiler)
PROFILE_FILE = "ops.json"  # in a configuration's results directory: its op profiles (framebench ops)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--directory", type=Path, default=Path("results/precision"), help="where the runs, report.md and precision.png go")
    parser.add_argument("--epochs", type=int, default=2, help="epochs per job (the first is excluded from the steady state)")
    parser.add_argument("--report-only", action="store_true", help="redraw report.md and precision.png from the runs already there")


def run(args: argparse.Namespace) -> int:
    worst = 0
    for name, (preset, train) in CONFIGURATIONS.items():
        if args.report_only:
            continue
        request = RunRequest(
            backends="all",
            variants="default",
            precision="fp32,bf16",
            threads=1,
            preset=preset,
            results_dir=str(args.directory),
            run_id=name,
        )
        status = run_matrix(request, {}, {**train, "epochs": args.epochs})
        if status >= 128:
            return status
        worst = max(worst, status)
        profiles = args.directory / name / PROFILE_FILE
        if not profiles.exists():  # a rerun keeps the profiles it has
            found = opprofile.profiles(
                opprofile.parse_entries(PROFILED), ["fp32", "bf16"], preset, train, threads=1, dataset=None, data_dir=None
            )
            write_output(str(profiles), "the study's op profiles", opprofile.to_json(found))
    print(write_study(args.directory, [args.directory / name for name in CONFIGURATIONS]))
    return worst


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


def busy_warning(runs: pd.DataFrame) -> str:
    """A configuration measured beside busy neighbours has ratios that are not a verdict: say so where they are."""
    if not runs["other_cpu_frac"].median() > BUSY_FRACTION:
        return ""
    return (
        f" **Busy machine** (other processes above {BUSY_FRACTION:.0%} of the CPUs): fp32 and bf16 jobs ran one after the other, "
        "so a load that changed between them moved these ratios; they are not a verdict (the op profiles, taken apart, may disagree). "
        "Rerun `make bench-precision` on a quiet machine."
    )


def profile_section(directory: Path) -> list[str]:
    """The op profile of a study's configuration (framebench.reports.opprofile), or why there is none."""
    path = directory / PROFILE_FILE
    if not path.exists():
        return [f"No op profile: `{PROFILE_FILE}` is missing (`make bench-precision` writes it with `framebench ops`).", ""]
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
    """results/precision/report.md and precision.png over the study's results directories, each with its op profile."""
    loaded = {d.name: load_with_floors(d) for d in directories}
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
            f"`{t['machine'].get('command')}`; {machine_load(t['runs'])}.{busy_warning(t['runs'])}",
            "",
            to_markdown(tables[study]),
            *findings(tables[study], study),
            *[f"- not run: {line}" for line in not_run(t["runs"])],
            "",
            *profile_section(directory),
        ]
    lines += ["![Speed-up over fp32: the epoch and its own GEMMs](precision.png)", ""] if figure else []
    lines += machine_section(next(iter(loaded.values()))["machine"])
    return write_markdown(folder / "report.md", lines, "pass a writable folder")
