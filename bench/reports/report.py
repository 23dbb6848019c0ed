"""report.md: the configuration, the environment, the summary table and the figures of one run."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from framebench.reports import convergence, environments, precision
from framebench.reports.floors import load_with_floors, unreliable_warnings
from framebench.reports.markdown import escape_markdown, to_markdown, write_markdown
from framebench.reports.plots import draw_all
from framebench.reports.scaling import report_section
from framebench.reports.summary import busy_warnings, calibration_warnings, not_run, summary
from framebench.store.metadata import node_records, seeds_text, swept_field
from framebench.store.reader import left_out_lines

FIGURE_CAPTIONS = {
    "loss.png": "Training loss per step and test loss per epoch",
    "accuracy.png": "Test accuracy per epoch and against training time",
    "epoch_time.png": "Steady-state epoch time per backend",
    "speedup.png": "GPU speed-up over CPU",
    "environments.png": "Steady-state epoch time per framework environment",
}


def machine_lines(machine: dict) -> list[str]:
    """The machine record as Markdown list items, every value escaped (it may come from anyone)."""
    lines = []
    for name, node in node_records(machine).items():
        gpus = "; ".join(f"{g.get('name')} (driver {g.get('driver')}, CUDA {g.get('cuda')})" for g in node.get("gpus", [])) or "none"
        libraries = ", ".join(f"{library} {version}" for library, version in node.get("libraries", {}).items())
        kernels = ", ".join(f"{k}={v}" for k, v in node.get("kernel_settings", {}).items()) or "none set"
        lines += [
            f"- node {name}: {node.get('cpu')}, {node.get('cores')} cores, {node.get('threads')} threads used; "
            f"GPUs: {gpus}; {node.get('os')}; Python {node.get('python')}",
            f"  - libraries: {libraries}",
            f"  - kernel settings: {kernels}",
        ]
    earlier = [
        f"- earlier into this directory: {e.get('command')} (commit {e.get('git_commit')}, {e.get('started_utc')})"
        for e in machine.get("earlier", [])
    ]
    lines += [f"- framebench commit: {machine.get('git_commit')}", f"- command: {machine.get('command')}", *earlier]
    return [escape_markdown(line) for line in lines]


def matrix_line(config: dict) -> str:
    matrices = config.get("matrices", [])
    repeats = max((m["repeats"] for m in matrices), default=0)
    seeds = seeds_text(config) or "-"
    field = swept_field(config)
    swept = f"; sweep over {field}: {', '.join(config['sweep']['values'])}" if field else ""
    return escape_markdown(
        f"Preset {config.get('preset')} on {config.get('dataset')}, {repeats} repeat(s), seeds {seeds}{swept}; "
        f"{config.get('threads')} threads; "
        f"time-to-target accuracy {config.get('target_acc')}."
    )


def write_report(directory: str | Path) -> Path:
    """Redraw the figures and rewrite report.md from the tables on disk (the tables stay as they are);
    rows that cannot be read are left out, each with a warning here and a line in report.md."""
    directory = Path(directory)
    tables = load_with_floors(directory)
    left_out = left_out_lines(tables["refused"])
    for line in left_out:
        print(f"warning: {line}", file=sys.stderr)
    table = summary(tables["runs"])
    figures = draw_all(directory, tables, table)
    config = tables["config"]
    lines = [
        f"# framebench run {directory.name}",
        "",
        matrix_line(config),
        "",
        "## Summary",
        "",
        "Epoch times are the steady state (first epoch excluded; it carries tracing and compilation): the median over "
        "repeats of each run's median epoch, with the fastest and slowest repeat. `first_epoch_s` and `setup_s` "
        "(model build + data preparation) are reported apart.",
        "",
        to_markdown(table),
        *[f"- not run: {escape_markdown(line)}" for line in not_run(tables["runs"])],
        *[f"- left out: {escape_markdown(line)}" for line in left_out],
        *[
            f"- warning: {escape_markdown(line)}"
            for line in unreliable_warnings(tables["runs"]) + busy_warnings(tables["runs"]) + calibration_warnings(tables["runs"])
        ],
        "",
        *precision.report_section(tables["runs"]),
        *convergence.report_section(directory, tables),
        *(report_section(directory, tables) if swept_field(config) else []),
        *environments.report_section(tables),
        *(["## Figures", "", *[f"![{FIGURE_CAPTIONS[name]}]({name})\n" for name in figures]] if figures else []),
        "## Configuration",
        "",
        "```json",
        json.dumps({k: config.get(k) for k in ("model", "train")}, indent=2),
        "```",
        "",
        *machine_section(tables["machine"]),
    ]
    return write_markdown(
        directory / "report.md", lines, f"the tables are complete: rerun `framebench plot {directory}` where it can be written"
    )


def machine_section(machine: dict) -> list[str]:
    return ["## Machine", "", *machine_lines(machine), ""]
