"""Convergence as a verdict, measured (`framebench study convergence`, `make bench-convergence`).

Per workload (the `ci` preset on MNIST and on Fashion-MNIST, and tutorial 003's configuration), the
reference backend (numpy/default, fp32) at --rcp-seeds gives the reference convergence points
(`framebench rcp`), and the default backends at --seeds are held to them (`framebench converge`); the
same runs give the AlgoPerf performance profiles of the backends over the workloads (`framebench
profile`, in training seconds, and in epochs). Then the demonstration: numpy:mislearning
(framebench.studies.mislearning, the numpy default stepping at 0.8 x its learning rate) on `ci` MNIST
at --seeds, which the final-accuracy thresholds of `framebench check` pass and `converge` must flag.

Every run is a `framebench run` in its own process (the plugin is registered for it), into
DIRECTORY/runs/; DIRECTORY/report.md, rcps.csv, convergence.png and profile.png are written from
them. Epochs to target depend on the seed and the arithmetic alone, so the RCPs and verdicts hold on
a busy machine; the profile in seconds does not: run the study on a quiet one. A rerun finishes the
jobs each directory lacks (or only redraws, with --report-only).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from framebench.core.seeds import seed_count
from framebench.errors import FrameBenchError
from framebench.reports.converge import converge_table, derive_rcps, load_rcps, rcp_text, reference_epochs
from framebench.reports.convergence import REFERENCE, bounds, workload_of
from framebench.reports.markdown import escape_markdown, to_markdown, write_markdown
from framebench.reports.plots import colour, save_figure
from framebench.reports.profiles import performance_ratios, profile_figure, profile_table, times_to_target
from framebench.reports.report import machine_section
from framebench.reports.summary import machine_load, not_run
from framebench.reports.thresholds import DEFAULT_FILE as THRESHOLDS
from framebench.reports.thresholds import check
from framebench.store.reader import latest_attempts, load_results
from framebench.studies.mislearning import LR_SCALE

HELP = "reference convergence points, MLPerf's convergence check and AlgoPerf profiles, a mislearning backend: results/convergence"
PLUGIN = "numpy:mislearning=framebench.studies.mislearning:MislearningNumpy"
BROKEN = "mislearning"  # the plugin's variant of numpy
RUNS_FOLDER = "runs"


@dataclass(frozen=True)
class Workload:
    name: str  # its results directories' names
    preset: str  # the configuration
    dataset: str  # what it trains on
    target_acc: float | None  # the target (None: the preset's)
    eval_every: int  # steps between evaluations: the resolution of epochs to target
    epochs: int | None  # epochs per run (None: the preset's); a run ends there, reached or not

    def flags(self) -> list[str]:
        flags = ["--preset", self.preset, "--dataset", self.dataset, "--eval-every", str(self.eval_every)]
        flags += ["--target-acc", str(self.target_acc)] if self.target_acc else []
        return flags + (["--epochs", str(self.epochs)] if self.epochs else [])


WORKLOADS = (  # the ci ones are those framebench ships RCPs for (bench/reports/rcps.csv)
    Workload("ci-mnist", "ci", "mnist", None, 20, None),
    Workload("ci-fashion-mnist", "ci", "fashion-mnist", 0.83, 20, None),  # the ci preset's 0.95 is above what Fashion-MNIST reaches
    Workload("tutorial003", "tutorial003", "fashion-mnist", None, 50, 2),
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--directory", type=Path, default=Path("results/convergence"), help="where the runs, report.md and figures go")
    parser.add_argument("--seeds", default="0-9", help="seeds of every backend's runs (N: MLPerf's rule needs 5 or more)")
    parser.add_argument("--rcp-seeds", default="100-119", help="seeds of the reference runs (2N or more, none of --seeds)")
    parser.add_argument("--backends", default="all", help="backends held to the reference, each its default variant")
    parser.add_argument("--workloads", default=",".join(w.name for w in WORKLOADS), help="which of the study's workloads to run")
    parser.add_argument("--report-only", action="store_true", help="redraw report.md and the figures from the runs already there")


def chosen_workloads(text: str) -> list[Workload]:
    known = {w.name: w for w in WORKLOADS}
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names or not set(names) <= set(known):
        raise FrameBenchError(f"--workloads {text!r}: choose from {', '.join(known)}")
    return [known[n] for n in names]


def run_one(folder: Path, name: str, flags: list[str]) -> int:
    """One `framebench run` into folder/name (finishing what it lacks), the mislearning plugin registered."""
    command = [sys.executable, "-m", "framebench", "run", *flags, "--no-floors", "--results-dir", str(folder), "--run-id", name]
    if (folder / name / "config.json").exists():
        command = [sys.executable, "-m", "framebench", "run", "--resume", str(folder / name)]
    env = {**os.environ, "FRAMEBENCH_PLUGINS": ",".join(filter(None, [os.environ.get("FRAMEBENCH_PLUGINS", ""), PLUGIN]))}
    print(f"{name}: {' '.join(command[2:])}", file=sys.stderr, flush=True)
    finished = subprocess.run(command, env=env, check=False, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if finished.returncode:
        print(f"{name}: framebench run exited {finished.returncode}: {finished.stderr.strip()[-400:]}", file=sys.stderr)
    return finished.returncode


def run(args: argparse.Namespace) -> int:
    workloads = chosen_workloads(args.workloads)
    if seed_count(args.rcp_seeds, "--rcp-seeds") < 2 * seed_count(args.seeds):
        print("warning: --rcp-seeds holds fewer than twice --seeds: every verdict will be inconclusive", file=sys.stderr)
    folder = args.directory / RUNS_FOLDER
    worst = 0
    for workload in [] if args.report_only else workloads:
        plans = [
            (f"rcp-{workload.name}", ["--backends", REFERENCE[0], "--seeds", args.rcp_seeds]),
            (workload.name, ["--backends", args.backends, "--variants", "default", "--seeds", args.seeds]),
        ]
        if workload.name == WORKLOADS[0].name:
            plans.append((f"{BROKEN}-{workload.name}", ["--backends", REFERENCE[0], "--variants", BROKEN, "--seeds", args.seeds]))
        for name, flags in plans:
            status = run_one(folder, name, [*flags, *workload.flags()])
            if status >= 128:
                return status
            worst = max(worst, status)
    print(write_study(args.directory, workloads))
    return worst


def epochs_figure(verdicts: dict[str, pd.DataFrame], references: dict[str, np.ndarray], path: Path) -> None:
    """Per workload, every key's epochs to target seed by seed (× = did not converge, at the right edge)
    and their trimmed mean (|), beside the reference's and the band of trimmed means the rule accepts."""
    import matplotlib.pyplot as plt

    fig, panels = plt.subplots(1, len(verdicts), figsize=(6 * len(verdicts), 4.8), squeeze=False)
    for axes, (name, table) in zip(panels[0], verdicts.items(), strict=True):
        reference = references[name]
        rows = [("reference", reference, "black")] + [(r["label"], r["per_seed"], colour(r["backend"])) for _, r in table.iterrows()]
        means = [bounds(reference, len(table.iloc[0]["per_seed"])).mean, *table["epochs"]]
        right = max(np.max(reference), *(np.max(v[np.isfinite(v)], initial=0) for _, v, _ in rows)) * 1.08
        for y, (_, values, color) in enumerate(rows):
            finite = values[np.isfinite(values)]
            axes.scatter(finite, [y] * len(finite), color=color, s=16)
            axes.scatter([right] * int(np.isinf(values).sum()), [y] * int(np.isinf(values).sum()), color=color, marker="x")
            axes.scatter([means[y]], [y], color=color, marker="|", s=400, label="trimmed mean" if y == 0 else None)
        first = table.iloc[0]
        if np.isfinite(first["low"]):
            axes.axvspan(first["low"], first["high"], color="grey", alpha=0.2, label="trimmed means the rule accepts")
            axes.legend(fontsize=7, loc="lower right")
        axes.set_yticks(range(len(rows)), [label for label, _, _ in rows], fontsize=7)
        axes.set(title=f"{name}: epochs to target, per seed", xlabel="epochs to the target accuracy (x: did not converge)")
        axes.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)


