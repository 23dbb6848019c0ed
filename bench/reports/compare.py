"""`framebench compare BASE NEW`: accuracy and steady-state time of NEW against BASE, as a CI gate.

A gate passes (exit 0) only what it verified. Every (backend, variant, device, dataset, preset, sweep
value) that ran ok in BASE must run ok in NEW, with its accuracy within --acc-tol and its epoch time
within --time-tol (a slowdown counts only beyond the spread of the repeats too). Accuracy is compared
only between the same training configuration, and timings only between nodes with the same machine
fingerprint (host, CPU, cores, kernel settings, GPUs, threads); what those rules leave unverified is
refused (exit 2) unless a flag allows it, and so is a comparison in which no key ran ok in both (a
BASE whose runs all failed verifies nothing). A regression exits 1.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from framebench.errors import FrameBenchError
from framebench.store.job import NOT_RUN, series_columns
from framebench.store.results import load_results, node_environments
from framebench.store.tables import format_table, latest_attempts, to_markdown

TRAINING = ("model", "train")  # config.json sections that decide what accuracy a run reaches


@dataclass(frozen=True)
class Tolerances:
    acc_tol: float  # largest accepted drop in test accuracy (absolute, e.g. 0.005 = half a point)
    time_tol: float  # largest accepted relative growth of the steady-state epoch time (0.1 = 10%)

    def validate(self) -> None:
        for name in ("acc_tol", "time_tol"):
            if not 0 <= getattr(self, name) < math.inf:
                raise FrameBenchError(f"--{name.replace('_', '-')} must be a finite number >= 0, got {getattr(self, name)}")


def fingerprints(env: dict) -> dict[str, str]:
    """{node: what makes its timings comparable}: host, CPU, cores, kernel settings and GPUs."""
    return {
        name: json.dumps(
            [
                node.get("machine"),
                node.get("cpu"),
                node.get("cores"),
                node.get("kernel_settings"),
                [g.get("name") for g in node.get("gpus", [])],
            ],
            sort_keys=True,
        )
        for name, node in node_environments(env).items()
    }


def prepared(runs: pd.DataFrame, env: dict) -> pd.DataFrame:
    """Latest attempts, each with its node's fingerprint (threads included) and whether it is a usable ok."""
    runs = latest_attempts(runs).copy()
    prints = fingerprints(env)
    runs["fingerprint"] = [
        f"{prints.get(node, node)} threads={threads}" for node, threads in zip(runs["node"], runs["threads"], strict=True)
    ]
    runs["usable"] = (runs["status"] == "ok") & runs["final_test_acc"].notna() & runs["median_epoch_s"].notna()
    return runs


def outcome(rows: pd.DataFrame) -> str:
    """'ok' when every repeat is a usable ok, else the first problem with its error."""
    if rows["usable"].all():
        return "ok"
    bad = rows[~rows["usable"]].iloc[0]
    if bad["status"] == "ok":
        return "ok without accuracy or time"
    return f"{bad['status']}" + (f": {bad['error']}" if bad["error"] else "")


def verdicts(base: pd.DataFrame, new: pd.DataFrame, tolerances: Tolerances, *, compare_accuracy: bool, compare_time: bool) -> pd.DataFrame:
    """One row per key in either run: medians, deltas and a verdict."""
    keys, rows = series_columns(), []
    for key in pd.concat([base[keys], new[keys]]).drop_duplicates().itertuples(index=False):
        b = base[(base[keys] == list(key)).all(axis=1)]
        n = new[(new[keys] == list(key)).all(axis=1)]
        rows.append({**key._asdict(), **verdict(b, n, tolerances, compare_accuracy=compare_accuracy, compare_time=compare_time)})
    return pd.DataFrame(rows, columns=keys + ["acc_base", "acc_new", "d_acc", "epoch_s_base", "epoch_s_new", "time_ratio", "verdict"])


