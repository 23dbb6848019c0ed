"""`framebench` / `python -m framebench`: run the matrix, list what exists, report, compare, check, converge, profile,
history, publish, and the studies. The edge of the package: it dispatches to every layer and no layer imports it.

Every flag's help comes from the comment on its dataclass field (RunRequest, ModelConfig, TrainConfig),
so it is written once. User mistakes end in one line naming the fix, never a traceback.
"""

from __future__ import annotations

import argparse
import io
import os
import signal
import sys
from pathlib import Path

from framebench import studies
from framebench.core import registry
from framebench.core.config import CHOICES, PRESETS, ModelConfig, Sweep, TrainConfig
from framebench.core.data import DATASETS
from framebench.driver import opprofile
from framebench.driver.arguments import RUN_CHOICES, Parser, add_fields, add_seed_aliases, given
from framebench.driver.gate import GATE_TIME_TOL
from framebench.driver.request import PRECISION_SWEPT, RunRequest
from framebench.errors import FrameBenchError

RESUMABLE = {"resume", "timeout", "executor", "address", "schedule_timeout", "data_dir", "trust_environments"}  # flags --resume takes
GATE_SETS = ("env", "lockstep", "executor", "address", "schedule_timeout")  # run's flags a gate sets itself (lockstep runs here)


