"""Revisions of a git repository, the sides of `framebench gate`: a name git knows (`origin/main`,
`HEAD~1`, a SHA) in the repository the command runs in, its working tree, or another checkout's
folder (its HEAD, or its working tree where that has changes).

A working tree with changes is taken as a commit of its own, made without touching anything the
user has: its files (untracked ones too, less what .gitignore ignores) are added to a temporary copy
of the index, written as a tree and committed with a fixed date, so the same changes always give
the same commit, on no branch. Either way a side is one commit SHA of one repository, which an
environment is built from (framebench.driver.envbuild) and which config.json records as the requirement
`framebench @ git+file://REPOSITORY@SHA`.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, unquote

from framebench.errors import FrameBenchError

SNAPSHOT_IDENTITY = {  # who commits a working tree's snapshot, and when: the same changes give the same commit
    "GIT_AUTHOR_NAME": "framebench gate",
    "GIT_AUTHOR_EMAIL": "gate@framebench.invalid",
    "GIT_COMMITTER_NAME": "framebench gate",
    "GIT_COMMITTER_EMAIL": "gate@framebench.invalid",
    "GIT_AUTHOR_DATE": "2000-01-01T00:00:00Z",
    "GIT_COMMITTER_DATE": "2000-01-01T00:00:00Z",
}
URL_PREFIX = "git+file://"  # a revision as a requirement's URL: git+file://REPOSITORY@SHA


@dataclass(frozen=True)
class Revision:
    ref: str  # as the user named it: "origin/main", a SHA, a folder, or "" for the working tree
    repository: Path  # the top folder of the git work tree holding it
    commit: str  # its full SHA (a working tree with changes: the snapshot's)
    head: str  # the commit it stands on: itself, or the HEAD a working tree's changes are on
    tree: str  # the SHA of its tree: its content, whatever commit holds it

    @property
    def dirty(self) -> bool:
        """A working tree whose changes are not committed."""
        return self.commit != self.head

    @property
    def requirement(self) -> str:
        """framebench at this revision, as the override of an environment (envs.parse_specs accepts it)."""
        return f"framebench @ {URL_PREFIX}{quote(str(self.repository))}@{self.commit}"

    def describe(self) -> str:
        """E.g. "origin/main (3f2a1c9d0b7e)", "the working tree (HEAD 3f2a1c9d0b7e + changes: 77aa01c2d3e4)"."""
        name = self.ref or "the working tree"
        if self.dirty:
            return f"{name} (HEAD {self.head[:12]} + changes: {self.commit[:12]})"
        return f"{name} ({self.commit[:12]})"


def git(repository: Path, *args: str, env: dict | None = None, binary: bool = False) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(
            ["git", "-C", str(repository), *args], capture_output=True, text=not binary, env={**os.environ, **(env or {})}
        )
    except OSError as exc:
        raise FrameBenchError(f"git cannot run ({exc.strerror or exc}); install git to gate revisions") from None


def output(repository: Path, *args: str, env: dict | None = None) -> str | None:
    """git's output stripped, or None where it failed."""
    result = git(repository, *args, env=env)
    return result.stdout.strip() if result.returncode == 0 else None


def top_level(folder: Path) -> Path | None:
    """The top of the git work tree holding `folder`, or None."""
    top = output(folder, "rev-parse", "--show-toplevel") if folder.is_dir() else None
    return Path(top) if top else None


def resolve(ref: str | None, where: Path) -> Revision:
    """The revision `ref` names: None for the working tree of the repository holding `where`, a folder
    for that checkout (its HEAD, or its working tree if it has changes), anything else a name git
    resolves to a commit in the repository holding `where`. Each failure is one line naming the fix."""
    if ref is not None and Path(ref).is_dir() and (checkout := top_level(Path(ref))):
        return working_tree(checkout, ref)
    repository = top_level(where)
    if repository is None:
        raise FrameBenchError(f"{where} is not in a git repository: run framebench gate from a clone of the project")
    if ref is None:
        return working_tree(repository, "")
    commit = output(repository, "rev-parse", "--verify", "--quiet", "--end-of-options", f"{ref}^{{commit}}")
    if not commit:
        raise FrameBenchError(
            f"unknown revision {ref!r} in {repository}: name a branch, tag or commit git knows there (fetch it first, "
            "e.g. git fetch origin main), or a checkout's folder"
        )
    return Revision(ref, repository, commit, commit, output(repository, "rev-parse", f"{commit}^{{tree}}"))


def working_tree(repository: Path, ref: str) -> Revision:
    """The repository's working tree: its HEAD where nothing changed, else a snapshot commit on top of it."""
    head = output(repository, "rev-parse", "--verify", "--quiet", "HEAD")
    if not head:
        raise FrameBenchError(f"{repository} has no commit yet: commit the project before gating it")
    head_tree = output(repository, "rev-parse", f"{head}^{{tree}}")
    with tempfile.TemporaryDirectory(prefix="framebench-index-") as scratch:
        index = Path(scratch) / "index"
        current = Path(repository, output(repository, "rev-parse", "--git-path", "index"))
        if current.is_file():
            shutil.copyfile(current, index)  # a copy: the user's index is never touched, and unchanged files are not re-read
        env = {"GIT_INDEX_FILE": str(index)}
        added = git(repository, "add", "--all", "--", ".", env=env)
        tree = output(repository, "write-tree", env=env) if added.returncode == 0 else None
    if not tree:
        raise FrameBenchError(f"cannot take the working tree of {repository} ({(added.stderr or '').strip()[:200]})")
    if tree == head_tree:
        return Revision(ref, repository, head, head, tree)
    message = f"framebench gate: the working tree of {repository} with its changes on HEAD {head}"  # what the SHA stands for
    snapshot = output(repository, "commit-tree", tree, "-p", head, "-m", message, env=SNAPSHOT_IDENTITY)
    if not snapshot:
        raise FrameBenchError(f"cannot record the working tree of {repository} as a commit (git commit-tree failed)")
    return Revision(ref, repository, snapshot, head, tree)


def parse_url(url: str) -> tuple[Path, str] | None:
    """(repository, commit) of a `git+file://REPOSITORY@SHA` URL (Revision.requirement's), else None."""
    if not url.startswith(URL_PREFIX) or "@" not in url:
        return None
    path, _, commit = url[len(URL_PREFIX) :].rpartition("@")
    return Path(unquote(path)), commit


def tree_of(repository: Path, commit: str) -> str | None:
    return output(repository, "rev-parse", "--verify", "--quiet", f"{commit}^{{tree}}")


def read_file(repository: Path, commit: str, name: str) -> str | None:
    """The text of file `name` at `commit`, or None where the revision has none."""
    return output(repository, "show", f"{commit}:{name}")


def extract(repository: Path, commit: str, folder: Path) -> None:
    """Write the files of `commit` into `folder` (git archive: tracked files only, nothing of .git)."""
    archive = git(repository, "archive", "--format=tar", commit, binary=True)
    if archive.returncode != 0:
        raise FrameBenchError(f"cannot read commit {commit} of {repository}: {archive.stderr.decode(errors='replace').strip()[:200]}")
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(folder, filter="data")
