"""Throughput and efficiency against the batch size, every backend's default (`framebench study scaling`,
`make bench-scaling`): the scaling preset (a fixed number of steps per epoch) swept over batch sizes
into one results directory, whose report.md carries the sweep's tables and scaling.png.

A rerun finishes the jobs the directory lacks, or only redraws it; delete its tables for a fresh one."""

from __future__ import annotations

import argparse

from framebench.driver.request import RunRequest
from framebench.driver.session import run as run_matrix

HELP = "throughput and efficiency against batch size, every backend: results/scaling/report.md"
BATCH_SIZES = "16,64,256,1024,4096"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--backends", default="all", help="backends to sweep (default all)")
    parser.add_argument("--batch-sizes", default=BATCH_SIZES, help=f"batch sizes swept (default {BATCH_SIZES})")
    parser.add_argument("--repeats", type=int, default=2, help="rounds over the sweep")
    parser.add_argument("--results-dir", default="results", help="parent of the study's results directory, `scaling`")


def run(args: argparse.Namespace) -> int:
    request = RunRequest(
        preset="scaling",
        backends=args.backends,
        variants="default",
        sweep=f"batch_size={args.batch_sizes}",
        repeats=args.repeats,
        results_dir=args.results_dir,
        run_id="scaling",
    )
    return run_matrix(request, {}, {})
