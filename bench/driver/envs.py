"""Framework environments: the project's lock with a few requirements overridden (another NumPy, JAX,
TensorFlow, ...), each a virtual environment built by uv so the same backend can run under several
framework versions, interleaved in one run.

An environment is content-addressed: its folder under the user cache is named by a hash of the Python
version, the lock it starts from, its overrides and the checkout framebench is installed from
(editable, so its workers run this code), so an identical request reuses it. It is built once, before
any timing, and recorded complete only when the last step succeeded (a marker file), so a build that
died half-way is rebuilt, never used.

torch is left out of environments unless an override names it: its CPU build comes from PyTorch's own
index, which a requirement line cannot reach on every machine (here it is a local wheel). The torch
and keras-torch jobs of an environment without torch are `unavailable` rows; name a torch build in
the override (with the index in UV_EXTRA_INDEX_URL) to time them.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from framebench.core.checkout import source_checkout
from framebench.errors import FrameBenchError

CURRENT = "current"  # the environment of a job run by the driver's own interpreter
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
MARKER = "framebench-env.json"  # written last: an environment without it is incomplete
LOCK_FILE = "requirements.lock"
PIP_SOURCES = ("find-links", "extra-index-url")  # pip settings that say where this machine's wheels are


class EnvironmentUnavailable(FrameBenchError):
    """An environment could not be built: its jobs are `unavailable`, the others still run."""


@dataclass(frozen=True)
class Environment:
    name: str  # as --env named it
    requirements: tuple[str, ...]  # the overrides on top of the lock
    path: Path  # the virtual environment's folder
    reused: bool  # whether it was already built

    @property
    def python(self) -> Path:
        return self.path / "bin" / "python"

    def packages(self) -> list[str]:
        """Its full package list, as `uv pip freeze` gives it."""
        return json.loads((self.path / MARKER).read_text())["packages"]


def parse_specs(texts: list[str] | tuple[str, ...] | None) -> dict[str, list[str]]:
    """{name: requirements} of the --env NAME=REQ[;REQ...] flags, each checked (a name once, a file-name-safe
    name, every requirement a PEP 508 requirement)."""
    from packaging.requirements import InvalidRequirement, Requirement

    specs: dict[str, list[str]] = {}
    for text in texts or ():
        name, equals, rest = text.partition("=")
        name = name.strip()
        if not equals or rest.startswith("=") or not NAME_PATTERN.fullmatch(name) or name == CURRENT:
            raise FrameBenchError(
                f"--env {text!r}: expected NAME=REQ[;REQ...] with NAME a plain name (letters, digits, '.', '_', '-') other "
                f"than {CURRENT!r}, e.g. --env old='numpy==2.3.5'"
            )
        if name in specs:
            raise FrameBenchError(f"--env {name} is given twice; name each environment once")
        requirements = [part.strip() for part in rest.split(";") if part.strip()]
        for requirement in requirements:
            try:
                Requirement(requirement)
            except InvalidRequirement as exc:
                reason = str(exc).splitlines()[0]
                raise FrameBenchError(f"--env {name}: {requirement!r} is not a requirement ({reason})") from None
        specs[name] = requirements
    return specs


def envs_dir() -> Path:
    """Where environments live: $FRAMEBENCH_ENVS_DIR, else framebench/envs in the user cache."""
    if os.environ.get("FRAMEBENCH_ENVS_DIR"):
        return Path(os.environ["FRAMEBENCH_ENVS_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "framebench" / "envs"


def checkout() -> Path:
    root = source_checkout()
    if root is None or not (root / LOCK_FILE).is_file():
        raise FrameBenchError(
            "--env builds environments from the project's requirements.lock: "
            "run it from a framebench checkout installed with `make install`"
        )
    return root


def overridden_names(requirements: list[str] | tuple[str, ...]) -> set[str]:
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    return {canonicalize_name(Requirement(r).name) for r in requirements}


def base_requirements(root: Path, requirements: list[str] | tuple[str, ...]) -> list[str]:
    """The lock's pins, less the packages the overrides name (torch is not in the lock: see the module)."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    overridden = overridden_names(requirements)
    lines = [line.strip() for line in (root / LOCK_FILE).read_text().splitlines()]
    pins = [line for line in lines if line and not line.startswith(("#", "-"))]
    return [pin for pin in pins if canonicalize_name(Requirement(pin).name) not in overridden]


