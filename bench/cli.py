"""`framebench` / `python -m bench`: run the matrix, list what exists. User mistakes end in one line."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

from bench.compare import Tolerances, compare, render_markdown
from bench.config import PRESETS, ModelConfig, TrainConfig, resolve
from bench.data import DATASETS, load_dataset
from bench.errors import FrameBenchError
from bench.results import environment, load_results, new_run_id, write_json
from bench.report import write_report
from bench.runner import Matrix, plan, probe_gemms, run_matrix
from bench.tables import format_table, not_run, perf_table, summary, to_markdown
from bench.thresholds import DEFAULT_FILE as DEFAULT_THRESHOLDS
from bench.thresholds import check, derive, write_thresholds
from bench.worker import EVENT_PREFIX, Job
from impls import REGISTRY, backend_spec

DEVICES = ("cpu", "gpu", "auto")


def add_config_overrides(parser: argparse.ArgumentParser) -> None:
    """One --flag per ModelConfig/TrainConfig field; unset flags keep the preset's value."""
    for cls in (ModelConfig, TrainConfig):
        group = parser.add_argument_group(f"{cls.__name__} overrides (default: the preset's value)")
        for field in dataclasses.fields(cls):
            flag = "--" + field.name.replace("_", "-")
            if field.type == "bool":
                group.add_argument(flag, dest=field.name, action=argparse.BooleanOptionalAction, default=None)
            elif field.name == "hidden":
                group.add_argument(flag, dest=field.name, type=int_tuple, default=None, metavar="W1,W2,...")
            else:
                kind = {"int": int, "float": float}.get(field.type, str)
                group.add_argument(flag, dest=field.name, type=kind, default=None)


def int_tuple(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def overrides(args: argparse.Namespace, cls) -> dict:
    return {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if getattr(args, f.name) is not None}


def split_list(text: str, allowed, what: str) -> tuple[str, ...]:
    items = tuple(part.strip() for part in text.split(",") if part.strip())
    if "all" in items:
        return tuple(allowed)
    for item in items:
        if item not in allowed:
            raise FrameBenchError(f"unknown {what} {item!r}; choose from: {', '.join(allowed)} (or all)")
    return items


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="framebench", description="One MLP classifier, every framework, one honest table.")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="train and time backends, writing a results directory")
    run.add_argument("--backends", default="numpy", help="comma-separated registry names, or all")
    run.add_argument("--variants", default="default", help="comma-separated variants (default, ...)")
    run.add_argument("--device", default="cpu", help="cpu, gpu, auto, or a list such as cpu,gpu")
    run.add_argument("--preset", default="mlp", choices=list(PRESETS))
    run.add_argument("--dataset", default=None, help=f"{', '.join(DATASETS)} (default: the preset's)")
    run.add_argument("--data-dir", default=None, help="folder holding mnist/ and fashion-mnist/ (or $FRAMEBENCH_DATA_DIR)")
    run.add_argument("--results-dir", default="results", help="parent folder of the run's results directory")
    run.add_argument("--run-id", default=None, help="results directory name; an existing one is appended to")
    run.add_argument("--repeats", type=int, default=1, help="rounds over all backends")
    run.add_argument("--seed", type=int, default=0, help="seed of weights and batch order")
    run.add_argument("--same-seed", action="store_true", help="every repeat uses --seed (default: seed + repeat)")
    run.add_argument("--threads", type=int, default=os.cpu_count(), help="CPU threads for every library (default: all cores)")
    run.add_argument("--target-acc", type=float, default=None, help="test accuracy for time-to-accuracy (default: the preset's)")
    run.add_argument("--tf32", action="store_true", help="allow TensorFloat-32 GPU matmuls in every backend (default: off)")
    run.add_argument("--no-floors", action="store_true", help="skip the GEMM probes behind floor_epoch_s and the efficiencies")
    run.add_argument("--timeout", type=float, default=3600.0, help="seconds one run may take before it is killed")
    add_config_overrides(run)
    commands.add_parser("list", help="backends, presets and datasets")
    plot = commands.add_parser("plot", help="redraw the figures and report.md of a results directory")
    plot.add_argument("directory")
    comparison = commands.add_parser("compare", help="accuracy and time deltas between two results directories")
    comparison.add_argument("base")
    comparison.add_argument("new")
    comparison.add_argument("--acc-tol", type=float, default=0.005, help="accepted accuracy drop, absolute (default 0.005)")
    comparison.add_argument("--time-tol", type=float, default=0.10, help="accepted epoch-time growth, relative (default 0.10)")
    comparison.add_argument("--allow-env-diff", action="store_true", help="compare timings across machines/thread counts")
    comparison.add_argument("--markdown", default=None, help="also write the comparison as Markdown to this file")
    checking = commands.add_parser("check", help="hold a results directory to the accuracy thresholds")
    checking.add_argument("directory")
    checking.add_argument("--thresholds", type=Path, default=DEFAULT_THRESHOLDS)
    perf = commands.add_parser("perf", help="the speed matrix: backends x variants on several presets, with floors")
    perf.add_argument("--presets", default="seed000,seed003,mlp")
    perf.add_argument("--backends", default="all")
    perf.add_argument("--variants", default="default,tutorial,graph,auto,xla,compile")
    perf.add_argument("--repeats", type=int, default=2)
    perf.add_argument("--epochs", type=int, default=3, help="epochs per run (the first is excluded from the steady state)")
    perf.add_argument("--threads", type=int, default=os.cpu_count())
    perf.add_argument("--results-dir", default="results")
    deriving = commands.add_parser("thresholds", help="derive accuracy thresholds from measured results directories")
    deriving.add_argument("directories", nargs="+")
    deriving.add_argument("--margin", type=float, default=0.01, help="subtracted from the lowest measured accuracy")
    deriving.add_argument("--output", type=Path, default=DEFAULT_THRESHOLDS)
    return parser