def per_seed(directory: Path, key: dict) -> np.ndarray:
    """A key's epochs to target per seed (∞: did not converge), for the figure."""
    runs = latest_attempts(load_results(directory)["runs"])
    mine = runs[(runs[list(key)] == list(key.values())).all(axis=1)]
    epochs = pd.to_numeric(mine["epochs_to_target"], errors="coerce")
    return np.where((mine["status"] == "ok") & epochs.notna(), epochs, np.inf)


def verdict_table(directory: Path, reference: Path) -> pd.DataFrame:
    """converge's table of one directory against the study's RCPs, with each key's per-seed epochs and a label."""
    table, _, _ = converge_table(str(directory), reference, None)
    keys = ["backend", "variant", "device", "env", "precision"]
    table["per_seed"] = [per_seed(directory, dict(zip(keys, row, strict=True))) for row in table[keys].itertuples(index=False)]
    table["label"] = [f"{b}/{v}" for b, v in zip(table["backend"], table["variant"], strict=True)]
    return table


def shown(table: pd.DataFrame) -> pd.DataFrame:
    columns = ["backend", "variant", "seeds", "converged", "epochs", "low", "high", "reference", "verdict"]
    return table[columns].assign(verdict=table["verdict"].map(str))


def check_lines(directory: Path) -> list[str]:
    """What `framebench check` says of the mislearning runs against the shipped thresholds, and their accuracies."""
    failures, notes = check(str(directory), THRESHOLDS, allow_missing=False)
    runs = latest_attempts(load_results(directory)["runs"])
    accuracies = ", ".join(f"seed {s}: {a:.4f}" for s, a in zip(runs["seed"], runs["final_test_acc"], strict=True))
    outcome = f"FAILS it ({len(failures)} run(s): {'; '.join(failures[:3])})" if failures else "passes it: every run meets its threshold"
    verdict = f"- `framebench check` against {THRESHOLDS.name} (numpy's thresholds hold for its variants) {outcome}"
    return [verdict, f"- final test accuracies: {accuracies}"]


