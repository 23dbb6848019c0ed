"""A results directory's metadata: config.json and the machine record (machine.json), each checked
against its shape (CONFIG_SHAPE, MACHINE_SHAPE), and config.json for sense, before any command reads
them; and the readings of them the reports share (node_records, swept_field, seeds_text). The tables
beside them are framebench.store.reader's, which reads these through here.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

from framebench.core.config import SWEEPABLE, ModelConfig, Sweep, TrainConfig
from framebench.core.seeds import compact_seeds
from framebench.errors import FrameBenchError
from framebench.store import job, schema


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise FrameBenchError(f"{path} cannot be read ({exc}); it is not a framebench results file") from None


NUMBER = (int, float)
STRINGS = "list of strings"
FIELD_SHAPES = {"int": int, "float": NUMBER, "str": str, "bool": bool, "tuple[int, ...]": [int]}  # a config dataclass field's JSON


def fields_shape(cls) -> dict:
    """The JSON shape of a configuration dataclass as config.json holds it (dataclasses.asdict)."""
    return {f.name: FIELD_SHAPES[f.type] for f in dataclasses.fields(cls)}


CONFIG_SHAPE = {  # config.json's fields and what each holds (a field missing is older framebench's, and allowed)
    "format_version": int,
    "framebench_version": str,
    "preset": str,
    "dataset": str,
    "data_dir": (str, type(None)),
    "data_source": str,
    "model": fields_shape(ModelConfig),
    "train": fields_shape(TrainConfig),
    "threads": int,
    "sweep": {"field": str, "values": STRINGS},
    "target_acc": NUMBER,
    "floors": bool,
    "lockstep": bool,
    "matrices": [{"axes": {"*": STRINGS}, "repeats": int}],
    "envs": {"*": STRINGS},
}
MACHINE_FILE = "machine.json"  # the machine record of a results directory: every node's Python, libraries, CPU, ... and each session
LEGACY_MACHINE_FILE = "env.json"  # its name before framebench 0.2 (read where machine.json is absent)
NODE_SHAPE = {  # one node's record in the machine record
    "python": str,
    "libraries": {"*": str},
    "cpu": str,
    "cores": (int, type(None)),
    "threads": int,
    "os": str,
    "machine": str,
    "gpus": [dict],
    "kernel_settings": {"*": str},
}
MACHINE_SHAPE = {  # the machine record's fields this framebench reads and what each holds (others are kept, unread)
    **NODE_SHAPE,
    "git_commit": str,
    "command": str,
    "started_utc": str,
    "nodes": {"*": NODE_SHAPE},
    "earlier": [dict],
    "environments": {"*": dict},
}


def shape_error(value, shape, where: str, closed: bool = False) -> str | None:
    """Where `value` departs from `shape` (a type, a tuple of types, STRINGS, a {field: shape} dict
    whose fields are optional and whose "*" is any other field's, or a one-item list: a list of that
    shape), or None. `closed`: a field a {field: shape} without "*" does not name is an error (a newer
    framebench's field, which this one would misread)."""
    if isinstance(shape, dict):
        if not isinstance(value, dict):
            return f"{where} holds {str(value)[:60]!r}, not an object"
        if closed and "*" not in shape and (unknown := sorted(set(value) - set(shape))):
            return f"{where}.{unknown[0]} is a field this framebench does not know"
        fields = ((k, v, shape.get(k, shape.get("*"))) for k, v in value.items())
        return next((e for k, v, inner in fields if inner is not None and (e := shape_error(v, inner, f"{where}.{k}", closed))), None)
    if isinstance(shape, list):
        if not isinstance(value, list):
            return f"{where} holds {str(value)[:60]!r}, not a list"
        return next((e for i, v in enumerate(value) if (e := shape_error(v, shape[0], f"{where}[{i}]", closed))), None)
    if shape == STRINGS:
        return shape_error(value, [str], where)
    types = shape if isinstance(shape, tuple) else (shape,)
    if isinstance(value, bool) != (bool in types) or not isinstance(value, types):
        return f"{where} holds {str(value)[:60]!r}, not {' or '.join(t.__name__ for t in types)}"
    return None


def read_metadata(path: Path, shape: dict, known_only: bool) -> dict:
    """config.json or the machine record, checked against its shape; `known_only` refuses fields this
    framebench does not know (a newer framebench's). Anything else is one line naming the field."""
    data = read_json(path)
    fix = "it is damaged or from another framebench version; rerun the matrix with this one"
    if not isinstance(data, dict):
        raise FrameBenchError(f"{path} holds {str(data)[:60]!r}, not an object; {fix}")
    if error := shape_error(data, shape, path.name, closed=known_only):
        raise FrameBenchError(f"{path}: {error}; {fix}")
    return data


def read_config(directory: Path) -> dict:
    """config.json, of its shape and making sense (config_error)."""
    path = directory / "config.json"
    data = read_metadata(path, CONFIG_SHAPE, known_only=True)
    if error := config_error(data):
        raise FrameBenchError(f"{path}: {error}; it is damaged or from another framebench version; rerun the matrix with this one")
    return data


def config_error(config: dict) -> str | None:
    """What in config.json (already of its shape) cannot be: the training configuration and each sweep
    value checked as `framebench run` checks them, the target accuracy, threads, repeats and seeds in
    range. None when it all makes sense."""
    ranges = [("target_acc", config.get("target_acc"), schema.SHARE), ("threads", config.get("threads"), schema.SIZE)]
    for i, matrix in enumerate(config.get("matrices", [])):
        ranges.append((f"matrices[{i}].repeats", matrix.get("repeats"), schema.SIZE))
        if bad := [seed for seed in matrix.get("axes", {}).get("seed", []) if not (seed.isascii() and seed.isdigit())]:
            return f"matrices[{i}].axes.seed holds {bad[0][:20]!r}, not a seed (an integer >= 0)"
    for where, value, spec in ranges:
        if value is not None and not (math.isfinite(value) and spec.low <= value <= spec.high):
            return f"{where} is {value!r}, not {spec.rule.removesuffix(' (or empty)')}"
    model, train = config.get("model", {}), config.get("train", {})
    try:
        model = ModelConfig(**{**model, **({"hidden": tuple(model["hidden"])} if "hidden" in model else {})})
        model.validate()
        TrainConfig(**train).validate(model)
        sweep = Sweep(config.get("sweep", {}).get("field", ""), tuple(config.get("sweep", {}).get("values", [""])))
        if sweep.field not in ("", *SWEEPABLE):
            return f"sweep.field is {sweep.field[:60]!r}, not a field a sweep can vary"
        for value in sweep.values:
            sweep.apply(model, TrainConfig(**train), config.get("threads", 1), value)
    except FrameBenchError as exc:
        return f"its training configuration cannot be ({exc})"
    return None


def read_machine(directory: Path) -> dict:
    """The machine record (machine.json, or env.json as older directories name it), or {} where the directory has none."""
    for name in (MACHINE_FILE, LEGACY_MACHINE_FILE):
        if (directory / name).exists():
            return read_metadata(directory / name, MACHINE_SHAPE, known_only=False)
    return {}


def node_records(machine: dict) -> dict[str, dict]:
    """{node name: its record} from a machine record (one written before nodes were recorded is its own node)."""
    return machine.get("nodes") or {machine.get("machine", ""): machine}


def swept_field(config: dict) -> str:
    """The field config.json's sweep varies ("" when the run is no sweep)."""
    return config.get("sweep", {}).get("field", "")


def seeds_text(config: dict) -> str:
    """The seeds config.json's matrices ran, e.g. "0-9" ("" when none is recorded)."""
    default = next(d.default for d in job.DIMENSIONS if d.name == "seed")
    return compact_seeds([seed for m in config.get("matrices", []) for seed in m["axes"].get("seed", [default])])
