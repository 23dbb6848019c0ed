"""The regression gate measured as an instrument on this machine (`framebench study gate`, `make bench-gate`).

Each verdict is reached the two ways a user can reach it, at the same wall-time budget (--repeats
a side): `gate`, a `framebench gate --base BASE --new NEW` from a clone (BASE and NEW in lockstep in
one run, paired statistics: the path users take); and `separate`, the rule before it: a `framebench
run` of BASE, then one of NEW, compared by compare's unpaired rule with its busy and machine-speed
guards. NEW is identical to BASE (A/A: any REGRESSION is a false alarm) or a real code change: a
commit of the study's own clone whose NumPy backend does N% more work per epoch
(framebench.studies.slowdown), built as an environment of its own like any revision.

Conditions: A/A quiet; A/A with --neighbours `yes` processes beside the whole verdict (busy); A/A and
+10% beside an intermittent neighbour (--neighbours processes, in phase, alternating 2-5 s busy and
2-5 s idle); +N% quiet for each of --effects. Each round runs every (condition, rule) once, in a
shuffled order. A rerun adds what is missing (a verdict counts once its marker is written; a
half-run one is redone), no verdict starts after --budget-min, and the report is written from what
there is; --report-only redraws it. This module is the command; the design and its rounds are
framebench.studies.gate_rounds, the analysis and report framebench.studies.gate_report.

    framebench study gate --rounds 60 --budget-min 900 --directory results/gate
"""

from __future__ import annotations

import argparse
from pathlib import Path

from framebench.driver.gate import GATE_TIME_TOL
from framebench.errors import FrameBenchError
from framebench.studies.gate_report import write_report
from framebench.studies.gate_rounds import RULES, Settings, collect

HELP = "false alarms and power of the lockstep gate beside separate runs (A/A, neighbours, real slowdowns): results/gate/report.md"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--rounds", type=int, default=60, help="rounds wanted (default 60: the goals' false-alarm bound needs 60 A/A verdicts)"
    )
    parser.add_argument("--repeats", type=int, default=3, help="--repeats of every gate and of each separate run")
    parser.add_argument("--epochs", type=int, default=None, help="epochs per job (default: the preset's)")
    parser.add_argument("--preset", default="tutorial000", help="the configuration trained")
    parser.add_argument("--dataset", default="digits", help="its data")
    parser.add_argument("--hidden", default="4096", help="hidden widths (default 4096; the report gives the epoch time it made)")
    parser.add_argument("--threads", type=int, default=1, help="--threads of every run")
    parser.add_argument("--effects", default="0.02,0.05,0.10,0.20", help="the slowdowns of the quiet A/B conditions")
    parser.add_argument("--neighbours", type=int, default=2, help="processes beside the run in the busy and intermittent conditions")
    parser.add_argument("--time-tol", type=float, default=GATE_TIME_TOL, help=f"the gate's --time-tol (default {GATE_TIME_TOL:g})")
    parser.add_argument("--budget-min", type=float, default=900.0, help="start no verdict after this many minutes")
    parser.add_argument("--base", default=None, help="the revision measured (default: the working tree here)")
    parser.add_argument("--rules", default=",".join(RULES), help="gate, separate, or both (default)")
    parser.add_argument(
        "--directory", type=Path, default=Path("results/gate"), help="where the clone, the verdicts, report.md and gate.png go"
    )
    parser.add_argument("--report-only", action="store_true", help="redraw report.md and gate.png from the verdicts already there")


def run(args: argparse.Namespace) -> int:
    rules = tuple(r.strip() for r in args.rules.split(",") if r.strip())
    if not rules or set(rules) - set(RULES):
        raise FrameBenchError(f"--rules {args.rules}: name gate, separate or both")
    settings = Settings(
        rounds=args.rounds,
        repeats=args.repeats,
        epochs=args.epochs,
        preset=args.preset,
        dataset=args.dataset,
        hidden=args.hidden,
        threads=args.threads,
        effects=tuple(float(v) for v in args.effects.split(",")),
        neighbours=args.neighbours,
        time_tol=args.time_tol,
        budget_s=args.budget_min * 60,
        directory=args.directory.resolve(),
        base=args.base,
        rules=rules,
    )
    if not args.report_only:
        collect(settings)
    print(write_report(settings))
    return 0
