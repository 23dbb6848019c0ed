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

An override `framebench @ git+file://REPOSITORY@SHA` (a revision, framebench.driver.revisions: what
`framebench gate` builds its sides from) builds the environment from that revision instead: its own
requirements.lock, its own framebench (installed from the commit's files), in two layers. The lock
layer (the lock and the other overrides, addressed by them alone) is built once and shared by every
revision with the same lock, which most changes are; the revision layer is a small virtual
environment that sees the lock layer's packages (a .pth file) and holds only that revision's
framebench, addressed by the lock layer and the commit's tree: seconds to make.
"""

from __future__ import annotations

import contextlib
import hashlib
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
from dataclasses import dataclass
from pathlib import Path

from framebench.core.checkout import source_checkout
from framebench.driver import revisions
from framebench.errors import FrameBenchError

CURRENT = "current"  # the environment of a job run by the driver's own interpreter
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
MARKER = "framebench-env.json"  # written last: an environment without it is incomplete
ADDRESS_PATTERN = re.compile(r"[0-9a-f]{16}")  # an environment's folder name (address())
STAGING_PATTERN = re.compile(r"([0-9a-f]{16})\.building-([0-9]+)")  # the folder a build writes into: its address, the builder's pid
VENV_FILE = "pyvenv.cfg"  # what every virtual environment holds
LOCK_FILE = "requirements.lock"
PIP_SOURCES = ("find-links", "extra-index-url")  # pip settings that say where this machine's wheels are
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


def freeze(python: Path) -> list[str]:
    """The environment's own package list, as `uv pip freeze` gives it."""
    return uv("pip", "freeze", "--python", str(python)).stdout.split()


def listed() -> list[dict]:
    """Every entry under envs_dir(), each with its `kind`: "environment" (a finished build: its hash,
    name, overrides, python and build time), "damaged" (named like one, without a valid marker: `why`
    says how to fix it), "interrupted" (a build killed outright), "building" (a build in progress), or
    "foreign" (not framebench's: never touched)."""
    base = envs_dir()
    entries = []
    for path in sorted(base.iterdir()) if base.is_dir() else []:
        entry = {"path": str(path), "hash": path.name}
        if path.is_symlink() or not path.is_dir():
            entry["kind"] = "foreign"
        elif ADDRESS_PATTERN.fullmatch(path.name):
            try:
                info = read_marker(path)
            except DamagedEnvironment as exc:
                entry.update(kind="damaged", why=str(exc))
            else:
                entry.update(
                    kind="environment",
                    name=info["name"],
                    requirements="; ".join(info["requirements"]) or "-",
                    python=info["python"],
                    built=time.strftime("%Y-%m-%d %H:%M", time.gmtime(info["built_at"])),
                )
        elif STAGING_PATTERN.fullmatch(path.name):
            entry["kind"] = "interrupted" if interrupted_build(path) else "building"
        else:
            entry["kind"] = "foreign"
        entries.append(entry)
    return entries


def run_envs(prune: bool) -> int:
    """`framebench envs`: list the built environments, or remove them (--prune; they rebuild from uv's
    cache in seconds) with what builds killed outright left. Only what framebench built is removed:
    a damaged environment is named with its fix, anything else in the folder is left alone. Exit 1 when
    --prune leaves a damaged environment behind."""
    entries = listed()
    kinds = {kind: [e for e in entries if e["kind"] == kind] for kind in ("environment", "damaged", "interrupted", "building", "foreign")}
    if not kinds["environment"] and not kinds["damaged"] and not kinds["interrupted"]:
        print(f"no environments in {envs_dir()}")
    for entry in kinds["environment"]:
        print(f"{entry['hash']}  {entry['name']:<12} python {entry['python']:<8} built {entry['built']}  {entry['requirements']}")
    for entry in kinds["damaged"]:
        print(f"warning: {entry['why']}", file=sys.stderr)
    for entry in kinds["building"]:
        print(f"{entry['hash']}  being built now")
    if kinds["foreign"]:
        names = ", ".join(e["hash"] for e in kinds["foreign"])
        print(f"not framebench's, left alone: {names}", file=sys.stderr)
    if not prune:
        for entry in kinds["interrupted"]:
            print(f"{entry['hash']}  an interrupted build (--prune removes it)")
        return 0
    for entry in kinds["environment"] + kinds["interrupted"]:
        shutil.rmtree(entry["path"])
    print(f"removed {len(kinds['environment'])} environment(s) and {len(kinds['interrupted'])} interrupted build(s) from {envs_dir()}")
    return 1 if kinds["damaged"] else 0