def build_parser() -> Parser:
    parser = Parser(prog="framebench", description="One MLP classifier, every framework, one honest table.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    run = commands.add_parser(
        "run",
        help="train and time backends, writing a results directory",
        description="Train and time every (backend, variant, device) of the matrix, each job in a fresh "
        "process; the results directory is printed last.",
    )
    add_fields(run.add_argument_group("the run"), RunRequest, RUN_CHOICES)
    add_seed_aliases(run)
    add_fields(run.add_argument_group("the model (default: the preset's)"), ModelConfig, CHOICES)
    add_fields(run.add_argument_group("the training (default: the preset's)"), TrainConfig, CHOICES)
    commands.add_parser("list", help="the registered (backend, variant) pairs with their devices, presets and datasets")
    plot = commands.add_parser("plot", help="redraw the figures and report.md of a results directory")
    plot.add_argument("directory", help="a results directory `framebench run` printed")
    comparison = commands.add_parser("compare", help="accuracy and time regressions of NEW against BASE (exit 1 on one)")
    comparison.add_argument("base", help="the results directory to compare against")
    comparison.add_argument("new", nargs="?", help="the results directory under test (omitted with --base-env/--new-env)")
    comparison.add_argument("--base-env", default=None, help="compare two environments of BASE's own run: this one as the base")
    comparison.add_argument("--new-env", default=None, help="... and this one as the new (both, with no NEW directory)")
    add_decision_flags(comparison, time_tol=0.10)
    comparison.add_argument(
        "--allow-machine-diff", action="store_true", help="compare timings across different machines, kernel settings or threads"
    )
    comparison.add_argument("--allow-env-diff", dest="allow_machine_diff", action="store_true", help=argparse.SUPPRESS)  # its old name
    comparison.add_argument("--allow-config-diff", action="store_true", help="compare accuracy across different training configurations")
    comparison.add_argument("--accuracy-only", action="store_true", help="verify accuracy only; timings are shown, not verified")
    gating = commands.add_parser(
        "gate",
        help="a code change's regression gate: BASE and NEW revisions in lockstep on this machine (exit 1 on a regression)",
        description="Build BASE's and NEW's revisions as environments, run the matrix with both in lockstep (epochs in turn, "
        "ABBA) and judge time from the pairs of adjacent epochs, accuracy from the repeats: compare's verdicts and exit status.",
    )
    gating.add_argument(
        "--base", default=None, help="the revision compared against: a branch, tag or SHA git knows here, or a checkout's folder"
    )
    gating.add_argument("--new", default=None, help="the revision under test, the same way (default: the working tree, changes included)")
    add_decision_flags(gating, time_tol=GATE_TIME_TOL)
    add_fields(gating.add_argument_group("the run (default --repeats 3)"), RunRequest, RUN_CHOICES, skip=GATE_SETS)
    add_fields(gating.add_argument_group("the model (default: the preset's)"), ModelConfig, CHOICES)
    add_fields(gating.add_argument_group("the training (default: the preset's)"), TrainConfig, CHOICES)
    checking = commands.add_parser("check", help="hold a results directory to the accuracy thresholds (exit 1 on a miss)")
    checking.add_argument("directory", help="a results directory `framebench run` printed")
    checking.add_argument("--thresholds", type=Path, default=None, help="thresholds file (default: the one framebench ships)")
    checking.add_argument("--allow-missing", action="store_true", help="runs without a threshold are noted instead of failing")
    environments = commands.add_parser("envs", help="list the framework environments --env built (in the user cache), or prune them")
    environments.add_argument(
        "--prune", action="store_true", help="remove the ones framebench built (they rebuild from uv's cache when next needed)"
    )
    study = commands.add_parser("study", help="run one of the studies whose reports are committed under results/ (make bench-NAME)")
    names = study.add_subparsers(dest="study", required=True, parser_class=Parser)
    for name in studies.NAMES:
        module = studies.load(name)
        module.add_arguments(names.add_parser(name, help=module.HELP, description=module.__doc__.split("\n\n")[0]))
    deriving = commands.add_parser("thresholds", help="derive accuracy thresholds from measured results directories")
    deriving.add_argument("directories", nargs="+", help="results directories whose runs all finished ok")
    deriving.add_argument("--margin", type=float, default=0.01, help="subtracted from the lowest measured accuracy, finite and >= 0")
    deriving.add_argument(
        "--output", type=Path, default=None, help="thresholds file to write (default: print it; `check` reads --thresholds PATH)"
    )
    rcp = commands.add_parser("rcp", help="derive reference convergence points (epochs to target per seed) from results directories")
    rcp.add_argument("directories", nargs="+", help="results directories of the reference backend at 10 or more seeds, every one converged")
    rcp.add_argument("--backend", default="numpy", help="the reference backend (default numpy: its default variant at fp32)")
    rcp.add_argument("--output", type=Path, default=None, help="RCP file to write (default: print it; `converge` reads --reference PATH)")
    converging = commands.add_parser(
        "converge", help="hold a results directory's epochs to target to the reference's, by MLPerf's RCP rule (exit 1 when it fails)"
    )
    converging.add_argument("directory", help="a results directory of 5 or more seeds (--seeds)")
    converging.add_argument("--reference", type=Path, default=None, help="RCP file (default: the one framebench ships)")
    converging.add_argument("--base", default=None, help="take the reference from this results directory instead, key by key")
    converging.add_argument("--markdown", default=None, help="also write the verdicts as Markdown to this file")
    converging.add_argument("--json", default=None, dest="json_file", help="also write the verdicts as JSON to this file")
    profile = commands.add_parser(
        "profile", help="AlgoPerf performance profiles and scores of the backends over workloads (presets x datasets)"
    )
    profile.add_argument("directories", nargs="+", help="results directories, one workload each (their preset and dataset)")
    profile.add_argument("--by", default="seconds", help="what time to target is counted in: seconds (training only), steps or epochs")
    profile.add_argument("--precision-workloads", action="store_true", help="each precision a workload of its own")
    profile.add_argument("--out", default=None, help="folder to write report.md and profile.png into (default: print the table only)")
    ops = commands.add_parser(
        "ops", help="where an epoch's time goes, op by op: each framework's own profiler, one backend and precision per process (JSON)"
    )
    opprofile.add_arguments(ops)
    history = commands.add_parser("history", help="the series of many results directories (DuckDB), with their detected changes")
    history.add_argument("directories", nargs="+", help="results directories, folders of them, or .parquet exports")
    history.add_argument("--parquet", default=None, help="also export the joined rows to this Parquet file")
    publish = commands.add_parser("publish", help="print the detected changes and write the static dashboard")
    publish.add_argument("directories", nargs="+", help="results directories, folders of them, or .parquet exports")
    publish.add_argument("--out", required=True, help="the site's folder (written whole, then swapped in)")
    publish.add_argument(
        "--fail-on-regression", action="store_true", help="exit 1 when a series' latest change is a slowdown or accuracy drop"
    )
    readme = commands.add_parser(
        "readme",
        help="rewrite the generated tables: the example results (results/example) in README.md, "
        "the backends (the registry) in docs/backends.md",
    )
    readme.add_argument("--check", action="store_true", help="only say whether both pages are up to date (exit 1 if not)")
    fetching = commands.add_parser(
        "data",
        help="find and verify MNIST and Fashion-MNIST, downloading what is missing into the cache ($FRAMEBENCH_DATA_MIRROR first)",
    )
    fetching.add_argument("--data-dir", default=None, help="folder holding mnist/ and fashion-mnist/ (default: $FRAMEBENCH_DATA_DIR)")
    fetching.add_argument("--check", action="store_true", help="only verify; download nothing (exit 2 if a file is missing or damaged)")
    return parser


