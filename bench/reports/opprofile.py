"""Where each backend's epoch goes, op by op, from `python -m framebench.driver.opprofile`'s JSON: per
(backend, precision) how much of the profiled epoch its framework's ops account for, how many casts a
step runs and what they cost, and the ops that take the most time. Pure pandas over the file, so a
report can be written from a profile measured elsewhere (whose contents are then untrusted: every
field is checked, every name escaped)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd

from framebench.errors import FrameBenchError
from framebench.reports.markdown import escape_markdown, to_markdown

TOP_OPS = 5  # ops listed per (backend, variant, precision)
BASELINE = "fp32"
KEYS = ["backend", "variant", "precision"]
PROFILE_FIELDS = {"backend": str, "variant": str, "precision": str, "batch_size": int, "steps": int, "status": str, "reason": str}
OP_FIELDS = {"op": str, "seconds": (int, float), "calls": int, "cast": bool}


def check(record: object, fields: dict, where: str) -> dict:
    """`record` if it is an object with `fields` of their types, else a one-line error naming the field."""
    if not isinstance(record, dict):
        raise FrameBenchError(f"{where} is not an object; regenerate it with `python -m framebench.driver.opprofile`")
    for name, kind in fields.items():
        value = record.get(name)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise FrameBenchError(f"{where}: field {name!r} is missing or not a {getattr(kind, '__name__', 'number')}; regenerate it")
    return record


def read_profiles(path: Path) -> list[dict]:
    """The profiles in `path`, each checked (their `ops` too)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise FrameBenchError(f"{path} cannot be read ({exc}); it is not a profile from `python -m framebench.driver.opprofile`") from None
    if not isinstance(data, list):
        raise FrameBenchError(f"{path} is not a list of profiles; regenerate it with `python -m framebench.driver.opprofile`")
    for index, profile in enumerate(data):
        check(profile, PROFILE_FIELDS, f"{path}: profile {index}")
        if not isinstance(profile.get("ops", []), list):
            raise FrameBenchError(f"{path}: profile {index}: field 'ops' is not a list; regenerate it")
        for number, op in enumerate(profile.get("ops", [])):
            check(op, OP_FIELDS, f"{path}: profile {index}, op {number}")
            if not math.isfinite(op["seconds"]) or op["seconds"] < 0 or op["calls"] < 0:
                raise FrameBenchError(f"{path}: profile {index}, op {number}: negative or non-finite time or calls; regenerate it")
    return data


def op_table(profiles: list[dict]) -> pd.DataFrame:
    """One row per op of every ok profile: KEYS, the profile's position in the file, steps, op, seconds, calls, cast."""
    rows = [
        {**{key: profile[key] for key in KEYS}, "profile": index, "steps": profile["steps"], **{field: op[field] for field in OP_FIELDS}}
        for index, profile in enumerate(profiles)
        if profile["status"] == "ok"
        for op in profile["ops"]
    ]
    return pd.DataFrame(rows, columns=[*KEYS, "profile", "steps", *OP_FIELDS])


def summary_table(profiles: list[dict]) -> pd.DataFrame:
    """Per ok profile: the profiled epoch (`epoch_s`, the profiler's own cost in it), the time its ops
    account for (`ops_s`: self times summed; the rest is the caller's thread and untraced work),
    that per step, casts per step and their share of `ops_s`, and `ops_speedup`: the fp32 profile's
    `ops_s` over this one's."""
    ops = op_table(profiles)
    ok = [p for p in profiles if p["status"] == "ok"]
    if not ok:
        return pd.DataFrame()
    table = pd.DataFrame([{**{key: p[key] for key in KEYS}, "steps": p["steps"], "epoch_s": p.get("epoch_s")} for p in ok])
    grouped = ops.groupby(KEYS, sort=False)
    casts = ops[ops["cast"]].groupby(KEYS, sort=False)
    totals = pd.DataFrame({"ops_s": grouped["seconds"].sum(), "cast_s": casts["seconds"].sum(), "cast_calls": casts["calls"].sum()})
    table = table.merge(totals.reset_index(), on=KEYS, how="left").fillna({"ops_s": 0.0, "cast_s": 0.0, "cast_calls": 0})
    table["ms_per_step"] = 1000 * table["ops_s"] / table["steps"]
    table["casts_per_step"] = table["cast_calls"] / table["steps"]
    table["cast_share"] = table["cast_s"] / table["ops_s"].where(table["ops_s"] > 0)
    fp32 = table[table["precision"] == BASELINE][["backend", "variant", "ops_s"]]
    table = table.merge(fp32, on=["backend", "variant"], how="left", suffixes=("", "_fp32"))
    table["ops_speedup"] = (table["ops_s_fp32"] / table["ops_s"]).where(table["precision"] != BASELINE)
    return table[[*KEYS, "steps", "epoch_s", "ops_s", "ms_per_step", "ops_speedup", "casts_per_step", "cast_share"]]


def top_ops(profiles: list[dict], n: int = TOP_OPS) -> pd.DataFrame:
    """The `n` ops with the most self time per ok profile, with their share of its ops' time and their
    time and calls per step."""
    ops = op_table(profiles)
    if ops.empty:
        return pd.DataFrame()
    ops["share"] = ops["seconds"] / ops.groupby(KEYS, sort=False)["seconds"].transform("sum")
    ops["ms_per_step"] = 1000 * ops["seconds"] / ops["steps"]
    ops["calls_per_step"] = ops["calls"] / ops["steps"]
    top = ops.sort_values(["profile", "seconds"], ascending=[True, False], kind="stable").groupby("profile", sort=False).head(n)
    return top[[*KEYS, "op", "ms_per_step", "share", "calls_per_step", "cast"]].reset_index(drop=True)


def report_lines(profiles: list[dict]) -> list[str]:
    """Markdown: the summary, the top ops, and one line per profile that is not ok, with its reason."""
    summary = summary_table(profiles)
    lines = [] if summary.empty else [to_markdown(summary), to_markdown(top_ops(profiles))]
    lines += [
        "- not profiled: " + escape_markdown(f"{p['backend']}:{p['variant']} {p['precision']}: {p['status']}: {p['reason']}")
        for p in profiles
        if p["status"] != "ok"
    ]
    return lines
