"""A known slowdown as a real code change: `slower_revision` commits, on a branch of its own, a
revision whose NumPy backend does a given share more work per epoch, the ground truth `framebench
gate` is measured against (`make bench-gate`) and tested with. The extra work is real arithmetic
(`busy_work`, whose source the revision carries), not a sleep, worth `share` of each epoch's own
time, so it slows down with the machine as the training itself does.

The commit is made with git's plumbing from the base commit's tree (nothing checked out, no index
of the user's touched), in the repository given, which should be a clone of the user's own.
"""

from __future__ import annotations

import inspect
import tempfile
import time
from pathlib import Path

import numpy as np

from framebench.driver import revisions
from framebench.driver.revisions import SNAPSHOT_IDENTITY
from framebench.errors import FrameBenchError

BACKEND_FILE = "impls/numpy_impl.py"  # the file the slower revision changes
WORK_SIZE = 64  # side of the small matrices multiplied as extra work: short enough to stop within a few microseconds of the target


def busy_work(seconds: float) -> None:
    """Multiply small matrices until `seconds` of wall-clock time have passed."""
    a = np.full((WORK_SIZE, WORK_SIZE), 0.5, dtype=np.float32)
    out = np.empty_like(a)
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        np.matmul(a, a, out=out)


def slower_source(source: str, share: float) -> str:
    """numpy_impl.py's `source` with NumpyClassifier.train_epoch doing `share` of its own time again as
    extra work (the patch appended: every line before it unchanged)."""
    if not 0 < share < 10:
        raise FrameBenchError(f"a slowdown of {share} is not a share in (0, 10) of an epoch's time (0.1 = 10%)")
    work = inspect.getsource(busy_work).replace("WORK_SIZE", str(WORK_SIZE))
    patch = [
        f"# Injected by framebench.studies.slowdown: {share:.0%} more work per epoch of NumpyClassifier.",
        "import time",
        "",
        "",
        work,
        "",
        "_train_epoch_as_it_was = NumpyClassifier.train_epoch",
        "",
        "",
        "def _slower_train_epoch(self, order, batch_size):",
        "    started = time.perf_counter()",
        "    losses = _train_epoch_as_it_was(self, order, batch_size)",
        f"    busy_work({share!r} * (time.perf_counter() - started))",
        "    return losses",
        "",
        "",
        "NumpyClassifier.train_epoch = _slower_train_epoch",
    ]
    return source.rstrip("\n") + "\n\n\n" + "\n".join(patch) + "\n"


def slower_revision(repository: Path, base: str, share: float, branch: str) -> str:
    """Commit on `branch` (created or moved) of `repository` the revision `base` with a NumPy backend
    `share` slower; its SHA."""
    source = revisions.read_file(repository, base, BACKEND_FILE)
    if source is None:
        raise FrameBenchError(f"{base} of {repository} has no {BACKEND_FILE} to slow down")
    with tempfile.TemporaryDirectory(prefix="framebench-slowdown-") as scratch:
        patched = Path(scratch) / "numpy_impl.py"
        patched.write_text(slower_source(source, share))
        env = {"GIT_INDEX_FILE": str(Path(scratch) / "index"), **SNAPSHOT_IDENTITY}
        blob = revisions.output(repository, "hash-object", "-w", str(patched))
        steps = [
            ("read-tree", base),
            ("update-index", "--cacheinfo", f"100644,{blob},{BACKEND_FILE}"),
        ]
        for step in steps:
            if revisions.git(repository, *step, env=env).returncode != 0:
                raise FrameBenchError(f"git {step[0]} failed in {repository}")
        tree = revisions.output(repository, "write-tree", env=env)
        message = f"framebench study: the NumPy backend {share:.0%} slower"
        commit = revisions.output(repository, "commit-tree", tree, "-p", base, "-m", message, env=env)
    if not commit or revisions.git(repository, "branch", "--force", branch, commit).returncode != 0:
        raise FrameBenchError(f"cannot commit the slower revision in {repository}")
    return commit
