"""A small real history (`framebench study history`, `make bench-history`): eight runs of numpy and torch
on tutorial000, the last four on one thread instead of two (a deliberate step the change detection must
find), published as the offline site results/history/site with a screenshot of its overview taken by
headless Chromium."""

from __future__ import annotations

import argparse
import shutil
import subprocess
from pathlib import Path

from framebench.driver.request import RunRequest
from framebench.driver.session import run as run_matrix
from framebench.errors import FrameBenchError
from framebench.history.commands import run_publish

HELP = "eight real runs with a deliberate step, published: results/history/site and screenshot.png"
RUNS = (("h01", 2), ("h02", 2), ("h03", 2), ("h04", 2), ("h05", 1), ("h06", 1), ("h07", 1), ("h08", 1))  # (run id, threads)
SCREENSHOT = ["--headless", "--no-sandbox", "--hide-scrollbars", "--window-size=1280,460", "--virtual-time-budget=10000"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--directory", type=Path, default=Path("results/history"), help="where runs/, site/ and screenshot.png go")


def run(args: argparse.Namespace) -> int:
    runs = args.directory / "runs"
    shutil.rmtree(runs, ignore_errors=True)
    for run_id, threads in RUNS:
        request = RunRequest(
            backends="numpy,torch", preset="tutorial000", repeats=2, floors=False, threads=threads, results_dir=str(runs), run_id=run_id
        )
        if status := run_matrix(request, {}, {"epochs": 2}):
            return status
    run_publish([str(runs)], str(args.directory / "site"), fail_on_regression=False)
    screenshot(args.directory / "site" / "index.html", args.directory / "screenshot.png")
    return 0


def screenshot(page: Path, out: Path) -> None:
    """The page as headless Chromium draws it (Debian's `chromium`)."""
    browser = shutil.which("chromium")
    if not browser:
        raise FrameBenchError("the history study's screenshot needs Debian's chromium: apt-get install chromium")
    subprocess.run([browser, *SCREENSHOT, f"--screenshot={out}", str(page)], check=True, capture_output=True)