def add_decision_flags(parser: argparse.ArgumentParser, time_tol: float) -> None:
    """compare's and gate's: the tolerances, and the files the verdicts are also written to."""
    parser.add_argument("--acc-tol", type=float, default=0.005, help="accepted accuracy drop, absolute, finite and >= 0 (default 0.005)")
    parser.add_argument(
        "--time-tol", type=float, default=time_tol, help=f"accepted epoch-time growth, relative, finite and >= 0 (default {time_tol:g})"
    )
    parser.add_argument("--markdown", default=None, help="also write the comparison as Markdown to this file")
    parser.add_argument("--json", default=None, dest="json_file", help="also write the comparison as JSON to this file")


def run_flags(args: argparse.Namespace) -> dict:
    """The RunRequest fields the command line set; with --resume, only those a resume may change."""
    flags = given(args, RunRequest)
    if flags.get("resume"):
        extra = sorted(set(flags) - RESUMABLE) + sorted(given(args, ModelConfig)) + sorted(given(args, TrainConfig))
        if extra:
            raise FrameBenchError(
                f"--resume takes the matrix and configuration from its config.json; drop "
                f"{', '.join('--' + name.replace('_', '-') for name in extra)}"
            )
    if "precision" in flags and Sweep.parse(flags.get("sweep")).field == "precision":
        raise FrameBenchError(PRECISION_SWEPT)  # even --precision fp32, which RunRequest cannot tell from the default
    return flags


def command_run(args: argparse.Namespace) -> int:
    from framebench.driver.session import run

    flags = run_flags(args)
    flags["env"] = tuple(flags.get("env", ()))
    return run(RunRequest(**flags), given(args, ModelConfig), given(args, TrainConfig))


def command_gate(args: argparse.Namespace) -> int:
    from framebench.driver.gate import GATE_REPEATS, Outputs, run_gate
    from framebench.reports.comparison import Tolerances

    flags = run_flags(args)
    if flags.get("resume") and (args.base or args.new):
        raise FrameBenchError("--resume takes BASE and NEW from its config.json; drop --base and --new")
    if not flags.get("resume"):
        flags.setdefault("repeats", GATE_REPEATS)
    outputs = Outputs(Tolerances(acc_tol=args.acc_tol, time_tol=args.time_tol), args.markdown, args.json_file)
    model, train = given(args, ModelConfig), given(args, TrainConfig)
    return run_gate(args.base, args.new, RunRequest(**flags), model, train, outputs, Path.cwd())


def command_list(_: argparse.Namespace) -> int:
    from framebench.driver.capabilities import describe

    print("backends (backend:variant, what it is, devices here):")
    for entry in registry.REGISTRY.values():
        print(f"  {entry.name:<22} {entry.summary}")
        info = describe(entry) if not entry.error else {"error": entry.error}
        if "error" in info:
            print(f"  {'':<22} not usable: {info['error']}")
            continue
        print(
            f"  {'':<22} devices: " + "; ".join(f"{d}: {why}" for d, why in info["devices"].items()) + f"; Adam form: {info['adam_form']}"
        )
        for preset, why in info["presets"].items():
            if why != "ok":
                print(f"  {'':<22} preset {preset}: unsupported: {why}")
        for device, precisions in info["precisions"].items():
            supported = [p for p, why in precisions.items() if why == "ok"]
            print(f"  {'':<22} precisions on {device}: {', '.join(supported)}")
    print("presets:")
    for preset in PRESETS.values():
        print(f"  {preset.name:<12} {preset.dataset:<14} {preset.source}")
    print(f"datasets: {', '.join(DATASETS)}")
    return 0


def command_plot(args: argparse.Namespace) -> int:
    from framebench.reports.report import write_report

    print(write_report(args.directory))
    return 0


def command_compare(args: argparse.Namespace) -> int:
    from framebench.reports.compare import run_compare, run_compare_envs
    from framebench.reports.comparison import Tolerances

    tolerances = Tolerances(acc_tol=args.acc_tol, time_tol=args.time_tol)
    outputs = {"accuracy_only": args.accuracy_only, "markdown": args.markdown, "json_file": args.json_file}
    if args.base_env or args.new_env:
        if not (args.base_env and args.new_env) or args.new:
            raise FrameBenchError("--base-env and --new-env go together, with one results directory: compare DIR --base-env A --new-env B")
        return run_compare_envs(args.base, args.base_env, args.new_env, tolerances, **outputs)
    if not args.new:
        raise FrameBenchError("compare takes BASE and NEW results directories (or one directory with --base-env and --new-env)")
    return run_compare(
        args.base, args.new, tolerances, allow_machine_diff=args.allow_machine_diff, allow_config_diff=args.allow_config_diff, **outputs
    )