def verdict(b: pd.DataFrame, n: pd.DataFrame, tolerances: Tolerances, *, compare_accuracy: bool, compare_time: bool) -> dict:
    base_ok, new_ok = b[b["usable"]], n[n["usable"]]
    figures = {
        "acc_base": base_ok["final_test_acc"].median(),
        "acc_new": new_ok["final_test_acc"].median(),
        "epoch_s_base": base_ok["median_epoch_s"].median(),
        "epoch_s_new": new_ok["median_epoch_s"].median(),
    }
    figures["d_acc"] = figures["acc_new"] - figures["acc_base"]
    figures["time_ratio"] = figures["epoch_s_new"] / figures["epoch_s_base"]
    declined = lambda rows: not rows.empty and rows["status"].isin(NOT_RUN).all()  # noqa: E731
    if n.empty:
        return {**figures, "verdict": "REGRESSION: missing in NEW" if not b.empty and not declined(b) else "not run in either"}
    new_outcome = outcome(n)
    if new_outcome != "ok":
        if declined(n) and (b.empty or declined(b)):
            return {**figures, "verdict": f"not run in either ({n['status'].iloc[0]})"}
        return {**figures, "verdict": f"REGRESSION: NEW {new_outcome}"}
    if b.empty or base_ok.empty:
        return {**figures, "verdict": "new" if b.empty else f"fixed (BASE {outcome(b)})"}
    if changed := code_change(base_ok, new_ok):
        return {**figures, "verdict": f"not comparable: {changed}"}
    problems = []
    if compare_accuracy and figures["d_acc"] < -tolerances.acc_tol:
        problems.append("accuracy")
    if compare_time:
        slower = time_regressed(base_ok, new_ok, tolerances)
        if slower is None:
            return {
                **figures,
                "verdict": "REGRESSION: " + " and ".join(problems)
                if problems
                else "not verified: no node of NEW has the machine fingerprint of BASE's",
            }
        if slower:
            problems.append("time")
    if problems:
        return {**figures, "verdict": "REGRESSION: " + " and ".join(problems)}
    return {
        **figures,
        "verdict": "ok"
        if compare_accuracy and compare_time
        else "ok (accuracy only)"
        if compare_accuracy
        else "ok (time only)"
        if compare_time
        else "not verified",
    }


def code_change(base_ok: pd.DataFrame, new_ok: pd.DataFrame) -> str:
    """How the backend's own code differs between the runs ("" where it is the same): a change there is
    framebench's, not the framework's, and is never reported as the framework's regression."""
    before, after = set(base_ok["implementation"]), set(new_ok["implementation"])
    if before == after:
        return ""
    return f"the {base_ok['backend'].iloc[0]} backend's code changed ({', '.join(sorted(before))} -> {', '.join(sorted(after))})"


def time_regressed(base_ok: pd.DataFrame, new_ok: pd.DataFrame, tolerances: Tolerances) -> bool | None:
    """Slower beyond the tolerance AND beyond the spread (NEW's fastest repeat slower than BASE's slowest),
    judged per machine fingerprint both runs share; None if they share none."""
    shared = set(base_ok["fingerprint"]) & set(new_ok["fingerprint"])
    if not shared:
        return None
    for fingerprint in shared:
        b = base_ok[base_ok["fingerprint"] == fingerprint]["median_epoch_s"]
        n = new_ok[new_ok["fingerprint"] == fingerprint]["median_epoch_s"]
        if n.median() / b.median() > 1 + tolerances.time_tol and n.min() > b.max():
            return True
    return False


def differences(base: dict, new: dict) -> tuple[list[str], list[str], list[str]]:
    """(configuration differences, machine differences, notes) between the two runs."""
    config = [
        f"{section}: {base['config'].get(section)} -> {new['config'].get(section)}"
        for section in TRAINING
        if base["config"].get(section) != new["config"].get(section)
    ]
    machine = []
    base_prints, new_prints = set(fingerprints(base["env"]).values()), set(fingerprints(new["env"]).values())
    if base_prints != new_prints:
        machine.append(f"nodes: {sorted(base_prints - new_prints)} in BASE only, {sorted(new_prints - base_prints)} in NEW only")
    if base["config"].get("tf32") != new["config"].get("tf32"):
        machine.append(f"TF32: {base['config'].get('tf32')} -> {new['config'].get('tf32')}")
    notes = []
    versions = (
        base["runs"][["backend", "framework_version"]]
        .merge(new["runs"][["backend", "framework_version"]], on="backend", suffixes=("_base", "_new"))
        .drop_duplicates()
    )
    for row in versions[versions["framework_version_base"] != versions["framework_version_new"]].itertuples():
        notes.append(f"{row.backend}: {row.framework_version_base} -> {row.framework_version_new}")
    return config, machine, notes


