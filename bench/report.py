"""report.md: the configuration, the environment, the summary table and the figures of one run."""

from __future__ import annotations

import json
from pathlib import Path

from bench.plots import draw_all
from bench.results import load_results
from bench.tables import not_run, summary, to_markdown

FIGURE_CAPTIONS = {
    "loss.png": "Training loss per step and test loss per epoch",
    "accuracy.png": "Test accuracy per epoch and against training time",
    "epoch_time.png": "Steady-state epoch time per backend",
    "speedup.png": "GPU speed-up over CPU",
}


def environment_lines(env: dict) -> list[str]:
    libraries = ", ".join(f"{name} {version}" for name, version in env.get("libraries", {}).items())
    gpus = "; ".join(f"{g.get('name')} (driver {g.get('driver')}, CUDA {g.get('cuda')})" for g in env.get("gpus", [])) or "none"
    return [
        f"- machine: {env.get('machine')}, {env.get('cpu')}, {env.get('cores')} cores, {env.get('threads')} threads used",
        f"- OS: {env.get('os')}; Python {env.get('python')}",
        f"- GPUs: {gpus}",
        f"- libraries: {libraries}",
        f"- kernel settings: {', '.join(f'{k}={v}' for k, v in env.get('kernel_settings', {}).items()) or 'not recorded'}",
        f"- framebench commit: {env.get('git_commit')}",
        f"- command: `{env.get('command')}`",
    ]


def write_report(directory: str | Path) -> Path:
    """Redraw the figures and rewrite report.md from the tables on disk (the tables stay as they are)."""
    directory = Path(directory)
    tables = load_results(directory)
    table = summary(tables["runs"])
    figures = draw_all(directory, tables, table)
    config = tables["config"]
    lines = [
        f"# framebench run {directory.name}",
        "",
        f"Preset `{config.get('preset')}` on `{config.get('dataset')}`, {config.get('repeats')} repeat(s), "
        f"seeds {config.get('seeds')}; TF32 {'allowed' if config.get('tf32') else 'off'}; "
        f"time-to-accuracy target {config.get('target_acc')}.",
        "",
        "## Summary",
        "",
        "Epoch times are the steady state (first epoch excluded; it carries tracing and compilation): the median over "
        "repeats of each run's median epoch, with the fastest and slowest repeat. `first_epoch_s` and `setup_s` "
        "(model build + data preparation) are reported apart.",
        "",
        to_markdown(table),
        *[f"- not run: {line}" for line in not_run(tables["runs"])],
        "",
        "## Figures",
        "",
        *[f"![{FIGURE_CAPTIONS[name]}]({name})\n" for name in figures],
        "## Configuration",
        "",
        "```json",
        json.dumps({k: config.get(k) for k in ("model", "train")}, indent=2),
        "```",
        "",
        "## Environment",
        "",
        *environment_lines(tables["env"]),
        "",
    ]
    path = directory / "report.md"
    path.write_text("\n".join(lines))
    return path
