"""Writing a results directory: append-only CSV tables written row by row as runs progress, metadata
replaced whole, one writer at a time.

Rows are appended (never rewritten) the moment they are measured. Every table is created with its
header in one atomic step, and every append writes whole rows or, if the write fails (disk full,
killed), nothing: a crash at any instant leaves every table parseable and every row whole or absent.
A results directory may come from someone else (a CI artefact): nothing here writes through a
symbolic link in it (files are replaced by rename or opened with O_NOFOLLOW). Reading is
framebench.store.reader's.
"""

from __future__ import annotations

import csv
import errno
import fcntl
import io
import json
import os
import shutil
import socket
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

from framebench.errors import FrameBenchError
from framebench.store import schema

LOCK_FILE = ".lock"
NO_HARD_LINKS = (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK)  # os.link on vfat, exFAT, some mounts
UMASK = os.umask(0o022)  # read (and put back at once): files made via mkstemp get the usual permissions
os.umask(UMASK)


def new_run_id() -> str:
    return datetime.now(UTC).strftime("%Y%m%d-%H%M%S")


class ResultsWriteError(FrameBenchError):
    """The results directory cannot take more data (disk full, read-only, removed)."""


def write_failure(path: Path, exc: OSError, directory: Path) -> ResultsWriteError:
    return ResultsWriteError(
        f"cannot write {path}: {exc.strerror or exc}; free space or fix permissions, then finish the run "
        f"with `framebench run --resume {directory}`"
    )


def temporary_beside(path: Path) -> tuple[int, str]:
    """A new file in `path`'s folder, to be renamed onto it, with the permissions a plain open would
    give it (mkstemp's are owner-only)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.fchmod(fd, 0o666 & ~UMASK)
    return fd, tmp


def create_with_header(path: Path, columns: list[str]) -> None:
    """Create `path` holding only the header, atomically: it exists complete or not at all."""
    fd, tmp = temporary_beside(path)
    try:
        with os.fdopen(fd, "w", newline="") as handle:
            csv.writer(handle).writerow(columns)
            handle.flush()
            os.fsync(handle.fileno())
        try:
            os.link(tmp, path)  # fails if another writer created it first: theirs stays
        except FileExistsError:
            pass
        except OSError as exc:
            if exc.errno not in NO_HARD_LINKS:
                raise
            claim_and_replace(tmp, path)
    finally:
        if os.path.lexists(tmp):
            os.unlink(tmp)


def claim_and_replace(tmp: str, path: Path) -> None:
    """create_with_header on a filesystem without hard links: claim the name (O_EXCL: another
    writer's file stays), then rename the complete file onto the claim (a reader sees an empty
    table or the whole header, never part of it)."""
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o666))
    except FileExistsError:
        return
    os.replace(tmp, path)


def check_header(path: Path, columns: list[str]) -> None:
    with path.open(newline="", encoding="utf-8-sig") as handle:  # a byte order mark (a spreadsheet's save) is no part of the header
        header = next(csv.reader(handle), None)
    if header != columns:
        raise FrameBenchError(
            f"{path} has columns {header} where this framebench writes {columns}; it was written by another version: use a new --run-id"
        )


def append_rows(directory: Path, table: str, rows: list[dict]) -> None:
    """Append whole `rows` to `table`.csv, creating it with its header first when it is missing or empty.

    A previous writer killed mid-row leaves a last line without a newline: it is cut off before
    appending, so no row is ever glued to a torn one. A failed write is undone to the last whole row.
    """
    columns = schema.columns(table)
    path = directory / f"{table}.csv"
    buffer = io.StringIO()
    csv.DictWriter(buffer, fieldnames=columns, extrasaction="raise", lineterminator="\n").writerows(map(one_line, rows))
    data = buffer.getvalue().encode()
    try:
        if not path.exists() or path.stat().st_size == 0:
            if path.exists():
                path.unlink()
            create_with_header(path, columns)
        fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_NOFOLLOW)
    except OSError as exc:
        raise write_failure(path, exc, directory) from None
    try:
        size = cut_torn_tail(fd)
        if size == 0:  # nothing whole was left: the header goes first
            data = (",".join(columns) + "\n").encode() + data
        else:
            check_header(path, columns)
        try:
            written = 0
            while written < len(data):
                written += os.write(fd, data[written:])
            os.fsync(fd)
        except OSError as exc:
            os.ftruncate(fd, size)
            raise write_failure(path, exc, directory) from None
    finally:
        os.close(fd)


def one_line(row: dict) -> dict:
    """The row with line breaks in its text replaced by spaces: a row is then exactly one line, so a
    last line without a newline is always a torn row and never the end of a quoted cell."""
    return {k: " ".join(v.splitlines()) if isinstance(v, str) else v for k, v in row.items()}


def cut_torn_tail(fd: int) -> int:
    """Truncate a last line that has no newline (a row torn by a kill); returns the file's size."""
    size = os.fstat(fd).st_size
    if size == 0 or os.pread(fd, 1, size - 1) == b"\n":
        return size
    keep, end = 0, size
    while end > 0:  # search back, block by block, for the end of the last whole line
        start = max(end - (1 << 16), 0)
        cut = os.pread(fd, end - start, start).rfind(b"\n")
        if cut >= 0:
            keep = start + cut + 1
            break
        end = start
    os.ftruncate(fd, keep)
    print(f"warning: removed a torn last row ({size - keep} bytes) left by an interrupted writer", file=sys.stderr)
    return keep


