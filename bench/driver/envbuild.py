"""Building a framework environment (framebench.driver.envs says what one is and where it lives), apart
from it because only the driver's preparation builds: with uv, once, before any timing, in a staging
folder beside its place that is moved there whole once the last step succeeded and the marker is
written, so a build that died half-way is rebuilt, never used. A revision's environment is built in
its two layers: the lock layer (when no revision with the same lock built it), then the revision's own.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from framebench.driver import revisions
from framebench.driver.envs import (
    MARKER,
    VENV_FILE,
    Environment,
    EnvironmentUnavailable,
    RevisionSource,
    base_requirements,
    checkout,
    layer_location,
    location,
    lock_pins,
    other_overrides,
    read_marker,
    revision_source,
    worker_protocol,
)
from framebench.errors import FrameBenchError

STAGING_PATTERN = re.compile(r"([0-9a-f]{16})\.building-([0-9]+)")  # the folder a build writes into: its address, the builder's pid
PIP_SOURCES = ("find-links", "extra-index-url")  # pip settings that say where this machine's wheels are


def pip_sources() -> list[str]:
    """uv flags for the wheel sources pip is configured with here (`pip config list`): find-links
    folders and extra indexes, searched like pip does (best match across them all)."""
    try:
        listing = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.TimeoutExpired):
        return []
    pairs: dict[tuple[str, str], None] = {}
    for line in listing.splitlines():
        key, _, value = line.partition("=")
        setting = key.rsplit(".", 1)[-1]
        if setting in PIP_SOURCES:
            pairs.update({(f"--{setting}", location): None for location in value.strip().strip("'\"").split()})
    return [part for pair in pairs for part in pair]


def uv(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    """Run the uv the lock pins (the binary its package ships), in a session of its own so that
    whatever stops the driver (a signal, an error) kills it and every process it started."""
    try:
        import uv as uv_package
    except ImportError:
        raise FrameBenchError("--env builds environments with uv: install it (`pip install uv`, pinned in requirements.lock)") from None

    command = [uv_package.find_uv_bin(), *args]
    process = subprocess.Popen(
        command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        stdout, stderr = process.communicate(stdin)
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        raise
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


def uv_reason(result: subprocess.CompletedProcess) -> str:
    """uv's error in one line: its message lines, tree drawing and blank lines dropped."""
    lines = [re.sub(r"^[\s×╰─▶│├]+", "", line).strip() for line in result.stderr.splitlines()]
    lines = [line for line in lines if line and not line.startswith(("Using ", "Resolved ", "Prepared ", "Installed ", "Audited "))]
    return " ".join(lines)[:600] or f"uv exited with status {result.returncode}"


class BuildFailed(Exception):
    """One step of a build failed, for the reason it holds."""


def ensure(name: str, requirements: list[str] | tuple[str, ...]) -> Environment:
    """The environment `name`, built now if no complete one exists; EnvironmentUnavailable (one line
    naming it and uv's reason) when it cannot be built."""
    path = location(requirements)
    if path.exists():
        read_marker(path)  # a damaged one is reported with its fix, never used
        return Environment(name, tuple(requirements), path, reused=True)
    source = revision_source(requirements)
    what = f"environment {name} ({'; '.join(requirements) or 'the lock'})"
    try:
        if source is None:
            pins = base_requirements(checkout(), requirements)
            steps = [make_venv, install(pins, requirements), install_editable(checkout())]
            build(path, {"name": name, "requirements": list(requirements)}, steps, freeze)
        else:
            others = other_overrides(requirements)
            layer = layer_location(source, requirements)
            if layer.exists():
                read_marker(layer)  # a damaged layer is reported with its fix, never built upon
            else:
                lock_steps = [make_venv, install(lock_pins(source.lock, others), others)]
                build(layer, {"name": "(lock layer)", "requirements": others}, lock_steps, freeze)
            record = {"name": name, "requirements": list(requirements), "lock_layer": str(layer)}
            record["revision"] = {"repository": str(source.repository), "commit": source.commit, "tree": source.tree}
            steps = [make_venv, see_layer(layer), install_revision(source)]
            revision = [r for r in requirements if r not in others]  # framebench @ git+file://REPOSITORY@SHA
            build(path, record, steps, lambda _python: json.loads((layer / MARKER).read_text())["packages"] + revision, worker_protocol)
    except BuildFailed as exc:
        raise EnvironmentUnavailable(f"{what} cannot be built: {exc}") from None
    return Environment(name, tuple(requirements), path, reused=False)


