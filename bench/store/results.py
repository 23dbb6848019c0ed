"""Result tables: append-only CSVs written row by row as runs progress, plus their metadata.

A results directory holds runs.csv, epochs.csv, steps.csv, gemm.csv, config.json and env.json.
Rows are appended (never rewritten) the moment they are measured. Every table is created with its
header in one atomic step, and every append writes whole rows or, if the write fails (disk full,
killed), nothing: a crash at any instant leaves every table parseable and every row whole or absent.

A results directory may come from someone else (a CI artefact): nothing here writes through a
symbolic link in it (files are replaced by rename or opened with O_NOFOLLOW), and config.json and
env.json are checked for shape (CONFIG_SHAPE, ENV_SHAPE) before any command reads them.
"""

from __future__ import annotations

import csv
import errno
import fcntl
import importlib.metadata
import io
import json
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import urllib.parse
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd

from framebench.core.seeds import compact_seeds
from framebench.errors import FrameBenchError
from framebench.store import job

LIBRARIES = ("numpy", "pandas", "scikit-learn", "threadpoolctl", "tensorflow", "tensorflow-cpu", "keras", "torch", "jax", "jaxlib", "ray")
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
    with path.open(newline="") as handle:
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
    columns = job.columns(table)
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


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise FrameBenchError(f"{path} cannot be read ({exc}); it is not a framebench results file") from None


NUMBER = (int, float)
STRINGS = "list of strings"
CONFIG_SHAPE = {  # config.json's fields and what each holds (a field missing is older framebench's, and allowed)
    "format_version": int,
    "framebench_version": str,
    "preset": str,
    "dataset": str,
    "data_dir": (str, type(None)),
    "data_source": str,
    "model": dict,
    "train": dict,
    "threads": int,
    "sweep": {"field": str, "values": STRINGS},
    "target_acc": NUMBER,
    "floors": bool,
    "matrices": [{"axes": {"*": STRINGS}, "repeats": int}],
    "envs": {"*": STRINGS},
}
NODE_SHAPE = {  # one node's environment in env.json
    "python": str,
    "libraries": {"*": str},
    "cpu": str,
    "cores": (int, type(None)),
    "threads": int,
    "os": str,
    "machine": str,
    "gpus": [dict],
    "kernel_settings": {"*": str},
}
ENV_SHAPE = {  # env.json's fields this framebench reads and what each holds (others are kept, unread)
    **NODE_SHAPE,
    "git_commit": str,
    "command": str,
    "started_utc": str,
    "nodes": {"*": NODE_SHAPE},
    "earlier": [dict],
    "environments": {"*": dict},
}


def shape_error(value, shape, where: str) -> str | None:
    """Where `value` departs from `shape` (a type, a tuple of types, STRINGS, a {field: shape} dict
    whose fields are optional and whose "*" is any other field's, or a one-item list: a list of that
    shape), or None."""
    if isinstance(shape, dict):
        if not isinstance(value, dict):
            return f"{where} holds {str(value)[:60]!r}, not an object"
        fields = ((k, v, shape.get(k, shape.get("*"))) for k, v in value.items())
        return next((e for k, v, inner in fields if inner is not None and (e := shape_error(v, inner, f"{where}.{k}"))), None)
    if isinstance(shape, list):
        if not isinstance(value, list):
            return f"{where} holds {str(value)[:60]!r}, not a list"
        return next((e for i, v in enumerate(value) if (e := shape_error(v, shape[0], f"{where}[{i}]"))), None)
    if shape == STRINGS:
        return shape_error(value, [str], where)
    types = shape if isinstance(shape, tuple) else (shape,)
    if isinstance(value, bool) != (bool in types) or not isinstance(value, types):
        return f"{where} holds {str(value)[:60]!r}, not {' or '.join(t.__name__ for t in types)}"
    return None


def read_metadata(path: Path, shape: dict, known_only: bool) -> dict:
    """config.json or env.json, checked against its shape; `known_only` refuses fields this
    framebench does not know (a newer framebench's). Anything else is one line naming the field."""
    data = read_json(path)
    fix = "it is damaged or from another framebench version; rerun the matrix with this one"
    if not isinstance(data, dict):
        raise FrameBenchError(f"{path} holds {str(data)[:60]!r}, not an object; {fix}")
    if known_only and (unknown := sorted(set(data) - set(shape))):
        raise FrameBenchError(f"{path} has field {unknown[0]!r}, which this framebench does not know; {fix}")
    if error := shape_error(data, shape, path.name):
        raise FrameBenchError(f"{path}: {error}; {fix}")
    return data