def write_study(folder: Path, workloads: list[Workload]) -> Path:
    """rcps.csv, report.md, convergence.png and profile.png from the runs under folder/runs."""
    runs_folder = folder / RUNS_FOLDER
    rcp_dirs = [str(runs_folder / f"rcp-{w.name}") for w in workloads]
    rcps_path = folder / "rcps.csv"
    measured = [f"{load_results(d)['machine'].get('command', '?')}" for d in rcp_dirs]
    rcps_path.write_text(rcp_text(derive_rcps(rcp_dirs, REFERENCE[0]), f"framebench rcp {' '.join(rcp_dirs)}", measured))
    rcps = load_rcps(rcps_path)
    verdicts, references, lines = {}, {}, []
    for workload in workloads:
        directory = runs_folder / workload.name
        tables = load_results(directory)
        references[workload.name] = reference_epochs(rcps, workload_of(tables["config"]), str(rcps_path))
        verdicts[workload.name] = verdict_table(directory, rcps_path)
        lines += [
            f"### {workload.name}: {escape_markdown(workload_of(tables['config']).describe())}",
            "",
            f"{escape_markdown(tables['machine'].get('command', ''))}",
            "",
            to_markdown(shown(verdicts[workload.name])),
            *[f"- not run: {escape_markdown(line)}" for line in not_run(tables["runs"])],
            "",
        ]
    broken = runs_folder / f"{BROKEN}-{WORKLOADS[0].name}"
    demonstration = []
    if WORKLOADS[0] in workloads and broken.exists():
        table = verdict_table(broken, rcps_path)
        verdicts[WORKLOADS[0].name] = pd.concat([verdicts[WORKLOADS[0].name], table], ignore_index=True)
        demonstration = [
            "## The demonstration: a backend that learns slower",
            "",
            f"numpy:{BROKEN} is the numpy default whose optimiser steps at {LR_SCALE:g} x the learning rate it is given "
            f"(framebench.studies.mislearning), on {WORKLOADS[0].name} at the same seeds:",
            "",
            *check_lines(broken),
            f"- `framebench converge` against {rcps_path.name}:",
            "",
            to_markdown(shown(table)),
            "",
        ]
    epochs_figure(verdicts, references, folder / "convergence.png")
    all_runs = pd.concat([load_results(runs_folder / w.name)["runs"] for w in workloads], ignore_index=True)
    profiles = []
    for measure in ("seconds", "epochs"):
        times = times_to_target(all_runs, measure, precision_workloads=False)
        ratios = performance_ratios(times)
        if measure == "seconds":
            profile_figure(ratios, folder / "profile.png", f"Performance profiles over {len(workloads)} workload(s), training seconds")
        profiles += [f"### Time to target in {measure}", "", to_markdown(profile_table(times, ratios)), ""]
    rcp_groups = rcps.groupby(["preset", "dataset", "target_acc", "eval_every"])["epochs_to_target"]
    rcp_table = rcp_groups.agg(["size", "mean", "std", "min", "max"])
    text = [
        "# framebench convergence study",
        "",
        "Convergence is counted in epochs to the target accuracy (steps / steps per epoch, at each workload's evaluation "
        "interval), which depends on the seed and the arithmetic, not on the machine's speed. The reference convergence points "
        f"(RCPs) are {REFERENCE[0]}/{REFERENCE[1]} at {REFERENCE[2]}, one per seed; every backend is held to them by MLPerf's rule "
        "(framebench.reports.convergence): the trimmed mean of its seeds' epochs (fastest and slowest dropped) within the bounds "
        "of a one-sided two-sample t-test at alpha 0.05 around the reference's trimmed mean.",
        "",
        "## Reference convergence points",
        "",
        f"{rcps_path.name}, derived from {', '.join(f'`{Path(d).name}/`' for d in rcp_dirs)}:",
        "",
        to_markdown(rcp_table.reset_index()),
        "## Every backend against the reference",
        "",
        *lines,
        "![Epochs to target per seed, the reference's and the band the rule accepts](convergence.png)",
        "",
        *demonstration,
        "## Performance profiles (AlgoPerf)",
        "",
        "Per backend, the median over seeds of the time to target on each workload (∞: did not converge), its ratio to the "
        "fastest backend's, ∞ above 4; the score is the normalised area under ρ(τ) from 1 to 4. Seconds are training seconds "
        "(evaluation excluded) and need a quiet machine; epochs do not. While these runs trained: "
        f"{machine_load(all_runs)}.",
        "",
        *profiles,
        "![Performance profiles in training seconds](profile.png)",
        "",
        *machine_section(load_results(runs_folder / workloads[0].name)["machine"]),
    ]
    return write_markdown(folder / "report.md", text, "pass a writable --directory")