def command_check(args: argparse.Namespace) -> int:
    from framebench.reports.thresholds import DEFAULT_FILE, run_check

    return run_check(args.directory, args.thresholds or DEFAULT_FILE, allow_missing=args.allow_missing)


def command_thresholds(args: argparse.Namespace) -> int:
    from framebench.reports.thresholds import run_derive

    return run_derive(args.directories, margin=args.margin, output=args.output)


def command_rcp(args: argparse.Namespace) -> int:
    from framebench.reports.converge import run_rcp

    return run_rcp(args.directories, backend=args.backend, output=args.output)


def command_converge(args: argparse.Namespace) -> int:
    from framebench.reports.converge import run_converge

    return run_converge(args.directory, reference=args.reference, base=args.base, markdown=args.markdown, json_file=args.json_file)


def command_profile(args: argparse.Namespace) -> int:
    from framebench.reports.profiles import run_profile

    return run_profile(args.directories, measure=args.by, precision_workloads=args.precision_workloads, out=args.out)


def command_ops(args: argparse.Namespace) -> int:
    return opprofile.run_ops(args)


def command_envs(args: argparse.Namespace) -> int:
    from framebench.driver.envlist import run_envs

    return run_envs(prune=args.prune)


def command_study(args: argparse.Namespace) -> int:
    return studies.load(args.study).run(args)


def command_history(args: argparse.Namespace) -> int:
    from framebench.history.commands import run_history

    return run_history(args.directories, args.parquet)


def command_publish(args: argparse.Namespace) -> int:
    from framebench.history.commands import run_publish

    return run_publish(args.directories, args.out, args.fail_on_regression)


def command_readme(args: argparse.Namespace) -> int:
    from framebench.reports.readme import update_readme

    return update_readme(check=args.check)


def command_data(args: argparse.Namespace) -> int:
    from framebench.core.data import DOWNLOADED, ensure_dataset

    for name in DOWNLOADED:
        print(ensure_dataset(name, args.data_dir, allow_download=False if args.check else None), flush=True)
    return 0


def quiet_stdout() -> None:
    """Point stdout at /dev/null, so the interpreter's last flush of a closed pipe raises nothing more
    (the recipe of Python's signal documentation, "Note on SIGPIPE")."""
    try:
        descriptor = sys.stdout.fileno()
    except (AttributeError, ValueError, io.UnsupportedOperation):  # not a file (captured in tests): nothing is flushed to a pipe
        return
    os.dup2(os.open(os.devnull, os.O_WRONLY), descriptor)


HANDLERS = {
    "run": command_run,
    "list": command_list,
    "plot": command_plot,
    "compare": command_compare,
    "gate": command_gate,
    "check": command_check,
    "thresholds": command_thresholds,
    "rcp": command_rcp,
    "converge": command_converge,
    "profile": command_profile,
    "ops": command_ops,
    "envs": command_envs,
    "study": command_study,
    "history": command_history,
    "publish": command_publish,
    "readme": command_readme,
    "data": command_data,
}


INTERRUPTED = {  # what is true of a command's output after Ctrl-C (a command not named writes nothing that outlives it half-done)
    "run": "rows already written are kept; `framebench run --resume DIR` runs the rest",
    "study": "rows already written are kept",
    "publish": "the site at --out is only ever replaced whole",
}


def main(argv: list[str] | None = None) -> None:
    args = None
    try:
        args = build_parser().parse_args(argv)
        status = HANDLERS[args.command](args)
        sys.stdout.flush()  # a closed stdout raises here, inside the try, rather than at the interpreter's exit
        sys.exit(status)
    except FrameBenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        done = INTERRUPTED.get(getattr(args, "command", None), "")
        print("interrupted" + (f"; {done}" if done else ""), file=sys.stderr)
        sys.exit(128 + signal.SIGINT)
    except BrokenPipeError:  # stdout's reader went away (`framebench ... | head`): stop quietly, with the status of a
        quiet_stdout()  # process killed by SIGPIPE (shells show 141; 1 would read as a failed job, 2 as a usage error)
        sys.exit(128 + signal.SIGPIPE)
    except OSError as exc:  # a file the user named cannot be read or written
        print(f"error: {exc.strerror or exc}: {exc.filename or ''}; check the path and its permissions", file=sys.stderr)
        sys.exit(2)