def probe_devices(devices: tuple[str, ...]) -> tuple[str, ...]:
    """Devices whose GEMMs to time: "auto" may become either."""
    return tuple(d for d in ("cpu", "gpu") if d in devices or "auto" in devices)


def command_run(args: argparse.Namespace, implemented: dict[str, tuple[str, ...]] | None = None) -> int:
    """Run the matrix; with `implemented` (backend -> its variants), requested variants a backend
    lacks are left out instead of becoming `unsupported` rows."""
    model, train = resolve(args.preset, overrides(args, ModelConfig), overrides(args, TrainConfig))
    backends = split_list(args.backends, REGISTRY, "backend")
    devices = split_list(args.device, DEVICES, "device")
    if args.repeats < 1 or args.threads < 1:
        raise FrameBenchError("--repeats and --threads must be at least 1")
    dataset = args.dataset or PRESETS[args.preset].dataset
    data = load_dataset(dataset, data_dir=args.data_dir)  # fails fast, once, on missing or bad data
    run_id = args.run_id or new_run_id()
    directory = Path(args.results_dir) / run_id
    directory.mkdir(parents=True, exist_ok=True)
    config = {"preset": args.preset, "dataset": dataset, "data_source": data.source, "tf32": args.tf32,
              "repeats": args.repeats, "seeds": f"{args.seed}" if args.same_seed else f"{args.seed} + repeat",
              "target_acc": args.target_acc or PRESETS[args.preset].target_acc,
              "model": dataclasses.asdict(model), "train": dataclasses.asdict(train)}
    write_json(directory, "config.json", config)
    write_json(directory, "env.json", environment(args.threads))
    requested = tuple(v.strip() for v in args.variants.split(",") if v.strip())
    variants = {b: tuple(v for v in requested if implemented is None or v in implemented[b]) for b in backends}
    matrix = Matrix(backends=backends, variants=variants, devices=devices, repeats=args.repeats, seed=args.seed,
                    vary_seed=not args.same_seed)
    template = Job(run_id=run_id, backend="", variant="", device="", dataset=dataset, data_dir=args.data_dir, preset=args.preset,
                   config={"model": config["model"], "train": config["train"]}, repeat=0, seed=args.seed, threads=args.threads, tf32=args.tf32,
                   target_acc=config["target_acc"])
    floors = None
    if not args.no_floors:
        sizes = (data.input_size, *model.hidden, data.num_classes)
        floors = probe_gemms(directory, sizes, train.batch_size, probe_devices(devices), args.threads, args.tf32)
    rows = run_matrix(plan(matrix, template), directory, args.timeout, floors)
    write_report(directory)
    runs = load_results(directory)["runs"]
    print(format_table(summary(runs)))
    for line in not_run(runs):
        print(f"not run: {line}")
    print(directory)
    return 0 if all(row["status"] in ("ok", "unavailable", "unsupported") for row in rows) else 1