def run_compare_envs(
    directory: str, base_env: str, new_env: str, tolerances: Tolerances, *, accuracy_only: bool, markdown: str | None
) -> int:
    """`compare DIR --base-env A --new-env B`: the gate between two environments of one run (same machine,
    same configuration, interleaved), their rows keyed alike by renaming both environments to one."""
    tolerances.validate()
    tables = load_results(directory)
    runs = prepared(tables["runs"], tables["env"])
    groups = {}
    for flag, name in (("--base-env", base_env), ("--new-env", new_env)):
        group = runs[runs["env"] == name]
        if group.empty:
            known = ", ".join(sorted(set(runs["env"]))) or "none"
            raise FrameBenchError(f"{flag} {name}: {directory} has no runs in that environment (it has: {known})")
        groups[name] = group.assign(env=f"{base_env}->{new_env}")
    table = verdicts(groups[base_env], groups[new_env], tolerances, compare_accuracy=True, compare_time=not accuracy_only)
    versions = [
        f"note: {backend}: {' '.join(sorted(set(groups[base_env]['framework_version'][groups[base_env]['backend'] == backend])))} -> "
        f"{' '.join(sorted(set(groups[new_env]['framework_version'][groups[new_env]['backend'] == backend])))}"
        for backend in sorted(set(groups[base_env]["backend"]) & set(groups[new_env]["backend"]))
    ]
    return finish_comparison(
        table,
        versions,
        f"BASE environment {base_env} of `{directory}`",
        f"NEW environment {new_env}",
        tolerances,
        markdown,
        compare_accuracy=True,
        compare_time=not accuracy_only,
        accuracy_only=accuracy_only,
    )


def run_compare(
    base_dir: str,
    new_dir: str,
    tolerances: Tolerances,
    *,
    allow_env_diff: bool,
    allow_config_diff: bool,
    accuracy_only: bool,
    markdown: str | None,
) -> int:
    """Print the comparison; 1 on a regression, else 2 if something could not be verified, else 0."""
    tolerances.validate()
    base, new = load_results(base_dir), load_results(new_dir)
    if base["runs"].empty:
        raise FrameBenchError(f"{base_dir} holds no runs; there is nothing to compare against")
    config_diff, machine_diff, notes = differences(base, new)
    compare_accuracy = not config_diff or allow_config_diff
    tf32_diff = any(line.startswith("TF32") for line in machine_diff)
    compare_time = not accuracy_only and (not tf32_diff or allow_env_diff)
    b, n = prepared(base["runs"], base["env"]), prepared(new["runs"], new["env"])
    if allow_env_diff:  # compare timings across machines: one fingerprint for all
        b["fingerprint"] = n["fingerprint"] = "any"
    table = verdicts(b, n, tolerances, compare_accuracy=compare_accuracy, compare_time=compare_time)
    lines = [f"configuration differs: {d}" for d in config_diff] + [f"environment differs: {d}" for d in machine_diff]
    lines += [f"note: {line}" for line in notes]
    if config_diff and not allow_config_diff:
        lines.append("accuracy is not compared across training configurations; pass --allow-config-diff to compare it anyway")
    if machine_diff and not allow_env_diff and not accuracy_only:
        lines.append(
            "timings are compared only between nodes of the same machine fingerprint; pass --allow-env-diff to compare "
            "them anyway, or --accuracy-only"
        )
    return finish_comparison(
        table,
        lines,
        f"BASE `{base_dir}`",
        f"NEW `{new_dir}`",
        tolerances,
        markdown,
        compare_accuracy=compare_accuracy,
        compare_time=compare_time,
        accuracy_only=accuracy_only,
    )


def finish_comparison(
    table: pd.DataFrame,
    lines: list[str],
    base_label: str,
    new_label: str,
    tolerances: Tolerances,
    markdown: str | None,
    *,
    compare_accuracy: bool,
    compare_time: bool,
    accuracy_only: bool,
) -> int:
    """Print the verdicts (and write them as Markdown); 1 on a regression, else 2 if something could not
    be verified, else 0."""
    for line in lines:
        print(line)
    print(format_table(table))
    if markdown:
        header = [
            "## framebench compare",
            "",
            f"{base_label}, {new_label}; accuracy tolerance {tolerances.acc_tol:g}, "
            f"time tolerance {tolerances.time_tol:.0%} (and beyond the spread across repeats)",
            "",
        ]
        try:
            Path(markdown).write_text("\n".join(header + [f"- {line}" for line in lines] + [""]) + to_markdown(table))
        except OSError as exc:
            raise FrameBenchError(f"cannot write --markdown {markdown} ({exc.strerror or exc})") from None
    regressions = table[table["verdict"].str.startswith("REGRESSION")]
    unverified = table[table["verdict"].str.startswith(("not verified", "not comparable"))]
    if len(regressions):
        print(f"{len(regressions)} regression(s)")
        return 1
    if not table["verdict"].str.startswith("ok").any():
        print("nothing was verified: no key ran ok in BASE and in NEW (a BASE whose runs all failed is no baseline): refused")
        return 2
    if unverified.empty and compare_accuracy and (compare_time or accuracy_only):
        print("no regression")
        return 0
    print(
        f"no regression found, but not everything was verified ({len(unverified)} key(s) not comparable or without a shared machine"
        + ("" if compare_accuracy else "; accuracy not compared")
        + ("" if compare_time or accuracy_only else "; timings not compared")
        + "): refused"
    )
    return 2