def address(root: Path, requirements: list[str] | tuple[str, ...]) -> str:
    """The environment's folder name: what decides its contents, hashed."""
    identity = {
        "python": platform.python_version(),
        "implementation": sys.implementation.name,
        "lock": base_requirements(root, requirements),
        "overrides": list(requirements),
        "checkout": str(root),
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


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
    """Run the uv the lock pins (the binary its package ships)."""
    try:
        import uv as uv_package
    except ImportError:
        raise FrameBenchError("--env builds environments with uv: install it (`pip install uv`, pinned in requirements.lock)") from None

    return subprocess.run([uv_package.find_uv_bin(), *args], input=stdin, capture_output=True, text=True)


def uv_reason(result: subprocess.CompletedProcess) -> str:
    """uv's error in one line: its message lines, tree drawing and blank lines dropped."""
    lines = [re.sub(r"^[\s×╰─▶│├]+", "", line).strip() for line in result.stderr.splitlines()]
    lines = [line for line in lines if line and not line.startswith(("Using ", "Resolved ", "Prepared ", "Installed ", "Audited "))]
    return " ".join(lines)[:600] or f"uv exited with status {result.returncode}"


def location(requirements: list[str] | tuple[str, ...]) -> Path:
    """The folder of the environment with these overrides, built or not."""
    root = checkout()
    return envs_dir() / address(root, requirements)


def is_built(requirements: list[str] | tuple[str, ...]) -> bool:
    return (location(requirements) / MARKER).is_file()


def ensure(name: str, requirements: list[str] | tuple[str, ...]) -> Environment:
    """The environment `name`, built now if no complete one exists; EnvironmentUnavailable (one line
    naming it and uv's reason) when it cannot be built."""
    path = location(requirements)
    if (path / MARKER).is_file():
        return Environment(name, tuple(requirements), path, reused=True)
    staging = path.with_name(f"{path.name}.building-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        staging.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise EnvironmentUnavailable(f"environment {name} cannot be built: {staging.parent}: {exc.strerror or exc}") from None
    python = staging / "bin" / "python"
    steps = [
        ("venv", "--quiet", "--python", sys.executable, str(staging)),
        ("pip", "install", "--python", str(python), "--index-strategy", "unsafe-best-match", *pip_sources(), "-r", "-", *requirements),
        ("pip", "install", "--python", str(python), "--no-deps", "--no-build-isolation", "--editable", str(checkout())),
    ]
    for step in steps:
        result = uv(*step, stdin="\n".join(base_requirements(checkout(), requirements)))
        if result.returncode != 0:
            shutil.rmtree(staging, ignore_errors=True)
            raise EnvironmentUnavailable(
                f"environment {name} ({'; '.join(requirements) or 'the lock'}) cannot be built: {uv_reason(result)}"
            )
    freeze = uv("pip", "freeze", "--python", str(python)).stdout.split()
    marker = {
        "name": name,
        "requirements": list(requirements),
        "python": platform.python_version(),
        "built_at": time.time(),
        "packages": freeze,
    }
    (staging / MARKER).write_text(json.dumps(marker, indent=2))
    try:
        staging.rename(path)
    except OSError:  # another process finished the same environment first: use that one
        shutil.rmtree(staging, ignore_errors=True)
    return Environment(name, tuple(requirements), path, reused=False)


def listed() -> list[dict]:
    """Every environment under envs_dir(): its hash, name, overrides, size and build time; incomplete
    builds as such."""
    base = envs_dir()
    entries = []
    for path in sorted(base.iterdir()) if base.is_dir() else []:
        marker = path / MARKER
        info = json.loads(marker.read_text()) if marker.is_file() else {}
        entries.append(
            {
                "hash": path.name,
                "name": info.get("name", "(incomplete)"),
                "requirements": "; ".join(info.get("requirements", [])) or "-",
                "python": info.get("python", "-"),
                "built": time.strftime("%Y-%m-%d %H:%M", time.gmtime(info["built_at"])) if info else "-",
                "path": str(path),
            }
        )
    return entries


def run_envs(prune: bool) -> int:
    """`framebench envs`: list the built environments, or remove them all (--prune); they rebuild from
    uv's cache in seconds."""
    entries = listed()
    if not entries:
        print(f"no environments in {envs_dir()}")
        return 0
    for entry in entries:
        print(f"{entry['hash']}  {entry['name']:<12} python {entry['python']:<8} built {entry['built']}  {entry['requirements']}")
        if prune:
            shutil.rmtree(entry["path"])
    if prune:
        print(f"removed {len(entries)} environment(s) from {envs_dir()}")
    return 0