def read_config(directory: Path) -> dict:
    return read_metadata(directory / "config.json", CONFIG_SHAPE, known_only=True)


def read_env(directory: Path) -> dict:
    """env.json, or {} where the directory has none."""
    return read_metadata(directory / "env.json", ENV_SHAPE, known_only=False) if (directory / "env.json").exists() else {}


def check_no_symlinks(directory: Path) -> None:
    """Refuse a results directory in which a file framebench writes is a symbolic link: a directory
    from elsewhere could point it at any file of the user's."""
    written = [f"{t}.csv" for t in job.TABLE_NAMES] + ["config.json", "env.json", LOCK_FILE, "logs", "report.md"]
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


def read_table(directory: Path, table: str) -> pd.DataFrame:
    """One table, every whole row of it: a torn last line is left out with a warning; anything that is
    not a framebench table is one clear error."""
    columns = job.columns(table)
    path = directory / f"{table}.csv"
    if not path.exists():
        return empty_table(columns)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise FrameBenchError(f"{path} cannot be read ({exc.strerror or exc})") from None
    if not raw:
        return empty_table(columns)
    torn = not raw.endswith(b"\n")
    try:
        text = raw[: raw.rfind(b"\n") + 1].decode()  # whole lines only (the header is written whole, so it is there)
        header = next(csv.reader(io.StringIO(text)))
        if header != columns:
            raise ValueError(f"columns {header[:4]}… are not {table}.csv's")
        dtypes = {c: str for c in job.text_columns() if c in columns}
        missing = {c: [""] if c in dtypes else ["", "nan", "NaN", "-nan"] for c in columns}  # a number column's NaN, however written
        rows = pd.read_csv(io.StringIO(text), keep_default_na=False, na_values=missing, dtype=dtypes).fillna({c: "" for c in dtypes})
    except StopIteration:
        raise FrameBenchError(f"{path} is not a framebench table (no header line); pass a directory `framebench run` wrote") from None
    except (UnicodeDecodeError, ValueError, pd.errors.ParserError) as exc:
        reason = (str(exc).splitlines() or [type(exc).__name__])[0][:120]
        raise FrameBenchError(f"{path} is not a framebench table ({reason}); pass a directory `framebench run` wrote") from None
    if torn:
        print(f"warning: {path}: ignoring a torn last row (the writer was interrupted)", file=sys.stderr)
    return rows


def empty_table(columns: list[str]) -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype=str if c in job.text_columns() else float) for c in columns})


def load_results(directory: str | Path) -> dict:
    """Read a results directory back: {'runs', 'epochs', 'steps', 'gemm'} DataFrames plus 'config' and
    'env' dicts. `runs` gains the floors and efficiencies derived from gemm.csv (framebench.core.gemm)."""
    from framebench.core.gemm import with_efficiencies

    directory = Path(directory)
    for required in ("runs.csv", "config.json"):
        if not (directory / required).is_file():
            raise FrameBenchError(f"{directory} is not a results directory (no {required}); pass the folder `framebench run` printed")
    tables: dict = {table: read_table(directory, table) for table in job.TABLE_NAMES}
    for table in job.TABLE_NAMES:  # a renamed or copied directory reads as itself: its rows may carry the old name
        if "run_id" in tables[table]:
            tables[table]["run_id"] = directory.name
    tables["config"] = read_config(directory)
    tables["env"] = read_env(directory)
    tables["runs"] = with_efficiencies(tables["runs"], tables["gemm"])
    return tables


def node_environments(env: dict) -> dict[str, dict]:
    """{node name: its environment} from env.json (one written before nodes were recorded is its own node)."""
    return env.get("nodes") or {env.get("machine", ""): env}


def swept_field(config: dict) -> str:
    """The field config.json's sweep varies ("" when the run is no sweep)."""
    return config.get("sweep", {}).get("field", "")


