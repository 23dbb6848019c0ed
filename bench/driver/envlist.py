"""`framebench envs`: what the environments folder holds, listed or pruned. Apart from what an
environment is (framebench.driver.envs) and how one is built (framebench.driver.envbuild) because it
is the one reader of the whole folder, which holds anything: finished environments, damaged ones,
builds in progress or killed outright, and folders that are not framebench's.
"""

from __future__ import annotations

import shutil
import sys
import time

from framebench.driver.envbuild import STAGING_PATTERN, interrupted_build
from framebench.driver.envs import ADDRESS_PATTERN, DamagedEnvironment, envs_dir, read_marker


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
