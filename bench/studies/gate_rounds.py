"""The gate study's design and its rounds (framebench.studies.gate): its settings, its conditions, the
clone holding BASE and the slower revisions, and each verdict run into a folder of its own beside its
neighbours. Apart from the analysis (framebench.studies.gate_report), which reads only the folders
these leave, so a report can be redrawn without running anything.
"""

from __future__ import annotations

import json
import random
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from framebench.driver import revisions
from framebench.errors import FrameBenchError
from framebench.studies.slowdown import slower_revision

RUNS_FOLDER = "runs"  # under --directory: one folder per verdict (not committed)
CLONE_FOLDER = "clone"  # under --directory: the clone holding BASE and the slower revisions on branches of their own
MARKER = "verdict.json"  # written last in a verdict's folder: the verdict is complete
STUDY_FILE = "study.json"  # under --directory: the revision and the settings its verdicts measured
IDENTITY = ("repeats", "epochs", "preset", "dataset", "hidden", "threads", "neighbours")  # settings every verdict of a study shares
BASE_BRANCH = "study-base"
RULES = ("gate", "separate")
INTERMITTENT = (2.0, 5.0)  # seconds an intermittent neighbour stays busy, then idle: drawn uniformly in this range
NEIGHBOUR_CODE = """
import random, sys, time
rng = random.Random(int(sys.argv[1]))
while True:
    busy_until = time.monotonic() + rng.uniform({low}, {high})
    while time.monotonic() < busy_until:
        pass
    time.sleep(rng.uniform({low}, {high}))
"""


@dataclass(frozen=True)
class Settings:
    rounds: int  # rounds wanted (a round: every condition once by every rule)
    repeats: int  # --repeats of every gate and of each separate run
    epochs: int | None  # --epochs (None: the preset's)
    preset: str  # the configuration trained
    dataset: str  # its data
    hidden: str  # --hidden: sets how long an epoch takes
    threads: int  # --threads of every run
    effects: tuple[float, ...]  # slowdowns of the quiet A/B conditions (0.05 = 5%)
    neighbours: int  # processes beside the run in the busy and intermittent conditions
    time_tol: float  # the gate's --time-tol (the same for the separate rule)
    budget_s: float  # no verdict starts after this many seconds (the study ends on time, with what it has)
    directory: Path  # where the clone, the verdicts, report.md and gate.png go
    base: str | None  # the revision measured (default: the working tree of the repository the study runs in)
    rules: tuple[str, ...]  # which rules to run


@dataclass(frozen=True)
class Condition:
    name: str  # "A/A quiet", "+10% intermittent", ...
    share: float  # NEW's slowdown (0: the same code)
    neighbour: str  # "" (quiet), "busy" or "intermittent"

    @property
    def folder(self) -> str:
        return self.name.replace("/", "").replace(" ", "-").replace("+", "plus").replace("%", "pct")


def conditions(settings: Settings) -> list[Condition]:
    return [
        Condition("A/A quiet", 0.0, ""),
        Condition("A/A busy", 0.0, "busy"),
        Condition("A/A intermittent", 0.0, "intermittent"),
        Condition("+10% intermittent", 0.10, "intermittent"),
        *(Condition(f"+{effect:.0%}", effect, "") for effect in settings.effects),
    ]


def branch(share: float) -> str:
    return BASE_BRANCH if share == 0 else f"study-slower-{share * 100:g}pct"


def prepare_clone(settings: Settings) -> Path:
    """The study's clone (sharing the repository's objects, nothing checked out), BASE on its branch and
    each slower revision on one of its own: the user's repository gets no branch."""
    source = revisions.resolve(settings.base, Path.cwd())
    clone = settings.directory / CLONE_FOLDER
    if not (clone / ".git").is_dir():
        subprocess.run(["git", "clone", "--quiet", "--shared", "--no-checkout", str(source.repository), str(clone)], check=True)
    if revisions.git(clone, "branch", "--force", BASE_BRANCH, source.commit).returncode != 0:
        raise FrameBenchError(f"cannot put {source.describe()} on a branch of {clone}")
    for share in {c.share for c in conditions(settings)} - {0.0}:
        slower_revision(clone, source.commit, share, branch(share))
    check_same_study(settings, source.commit)
    print(f"BASE: {source.describe()}; slower revisions on branches of {clone}", file=sys.stderr)
    return clone


