"""`framebench gate --base REF [--new REF]`: the regression gate of one code change on a shared machine.

BASE and NEW are revisions (framebench.driver.revisions: `origin/main`, a SHA, a checkout's folder;
NEW defaults to the working tree). Each becomes an environment built from its own revision, its own
framebench, backends and requirements.lock (framebench.driver.envbuild, cached, never timed), named
`base` and `new`. The matrix then runs once with both, in lockstep (framebench.driver.lockstep): for
each point and repeat, one worker per side, taking turns epoch by epoch in ABBA order, so every
machine state is seen by both. The results directory is an ordinary one (config.json records each
side as `framebench @ git+file://REPOSITORY@SHA`), judged as `framebench compare DIR --base-env base
--new-env new` judges it: time from the pairs of adjacent epochs, accuracy from the repeats, and the
step losses side by side (same seeds: equal losses mean equal arithmetic). Exit status: compare's
(0 pass, 1 regression, 2 undecided or a usage error), or 128 + the signal that stopped the run.
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass
from pathlib import Path

from framebench.driver import envbuild, envs, revisions, session
from framebench.driver.request import RunRequest
from framebench.errors import FrameBenchError
from framebench.reports.compare import run_compare_envs
from framebench.reports.comparison import Tolerances
from framebench.reports.environments import side_by_side
from framebench.reports.summary import point_label
from framebench.store.events import PROTOCOL_VERSION
from framebench.store.files import new_run_id
from framebench.store.metadata import read_config
from framebench.store.reader import load_results

SIDES = {"base": "BASE", "new": "NEW"}  # environment name -> how the gate names the side
GATE_REPEATS = 3  # --repeats unless given: one repeat cannot call a regression (comparison.ONE_REPEAT)
GATE_TIME_TOL = 0.03  # --time-tol unless given: below the +5% a gate is meant to catch (compare's default is 0.10)


@dataclass(frozen=True)
class Outputs:
    tolerances: Tolerances  # --acc-tol and --time-tol
    markdown: str | None  # --markdown FILE
    json_file: str | None  # --json FILE


def run_gate(
    base_ref: str | None,
    new_ref: str | None,
    request: RunRequest,
    model_overrides: dict,
    train_overrides: dict,
    outputs: Outputs,
    where: Path,
) -> int:
    """Resolve and build both sides, run the matrix in lockstep, print the verdicts; the exit status."""
    outputs.tolerances.validate()
    if request.resume:
        return finish(Path(request.resume), request, {}, {}, outputs, where=where)
    if base_ref is None:
        raise FrameBenchError("gate needs --base REF: the revision to compare against (e.g. --base origin/main), or --resume DIR")
    sides = {"base": revisions.resolve(base_ref, where), "new": revisions.resolve(new_ref, where)}
    for name, revision in sides.items():
        print(f"{SIDES[name]}: {revision.describe()} of {revision.repository}", file=sys.stderr)
    if sides["base"].tree == sides["new"].tree:
        print(
            f"BASE and NEW hold the same code (tree {sides['base'].tree[:12]}): this is an A/A check; a REGRESSION would be a false alarm",
            file=sys.stderr,
        )
    run_id = request.run_id or new_run_id()
    directory = Path(request.results_dir) / run_id
    if directory.exists():
        raise FrameBenchError(
            f"{directory} exists: a gate writes a results directory of its own; pass another --run-id, or finish that one "
            f"with `framebench gate --resume {directory}`"
        )
    for name, revision in sides.items():  # a side that cannot be read at all is said before anything is built
        try:
            envs.location([revision.requirement])
        except envs.EnvironmentUnavailable as exc:
            raise FrameBenchError(f"{SIDES[name]} {revision.describe()} cannot be gated: {exc}") from None
    for name, revision in sides.items():
        prepare_side(name, revision)
    request = dataclasses.replace(
        request,
        run_id=run_id,
        env=tuple(f"{name}={revision.requirement}" for name, revision in sides.items()),
        lockstep=True,
    )
    described = {name: f"{SIDES[name]} {revision.describe()}" for name, revision in sides.items()}
    return finish(directory, request, model_overrides, train_overrides, outputs, described)


def prepare_side(name: str, revision: revisions.Revision) -> None:
    """Build (or reuse) the side's environment and check that its worker speaks this driver's protocol;
    each failure is one line naming the side."""
    label = f"{SIDES[name]} {revision.describe()}"
    requirements = [revision.requirement]
    if not envs.is_built(requirements):
        print(f"building the environment of {label} with uv (not timed)", file=sys.stderr, flush=True)
    try:
        environment = envbuild.ensure(name, requirements)
    except envs.EnvironmentUnavailable as exc:
        raise FrameBenchError(f"{label} cannot be gated: {exc}") from None
    spoken = environment.protocol()
    if spoken != str(PROTOCOL_VERSION):
        said = f"protocol {spoken}" if spoken else "no worker protocol version (its framebench predates `framebench gate`)"
        raise FrameBenchError(
            f"{label} cannot be gated: its framebench's worker speaks {said}, this framebench's speaks protocol {PROTOCOL_VERSION}; "
            "gate revisions whose framebench speaks the same protocol"
        )


def finish(
    directory: Path,
    request: RunRequest,
    model: dict,
    train: dict,
    outputs: Outputs,
    described: dict | None = None,
    where: Path | None = None,
) -> int:
    """Run (or resume) the gate's matrix into `directory`, then judge it: compare's exit status, or the
    run's when a signal stopped it. A resumed gate builds the revisions its config.json names only where
    they are revisions of the repository the command runs in (`where`), or with --trust-environments."""
    if request.resume:
        config = read_config(directory) if (directory / "config.json").is_file() else {}
        if set(config.get("envs", {})) != set(SIDES) or not config.get("lockstep"):
            raise FrameBenchError(f"--resume {directory}: not a gate's results directory (no base and new sides run in lockstep)")
        described = {name: f"{SIDES[name]} {' '.join(config['envs'][name])}" for name in SIDES}
        request = dataclasses.replace(request, trust_environments=request.trust_environments or own_revisions(config["envs"], where))
    status = session.run(request, model, train)
    if status >= 128:
        print(f"or `framebench gate --resume {directory}`, which then prints the verdicts", file=sys.stderr)
        return status
    tables = load_results(directory)
    return run_compare_envs(
        str(directory),
        "base",
        "new",
        outputs.tolerances,
        accuracy_only=False,
        markdown=outputs.markdown,
        json_file=outputs.json_file,
        sides={**described, "directory": str(directory)},
        notes=step_losses(tables),
    )


def own_revisions(specs: dict[str, list[str]], where: Path | None) -> bool:
    """Whether every requirement of the sides is a revision of the repository `where` is in (what a gate
    run here recorded), so resuming builds nothing a directory from elsewhere chose."""
    from packaging.requirements import Requirement

    home = revisions.top_level(where) if where is not None else None
    urls = [Requirement(r).url or "" for requirements in specs.values() for r in requirements]
    parsed = [revisions.parse_url(url) for url in urls]
    return home is not None and all(p is not None and p[0].resolve() == home.resolve() for p in parsed)


def step_losses(tables: dict) -> list[str]:
    """One line per point of the matrix: whether NEW's training losses equal BASE's at every step of
    repeat 1 (same weights, same batches: equal losses mean equal arithmetic), or where they part."""
    compared = side_by_side(tables)
    lines = []
    for row in compared[compared["env"] == "new"].itertuples():
        where = (
            "equal to BASE's at every step of repeat 1 (within the conformance tolerance)"
            if row.diverges_at == "none"
            else f"part from BASE's at {row.diverges_at}"
            if row.diverges_at != "-"
            else "not compared (a side did not run ok)"
        )
        lines.append(f"step losses of {point_label(row._replace(env=''))}: {where}")
    return lines