def build(path: Path, record: dict, steps: list, packages, protocol=None) -> None:
    """Build an environment in a staging folder beside `path` by `steps` (each given the staging
    folder), then record it (`record`, its `packages(python)`, the `protocol(python)` its worker
    speaks where asked) and move it into place whole."""
    staging = path.with_name(f"{path.name}.building-{os.getpid()}")
    remove_interrupted_builds(path)
    shutil.rmtree(staging, ignore_errors=True)
    try:
        staging.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BuildFailed(f"{staging.parent}: {exc.strerror or exc}") from None
    try:
        for step in steps:
            step(staging)
        python = staging / "bin" / "python"
        marker = {**record, "python": platform.python_version(), "built_at": time.time(), "packages": packages(python)}
        marker |= {"protocol": protocol(python)} if protocol else {}
        (staging / MARKER).write_text(json.dumps(marker, indent=2))
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    try:
        staging.rename(path)
    except OSError as exc:  # another process finished the same environment first: use that one
        if not path.exists():
            raise BuildFailed(f"{path}: {exc.strerror or exc}") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's
        return True
    return True


def interrupted_build(path: Path) -> bool:
    """Whether `path` is the staging folder of a build whose process is gone (killed outright)."""
    match = STAGING_PATTERN.fullmatch(path.name)
    return bool(match) and not path.is_symlink() and (path / VENV_FILE).is_file() and not process_alive(int(match.group(2)))


def remove_interrupted_builds(path: Path) -> None:
    """Remove what builds of the environment at `path` killed outright left behind."""
    for staging in path.parent.glob(f"{path.name}.building-*") if path.parent.is_dir() else ():
        if interrupted_build(staging):
            shutil.rmtree(staging, ignore_errors=True)


def run_uv(*args: str, stdin: str | None = None) -> None:
    result = uv(*args, stdin=stdin)
    if result.returncode != 0:
        raise BuildFailed(uv_reason(result))


def make_venv(staging: Path) -> None:
    run_uv("venv", "--quiet", "--python", sys.executable, str(staging))


def install(pins: list[str], overrides: list[str] | tuple[str, ...]):
    """The step installing the lock's pins (on stdin) and the overrides, compiled to bytecode: a worker's
    imports then cost the same wherever Python may not write its caches (PYTHONDONTWRITEBYTECODE)."""
    return lambda staging: run_uv(
        "pip", "install", "--python", str(staging / "bin" / "python"), "--compile-bytecode", "--index-strategy", "unsafe-best-match",
        *pip_sources(), "-r", "-", *overrides, stdin="\n".join(pins),
    )  # fmt: skip


def install_editable(root: Path):
    """The step installing this checkout's framebench, editable: its workers run this code."""
    return lambda staging: run_uv(
        "pip", "install", "--python", str(staging / "bin" / "python"), "--no-deps", "--no-build-isolation", "--editable", str(root)
    )  # fmt: skip


def site_packages(environment: Path) -> Path:
    return environment / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"


def see_layer(layer: Path):
    """The step letting an environment import the lock layer's packages after its own: a .pth line
    adding the layer's site-packages as a site directory (its own .pth files processed too)."""
    return lambda staging: (site_packages(staging) / "framebench-lock-layer.pth").write_text(
        f"import site; site.addsitedir({str(site_packages(layer))!r})\n"
    )


def install_revision(source: RevisionSource):
    """The step installing the revision's framebench from its commit's files (a regular install: the
    files are copied in, so the environment depends on no folder but the lock layer)."""

    def step(staging: Path) -> None:
        with tempfile.TemporaryDirectory(prefix="framebench-revision-") as folder:
            try:
                revisions.extract(source.repository, source.commit, Path(folder))
            except FrameBenchError as exc:
                raise BuildFailed(str(exc)) from None
            python = str(staging / "bin" / "python")
            run_uv("pip", "install", "--python", python, "--compile-bytecode", "--no-deps", "--no-build-isolation", folder)

    return step


def freeze(python: Path) -> list[str]:
    """The environment's own package list, as `uv pip freeze` gives it."""
    return uv("pip", "freeze", "--python", str(python)).stdout.split()