def check_same_study(settings: Settings, commit: str) -> None:
    """A directory holds one study: the verdicts a rerun adds must measure the same revision the same way."""
    identity = {"base": commit, **{name: str(getattr(settings, name)) for name in IDENTITY}}
    path = settings.directory / STUDY_FILE
    if path.is_file() and (recorded := json.loads(path.read_text())) != identity:
        differ = ", ".join(name for name in identity if recorded.get(name) != identity[name])
        raise FrameBenchError(f"{settings.directory} holds a study with another {differ}; pass another --directory to start a new one")
    path.write_text(json.dumps(identity, indent=2))


def neighbours_for(condition: Condition, settings: Settings, seed: int) -> list[subprocess.Popen]:
    """The processes beside a verdict: `yes` (busy), the intermittent loop (in phase: one seed), or none."""
    if condition.neighbour == "busy":
        return [subprocess.Popen(["yes"], stdout=subprocess.DEVNULL) for _ in range(settings.neighbours)]
    if condition.neighbour == "intermittent":
        code = NEIGHBOUR_CODE.format(low=INTERMITTENT[0], high=INTERMITTENT[1])
        return [subprocess.Popen([sys.executable, "-c", code, str(seed)]) for _ in range(settings.neighbours)]
    return []


def run_flags(settings: Settings, folder: Path, run_id: str) -> list[str]:
    flags = ["--backends", "numpy", "--preset", settings.preset, "--dataset", settings.dataset, "--hidden", settings.hidden]
    flags += ["--repeats", str(settings.repeats), "--threads", str(settings.threads), "--no-floors"]
    flags += ["--epochs", str(settings.epochs)] if settings.epochs else []
    return flags + ["--results-dir", str(folder), "--run-id", run_id]


def verdict_commands(settings: Settings, clone: Path, condition: Condition, rule: str, folder: Path) -> list[list[str]]:
    """The command lines of one verdict: a gate, or BASE's run then NEW's."""
    framebench = [sys.executable, "-m", "framebench"]
    if rule == "gate":
        decision = ["--time-tol", str(settings.time_tol), "--json", str(folder / "gate.json")]
        return [
            [*framebench, "gate", "--base", BASE_BRANCH, "--new", branch(condition.share), *decision, *run_flags(settings, folder, "gate")]
        ]
    sides = {"base": BASE_BRANCH, "new": branch(condition.share)}
    return [
        [*framebench, "run", "--env", f"side={revisions.resolve(ref, clone).requirement}", *run_flags(settings, folder, side)]
        for side, ref in sides.items()
    ]


def run_verdict(settings: Settings, clone: Path, round_number: int, condition: Condition, rule: str) -> None:
    """One verdict into its folder, its neighbours beside it, then its marker (with its wall time)."""
    folder = settings.directory / RUNS_FOLDER / f"round{round_number:03d}-{rule}-{condition.folder}"
    if (folder / MARKER).is_file():
        return
    shutil.rmtree(folder, ignore_errors=True)  # a half-run verdict is redone whole
    folder.mkdir(parents=True)
    processes = neighbours_for(condition, settings, seed=round_number)
    started, statuses = time.monotonic(), []
    try:
        for command in verdict_commands(settings, clone, condition, rule, folder):
            finished = subprocess.run(command, cwd=clone, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            statuses.append(finished.returncode)
            if finished.returncode >= 128 or "error: " in finished.stderr:
                raise FrameBenchError(
                    f"{folder.name}: {' '.join(command[3:5])} ended {finished.returncode}: {finished.stderr.strip()[-400:]}"
                )
    finally:
        for process in processes:
            process.kill()
            process.wait()
    record = {"round": round_number, "condition": condition.name, "rule": rule, "wall_s": time.monotonic() - started, "statuses": statuses}
    (folder / MARKER).write_text(json.dumps(record, indent=2))


def collect(settings: Settings) -> None:
    """Run rounds until --rounds are complete or the time budget is spent."""
    clone = prepare_clone(settings)
    started = time.monotonic()
    for round_number in range(settings.rounds):
        verdicts = [(condition, rule) for condition in conditions(settings) for rule in settings.rules]
        random.Random(round_number).shuffle(verdicts)
        for condition, rule in verdicts:
            if time.monotonic() - started > settings.budget_s:
                print(f"time budget spent in round {round_number + 1}", file=sys.stderr)
                return
            run_verdict(settings, clone, round_number, condition, rule)
        print(f"round {round_number + 1} of {settings.rounds} done ({time.monotonic() - started:.0f} s)", file=sys.stderr, flush=True)