def describe_backend(name: str) -> dict:
    """Ask a fresh process (with the backend's environment) what the backend supports."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **backend_spec(name).env}
    result = subprocess.run([sys.executable, "-m", "bench.worker", "--describe", name], capture_output=True, text=True, env=env)
    for line in result.stdout.splitlines():
        if line.startswith(EVENT_PREFIX):
            return json.loads(line[len(EVENT_PREFIX):])
    return {"name": name, "error": (result.stderr.strip().splitlines() or ["no answer"])[-1]}


def command_list(_: argparse.Namespace) -> int:
    print("backends:")
    for name, spec in REGISTRY.items():
        info = describe_backend(name)
        print(f"  {name:<12} {spec.summary}")
        if "error" in info:
            print(f"               not usable: {info['error']}")
            continue
        print(f"               variants: {', '.join(info['variants'])}; Adam form: {info['adam_form']}")
        print(f"               devices: " + "; ".join(f"{d}: {why}" for d, why in info["devices"].items()))
        lacking = {p: why for p, why in info["presets"].items() if why != "ok"}
        for preset, why in lacking.items():
            print(f"               preset {preset}: unsupported: {why}")
    print("presets:")
    for preset in PRESETS.values():
        print(f"  {preset.name:<12} {preset.dataset:<14} {preset.source}")
    print(f"datasets: {', '.join(DATASETS)}")
    return 0


def command_plot(args: argparse.Namespace) -> int:
    print(write_report(args.directory))
    return 0


def command_compare(args: argparse.Namespace) -> int:
    tolerances = Tolerances(acc_tol=args.acc_tol, time_tol=args.time_tol)
    table, lines, _ = compare(args.base, args.new, tolerances, allow_env_diff=args.allow_env_diff)
    for line in lines:
        print(line)
    print(format_table(table))
    if args.markdown:
        Path(args.markdown).write_text(render_markdown(table, lines, tolerances, args.base, args.new))
    regressions = table[table["verdict"].str.startswith("REGRESSION")]
    print(f"{len(regressions)} regression(s)" if len(regressions) else "no regression")
    return 1 if len(regressions) else 0


def command_check(args: argparse.Namespace) -> int:
    failures, notes = check(args.directory, args.thresholds)
    for line in notes:
        print(f"note: {line}")
    for line in failures:
        print(f"FAIL: {line}")
    print(f"{len(failures)} below threshold" if failures else "all runs meet their thresholds")
    return 1 if failures else 0


def command_perf(args: argparse.Namespace) -> int:
    """One `run` per preset (each its own results directory), then one table over all of them. A
    seed's own preset that is not among --presets is run too, for that seed's backend only, so the
    table always holds each tutorial on the configuration it was written for."""
    perf_id = new_run_id()
    backends = split_list(args.backends, REGISTRY, "backend")
    implemented = {name: tuple(describe_backend(name).get("variants", ())) for name in backends}
    presets = split_list(args.presets, PRESETS, "preset")
    matrix = [(preset, args.backends) for preset in presets]
    matrix += [(p.name, p.seed_backend) for p in PRESETS.values() if p.seed_backend in backends and p.name not in presets]
    directories = []
    for preset, preset_backends in matrix:
        run_args = build_parser().parse_args([
            "run", "--preset", preset, "--backends", preset_backends, "--variants", args.variants, "--repeats", str(args.repeats),
            "--epochs", str(args.epochs), "--threads", str(args.threads), "--results-dir", args.results_dir,
            "--run-id", f"perf-{perf_id}-{preset}",
        ])
        command_run(run_args, implemented)
        directories.append(Path(args.results_dir) / run_args.run_id)
    table = perf_table([load_results(d)["runs"] for d in directories])
    print(format_table(table))
    markdown = Path(args.results_dir) / f"perf-{perf_id}.md"
    markdown.write_text(f"# framebench perf {perf_id}\n\n`{' '.join(sys.argv)}`\n\n" + to_markdown(table))
    print(markdown)
    return 0


def command_thresholds(args: argparse.Namespace) -> int:
    table = derive(args.directories, args.margin)
    write_thresholds(table, args.output, " ".join(["framebench", *sys.argv[1:]]), args.directories)
    print(format_table(table))
    print(args.output)
    return 0


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    handler = {"run": command_run, "list": command_list, "plot": command_plot, "compare": command_compare,
               "check": command_check, "thresholds": command_thresholds, "perf": command_perf}[args.command]
    try:
        sys.exit(handler(args))
    except FrameBenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted; rows already written are kept", file=sys.stderr)
        sys.exit(130)