def replace_file(path: Path, data: bytes) -> None:
    """Write `path` atomically by renaming a complete new file onto it: a reader sees the old or the
    new file, never half of one, and a symbolic link planted at `path` is replaced, never followed.
    Raises OSError."""
    fd, tmp = temporary_beside(path)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.lexists(tmp):
            os.unlink(tmp)


def write_json(directory: Path, name: str, data: dict) -> None:
    """Write metadata atomically (replace_file)."""
    path = directory / name
    try:
        replace_file(path, (json.dumps(data, indent=2, sort_keys=True, default=str) + "\n").encode())
    except OSError as exc:
        raise write_failure(path, exc, directory) from None


def check_no_symlinks(directory: Path) -> None:
    """Refuse a results directory in which a file framebench writes is a symbolic link: a directory
    from elsewhere could point it at any file of the user's."""
    written = [f"{t}.csv" for t in schema.TABLE_NAMES] + ["config.json", "machine.json", LOCK_FILE, "logs", "report.md"]
    for name in written:
        if (directory / name).is_symlink():
            raise FrameBenchError(f"{directory / name} is a symbolic link; framebench never writes through one: remove it")


def remove_empty_directory(directory: Path) -> None:
    """Remove a results directory this invocation created and left empty but for its lock."""
    (directory / LOCK_FILE).unlink(missing_ok=True)
    try:
        directory.rmdir()
    except OSError:  # something else is in it now: it stays
        pass


class DirectoryLock:
    """Held by the one `framebench run` writing a results directory; a second writer is refused."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / LOCK_FILE
        self.handle = None

    def __enter__(self) -> DirectoryLock:
        check_no_symlinks(self.path.parent)
        try:
            self.handle = os.fdopen(os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o666), "r+")
            fcntl.flock(self.handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.handle.seek(0)
            holder = self.handle.read().strip() or "another process"
            self.handle.close()
            raise FrameBenchError(f"{self.path.parent} is being written by {holder}; wait for it, or use another --run-id") from None
        except OSError as exc:
            raise write_failure(self.path, exc, self.path.parent) from None
        self.handle.seek(0)
        self.handle.truncate()
        self.handle.write(f"framebench run pid {os.getpid()} on {socket.gethostname()}")
        self.handle.flush()
        return self

    def __exit__(self, *exc_info) -> None:
        self.handle.close()


def prepare_directory(parent: str | Path, run_id: str) -> Path:
    """The run's directory, created; a results parent that is a file or cannot be written is one clear error."""
    parent = Path(parent)
    directory = parent / run_id
    if parent.exists() and not parent.is_dir():
        raise FrameBenchError(f"--results-dir {parent} is a file, not a folder; pass a folder")
    try:
        directory.mkdir(parents=True, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(dir=directory, prefix=".write-test-")
        probe.close()
    except OSError as exc:
        raise FrameBenchError(f"cannot write results under {parent} ({exc.strerror or exc}); pass a writable --results-dir") from None
    return directory


def check_free_space(directory: Path, needed_bytes: int) -> None:
    """Refuse to start a matrix whose tables would not fit on the disk (found now, not mid-run)."""
    free = shutil.disk_usage(directory).free
    if free < needed_bytes:
        raise FrameBenchError(
            f"{directory} has {free / 1e6:.1f} MB free but this matrix writes about {needed_bytes / 1e6:.1f} MB "
            "of tables; free space or pass another --results-dir"
        )
