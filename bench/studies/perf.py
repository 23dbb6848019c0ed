"""The speed study (`framebench study perf`, `make bench-perf`). One results directory per preset under
--results-dir (every backend x variant, floors probed), then one report over all of them:
report.md with the table and perf.png. Measured numbers live only in that generated report."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import pandas as pd

from framebench.core import registry
from framebench.core.config import PRESETS
from framebench.driver.arguments import RUN_CHOICES, add_fields, add_seed_aliases, given
from framebench.driver.request import RunRequest, split_names
from framebench.driver.session import run as run_matrix
from framebench.reports.floors import load_with_floors
from framebench.reports.markdown import to_markdown, write_markdown
from framebench.reports.plots import plot_perf
from framebench.reports.report import machine_section
from framebench.reports.summary import perf_table

HELP = "every backend x variant on several presets, with GEMM floors: results/perf/report.md"
PER_PRESET = ("preset", "dataset", "run_id", "resume", "sweep", "target_acc")  # run flags the study sets per preset


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--presets",
        default="tutorial000,tutorial003,mlp",
        help="comma-separated presets; each tutorial's own preset is added for its backend",
    )
    parser.add_argument("--epochs", type=int, default=3, help="epochs per job (the first is excluded from the steady state)")
    add_fields(parser.add_argument_group("the runs"), RunRequest, RUN_CHOICES, skip=PER_PRESET)
    add_seed_aliases(parser)
    parser.set_defaults(backends="all", variants="all", repeats=2, results_dir="results/perf")


def run(args: argparse.Namespace) -> int:
    return run_perf(args.presets, RunRequest(**given(args, RunRequest)), epochs=args.epochs)


def perf_matrix(presets: str, backends: str) -> list[tuple[str, str]]:
    """(preset, backends) per results directory: the presets asked for on the backends asked for, and
    each tutorial's own preset for its backend, so every tutorial is timed on what it was written for."""
    chosen = split_names(presets, list(PRESETS), "preset", "--presets")
    names = split_names(backends, registry.backend_names(), "backend", "--backends")
    matrix = [(preset, ",".join(names)) for preset in chosen]
    return matrix + [(p.name, p.tutorial_backend) for p in PRESETS.values() if p.tutorial_backend in names and p.name not in chosen]


def run_perf(presets: str, request: RunRequest, *, epochs: int) -> int:
    """Run the study, one `request` per preset (its backends, preset and run id set per preset);
    returns the worst exit status of its runs (an interrupt stops it at once)."""
    worst = 0
    directories = []
    for preset, preset_backends in perf_matrix(presets, request.backends):
        status = run_matrix(dataclasses.replace(request, backends=preset_backends, preset=preset, run_id=preset), {}, {"epochs": epochs})
        directories.append(Path(request.results_dir) / preset)
        if status >= 128:
            return status
        worst = max(worst, status)
    print(write_perf_report(Path(request.results_dir), directories))
    return worst


def write_perf_report(folder: Path, directories: list[Path]) -> Path:
    tables = [load_with_floors(d) for d in directories]
    table = perf_table(pd.concat([t["runs"] for t in tables], ignore_index=True))
    figure = ["![Epoch time per backend and variant, with the GEMM floor](perf.png)"] if plot_perf(table, folder / "perf.png") else []
    lines = [
        "# framebench perf",
        "",
        f"`{tables[0]['machine'].get('command', 'framebench perf')}` (the command that measured it); one results directory per preset: "
        + ", ".join(f"`{d.name}/`" for d in directories)
        + ".",
        "",
        "Steady-state epoch (median over repeats; `spread_s` is fastest to slowest repeat), the GEMM floors measured in the same "
        "run (`floor_epoch_s`: the fastest library at each shape; `own_floor_epoch_s`: the backend's own), `efficiency` = "
        "floor / epoch, `overhead_efficiency` = own floor / epoch, `first_epoch_s` (tracing and compilation), and the speed-up "
        "over the same backend's `tutorial` variant on the same preset.",
        "",
        to_markdown(table),
        *figure,
        "",
        *machine_section(tables[0]["machine"]),
    ]
    return write_markdown(folder / "report.md", lines, "pass a writable --results-dir")
