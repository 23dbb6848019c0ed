"""One backend under two framework minors, interleaved job by job in one run (`framebench study versions`,
`make bench-versions`): NumPy, JAX and TensorFlow each against the lock, every environment built by uv
before anything is timed. report.md puts each pair side by side: time ratio with its interval,
accuracy, and the first step whose loss differs."""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from framebench.driver.request import RunRequest
from framebench.driver.session import run as run_matrix

HELP = "one backend under two framework minors, interleaved: results/versions/report.md"
PAIRS = (  # (backends, the environment timed against the lock's)
    ("numpy", "numpy-2.3=numpy==2.3.5"),
    ("jax,keras-jax", "jax-0.9=jax==0.9.2;jaxlib==0.9.2"),
    ("tf,keras", "tf-2.20=tensorflow-cpu==2.20.0"),
)
TRAIN = {"sampling": "with_replacement", "steps_per_epoch": 60, "epochs": 3}  # short epochs: the versions differ, not the model


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--results-dir", default="results", help="parent of the study's results directory, `versions` (replaced)")
    parser.add_argument("--repeats", type=int, default=2, help="rounds over each pair")


def run(args: argparse.Namespace) -> int:
    shutil.rmtree(Path(args.results_dir) / "versions", ignore_errors=True)
    worst = 0
    for backends, env in PAIRS:
        request = RunRequest(
            preset="ci",
            backends=backends,
            repeats=args.repeats,
            floors=False,
            results_dir=args.results_dir,
            run_id="versions",
            env=("base=", env),
        )
        status = run_matrix(request, {}, dict(TRAIN))
        if status >= 128:
            return status
        worst = max(worst, status)
    return worst
