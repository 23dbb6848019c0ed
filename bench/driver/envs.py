"""Framework environments: what one is and where it lives. An environment is the project's lock with a
few requirements overridden (another NumPy, JAX, TensorFlow, ...), a virtual environment built by uv
(framebench.driver.envbuild) so the same backend can run under several framework versions,
interleaved in one run; `framebench envs` lists and prunes them (framebench.driver.envlist).

An environment is content-addressed: its folder under the user cache is named by a hash of the Python
version, the lock it starts from, its overrides and the checkout framebench is installed from
(editable, so its workers run this code), so an identical request reuses it. It is complete only
when its marker file is there (written last), which also records what it holds.

torch is left out of environments unless an override names it: its CPU build comes from PyTorch's own
index, which a requirement line cannot reach on every machine (here it is a local wheel). The torch
and keras-torch jobs of an environment without torch are `unavailable` rows; name a torch build in
the override (with the index in UV_EXTRA_INDEX_URL) to time them.

An override `framebench @ git+file://REPOSITORY@SHA` (a revision, framebench.driver.revisions: what
`framebench gate` builds its sides from) builds the environment from that revision instead: its own
requirements.lock, its own framebench (installed from the commit's files), in two layers. The lock
layer (the lock and the other overrides, addressed by them alone) is built once and shared by every
revision with the same lock, which most changes are; the revision layer is a small virtual
environment that sees the lock layer's packages (a .pth file) and holds only that revision's
framebench, addressed by the lock layer and the commit's tree: seconds to make.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from framebench.core.checkout import source_checkout
from framebench.driver import revisions
from framebench.errors import FrameBenchError

CURRENT = "current"  # the environment of a job run by the driver's own interpreter
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
MARKER = "framebench-env.json"  # written last: an environment without it is incomplete
ADDRESS_PATTERN = re.compile(r"[0-9a-f]{16}")  # an environment's folder name (address())
VENV_FILE = "pyvenv.cfg"  # what every virtual environment holds
LOCK_FILE = "requirements.lock"
PROTOCOL_TIMEOUT_S = 120.0  # asking an environment's worker its protocol version (an import of framebench)


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
        return read_marker(self.path)["packages"]

    def protocol(self) -> str:
        """The worker protocol its framebench speaks ("" for one that predates protocols), recorded when
        it was built (asked now of an environment built before that was recorded)."""
        recorded = json.loads((self.path / MARKER).read_text())
        return recorded["protocol"] if "protocol" in recorded else worker_protocol(self.python)


MARKER_SHAPE = {"name": str, "requirements": list, "python": str, "built_at": (int, float), "packages": list}
LATEST_BUILD_TIME = 4e9  # seconds since 1970 (the year 2096): a marker's built_at beyond it is not one ensure() wrote


class DamagedEnvironment(EnvironmentUnavailable):
    """A folder named like an environment that is not one ensure() finished: no virtual environment, or
    its marker missing or of another shape."""


def read_marker(path: Path) -> dict:
    """The marker of the environment at `path`, checked for what ensure() leaves (a virtual environment,
    a marker of MARKER_SHAPE); DamagedEnvironment naming the fix for anything else: it was not finished
    by framebench, or was changed since."""
    try:
        marker = json.loads((path / MARKER).read_text())
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
        why = f"{MARKER} cannot be read ({type(exc).__name__})"
    else:
        wrong = [key for key, kind in MARKER_SHAPE.items() if not isinstance(marker, dict) or not isinstance(marker.get(key), kind)]
        if not wrong and not all(isinstance(item, str) for item in (*marker["requirements"], *marker["packages"])):
            wrong = ["requirements or packages"]
        if not wrong and not 0 <= marker["built_at"] <= LATEST_BUILD_TIME:
            wrong = ["built_at"]
        why = f"{MARKER} is not a framebench marker ({', '.join(wrong)} of the wrong shape)" if wrong else ""
        if not why and not (path / VENV_FILE).is_file():
            why = f"no {VENV_FILE}: not a virtual environment"
        if not why:
            return marker
    raise DamagedEnvironment(
        f"{path} is not a usable environment ({why}); if framebench built it, remove it (`rm -r {path}`) and it is rebuilt when needed"
    )


def parse_specs(texts: list[str] | tuple[str, ...] | None) -> dict[str, list[str]]:
    """{name: requirements} of the --env NAME=REQ[;REQ...] flags, each checked (a name once, a file-name-safe
    name, every requirement a PEP 508 requirement). The command line is the user's own: a requirement
    naming a URL (the README's torch wheel) is built without --trust-environments."""
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
        specs[name] = [part.strip() for part in rest.split(";") if part.strip()]
        check_requirements(f"--env {name}", specs[name], trusted=True)
    return specs


def check_requirements(where: str, requirements: list[str], trusted: bool) -> None:
    """Every requirement a PEP 508 requirement (never a pip or uv option, nor a bare path: uv would take
    those as its own arguments); one naming a URL (NAME @ URL, file:// paths included) only where
    `trusted`: building it downloads and runs whatever is there. `where` names the source in the error."""
    from packaging.requirements import InvalidRequirement, Requirement

    for requirement in requirements:
        try:
            url = Requirement(requirement).url
        except InvalidRequirement as exc:
            reason = str(exc).splitlines()[0]
            raise FrameBenchError(f"{where}: {requirement!r} is not a requirement ({reason})") from None
        if url and not trusted:
            raise FrameBenchError(
                f"{where}: {requirement!r} installs from {url[:120]!r}, which would be downloaded and run; "
                "pass --trust-environments if you trust it"
            )


def check_recorded(specs: dict[str, list[str]], trusted: bool, source: str) -> None:
    """The environments a results directory's config.json names (`source`), held to --env's checks: it
    may come from anyone, so a URL requirement is built only with --trust-environments."""
    for name, requirements in specs.items():
        if not NAME_PATTERN.fullmatch(name) or name == CURRENT:
            raise FrameBenchError(f"{source} names an environment {name[:60]!r}, which is not a plain name; it cannot be run")
        check_requirements(f"{source}: environment {name}", requirements, trusted)


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


def lock_pins(lock: str, requirements: list[str] | tuple[str, ...]) -> list[str]:
    """A lock file's pins, less the packages the overrides name (torch is not in the lock: see the module)."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    overridden = overridden_names(requirements)
    lines = [line.strip() for line in lock.splitlines()]
    pins = [line for line in lines if line and not line.startswith(("#", "-"))]
    return [pin for pin in pins if canonicalize_name(Requirement(pin).name) not in overridden]


def base_requirements(root: Path, requirements: list[str] | tuple[str, ...]) -> list[str]:
    """The checkout's lock pins, less the packages the overrides name."""
    return lock_pins((root / LOCK_FILE).read_text(), requirements)


def hashed(identity: dict) -> str:
    """A folder name for what decides an environment's contents."""
    full = {"python": platform.python_version(), "implementation": sys.implementation.name, **identity}
    return hashlib.sha256(json.dumps(full, sort_keys=True).encode()).hexdigest()[:16]


def address(root: Path, requirements: list[str] | tuple[str, ...]) -> str:
    """The folder name of an environment of this checkout: what decides its contents, hashed."""
    return hashed({"lock": base_requirements(root, requirements), "overrides": list(requirements), "checkout": str(root)})


@dataclass(frozen=True)
class RevisionSource:
    """The revision an environment's framebench comes from (an override `framebench @ git+file://...`)."""

    repository: Path  # the git repository holding it
    commit: str  # its SHA
    tree: str  # the SHA of its tree, which addresses its layer
    lock: str  # the text of its requirements.lock


def revision_source(requirements: list[str] | tuple[str, ...]) -> RevisionSource | None:
    """The revision the overrides name for framebench (None: this checkout's framebench); one whose
    commit or requirements.lock cannot be read is EnvironmentUnavailable."""
    from packaging.requirements import Requirement

    for text in requirements:
        requirement = Requirement(text)
        if requirement.name.lower() != "framebench" or not requirement.url or not (parsed := revisions.parse_url(requirement.url)):
            continue
        repository, commit = parsed
        tree = revisions.tree_of(repository, commit) if repository.is_dir() else None
        if not tree:
            raise EnvironmentUnavailable(f"{text}: no commit {commit} in {repository}")
        lock = revisions.read_file(repository, commit, LOCK_FILE)
        if lock is None:
            raise EnvironmentUnavailable(
                f"revision {commit[:12]} of {repository} has no {LOCK_FILE}, so its environment is unknown: a revision "
                "from before the lock cannot be built"
            )
        return RevisionSource(repository, commit, tree, lock)
    return None


def other_overrides(requirements: list[str] | tuple[str, ...]) -> list[str]:
    """The overrides but a revision's framebench (which is the revision layer, not the lock layer's)."""
    return [r for r in requirements if "framebench" not in overridden_names([r])]


def location(requirements: list[str] | tuple[str, ...]) -> Path:
    """The folder of the environment with these overrides, built or not."""
    source = revision_source(requirements)
    if source is None:
        return envs_dir() / address(checkout(), requirements)
    return envs_dir() / hashed({"lock layer": layer_location(source, requirements).name, "tree": source.tree})


def layer_location(source: RevisionSource, requirements: list[str] | tuple[str, ...]) -> Path:
    """The folder of a revision's lock layer: its lock's pins and the other overrides decide it."""
    others = other_overrides(requirements)
    return envs_dir() / hashed({"lock": lock_pins(source.lock, others), "overrides": others, "layer": "lock"})


def is_built(requirements: list[str] | tuple[str, ...]) -> bool:
    try:
        return (location(requirements) / MARKER).is_file()
    except EnvironmentUnavailable:  # ensure() says why
        return False


def worker_protocol(python: Path) -> str:
    """The worker protocol version the framebench of `python` speaks (`python -m framebench.driver.worker
    --protocol`), "" if it says none (a framebench from before protocols)."""
    try:
        answer = subprocess.run(
            [str(python), "-m", "framebench.driver.worker", "--protocol"], capture_output=True, text=True, timeout=PROTOCOL_TIMEOUT_S
        )
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return answer.stdout.strip() if answer.returncode == 0 else ""