def seeds_text(config: dict) -> str:
    """The seeds config.json's matrices ran, e.g. "0-9" ("" when none is recorded)."""
    default = next(d.default for d in job.DIMENSIONS if d.name == "seed")
    return compact_seeds([seed for m in config.get("matrices", []) for seed in m["axes"].get("seed", [default])])


def library_versions() -> dict[str, str]:
    versions = {}
    for library in LIBRARIES:
        try:
            versions[library] = importlib.metadata.version(library)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def gpu_info() -> list[dict]:
    """Name, driver and memory of each NVIDIA GPU nvidia-smi sees; empty without one."""
    if not shutil.which("nvidia-smi"):
        return []
    query = ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"]
    try:
        lines = subprocess.run(query, capture_output=True, text=True, timeout=20, check=True).stdout.strip().splitlines()
        banner = subprocess.run(["nvidia-smi"], capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    cuda = re.search(r"CUDA Version:\s*([\d.]+)", banner)
    return [
        {
            **dict(zip(("name", "driver", "memory"), (part.strip() for part in line.split(",")), strict=False)),
            "cuda": cuda.group(1) if cuda else "",
        }
        for line in lines
    ]


KERNEL_ENV_VARS = ("OPENBLAS_CORETYPE", "MKL_CBWR", "MKL_ENABLE_INSTRUCTIONS", "DNNL_MAX_CPU_ISA", "TF_ENABLE_ONEDNN_OPTS", "XLA_FLAGS")


def kernel_settings() -> dict[str, str]:
    """Environment variables that choose which CPU kernels the libraries run (set ones only), and the
    instruction set NumPy's BLAS picked: OPENBLAS_CORETYPE, for one, can hold OpenBLAS to older
    kernels than the CPU has, which changes every GEMM floor."""
    from threadpoolctl import threadpool_info

    settings = {name: os.environ[name] for name in KERNEL_ENV_VARS if name in os.environ}
    for pool in threadpool_info():  # NumPy's own: whether SciPy's copy is loaded yet depends on what ran first
        if pool.get("user_api") == "blas" and "numpy" in Path(pool.get("filepath", "")).parent.name:
            settings[f"blas:{pool['internal_api']}"] = f"{pool.get('version')} {pool.get('architecture')}"
    return settings


def source_checkout() -> Path | None:
    """The folder framebench was installed from in editable mode (`make install`), as pip records it
    (PEP 610's direct_url.json); None for an installed wheel, which has no checkout."""
    try:
        direct = json.loads(importlib.metadata.distribution("framebench").read_text("direct_url.json") or "{}")
    except (importlib.metadata.PackageNotFoundError, json.JSONDecodeError):
        return None
    if not direct.get("dir_info", {}).get("editable") or not direct.get("url", "").startswith("file://"):
        return None
    return Path(urllib.parse.unquote(direct["url"][len("file://") :]))


def git_commit() -> str:
    """HEAD of the framebench checkout, with '+dirty' when tracked files have uncommitted changes
    (untracked files do not count: the results directory being written is one)."""
    root = source_checkout()
    if root is None:
        return "unknown (not an editable install)"
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=root, capture_output=True, text=True, check=True
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return commit + ("+dirty" if dirty.strip() else "")


def node_environment(threads: int) -> dict:
    """What makes this machine's timings what they are; recorded per node in env.json."""
    return {
        "python": sys.version.split()[0],
        "libraries": library_versions(),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "threads": threads,
        "os": platform.platform(),
        "machine": socket.gethostname(),
        "gpus": gpu_info(),
        "kernel_settings": kernel_settings(),
    }


def environment(threads: int, nodes: dict[str, dict], earlier: dict | None) -> dict:
    """env.json: the driver's environment (where the tables were written) and every node's. Extending
    a directory (`earlier`, its env.json) keeps the nodes and commands recorded before: its earlier
    rows came from them."""
    session = {"git_commit": git_commit(), "command": " ".join(sys.argv), "started_utc": datetime.now(UTC).isoformat(timespec="seconds")}
    if not earlier:
        return {**node_environment(threads), **session, "nodes": nodes}
    sessions = earlier.get("earlier", []) + [{key: earlier.get(key) for key in session}]
    return {**node_environment(threads), **session, "nodes": {**node_environments(earlier), **nodes}, "earlier": sessions}
