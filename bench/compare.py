"""`framebench compare BASE NEW`: accuracy and steady-state time deltas between two results
directories, with regressions flagged only when they exceed both the tolerance and the spread."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from bench.results import load_results
from bench.tables import to_markdown

KEYS = ["backend", "variant", "device", "dataset", "preset"]


@dataclass(frozen=True)
class Tolerances:
    acc_tol: float  # largest accepted drop in test accuracy (absolute, e.g. 0.005 = half a point)
    time_tol: float  # largest accepted relative growth of the steady-state epoch time (0.1 = 10%)


def per_key(runs: pd.DataFrame) -> pd.DataFrame:
    """Median accuracy and epoch time per key, with the fastest and slowest repeat (the spread)."""
    ok = runs[runs["status"] == "ok"].groupby(KEYS)
    return pd.DataFrame({
        "acc": ok["final_test_acc"].median(),
        "epoch_s": ok["median_epoch_s"].median(),
        "fastest_s": ok["median_epoch_s"].min(),
        "slowest_s": ok["median_epoch_s"].max(),
        "threads": ok["threads"].first(),
        "version": ok["framework_version"].first(),
    })


def environment_differences(base: dict, new: dict, joined: pd.DataFrame) -> tuple[list[str], list[str]]:
    """(differences that make timings incomparable, other differences worth saying)."""
    blocking, notes = [], []
    for field in ("machine", "cpu", "cores", "kernel_settings"):
        if base["env"].get(field) != new["env"].get(field):
            blocking.append(f"{field}: {base['env'].get(field)} -> {new['env'].get(field)}")
    threads = joined[joined["threads_base"] != joined["threads_new"]]
    if not threads.empty:
        blocking.append(f"threads: {sorted(set(threads['threads_base']))} -> {sorted(set(threads['threads_new']))}")
    for section in ("model", "train"):
        if base["config"].get(section) != new["config"].get(section):
            notes.append(f"{section} configuration differs: {base['config'].get(section)} -> {new['config'].get(section)}")
    if base["config"].get("tf32") != new["config"].get("tf32"):
        blocking.append(f"TF32: {base['config'].get('tf32')} -> {new['config'].get('tf32')}")
    versions = joined[joined["version_base"] != joined["version_new"]]
    for (backend, *_), row in versions.iterrows():
        notes.append(f"{backend}: {row['version_base']} -> {row['version_new']}")
    return blocking, notes


def compare(base_dir: str, new_dir: str, tolerances: Tolerances, *, allow_env_diff: bool) -> tuple[pd.DataFrame, list[str], bool]:
    """(the joined table with verdicts, the lines to say before it, whether timings were compared)."""
    base, new = load_results(base_dir), load_results(new_dir)
    joined = per_key(base["runs"]).join(per_key(new["runs"]), how="outer", lsuffix="_base", rsuffix="_new")
    blocking, notes = environment_differences(base, new, joined.dropna(subset=["acc_base", "acc_new"]))
    compare_time = not blocking or allow_env_diff
    lines = [f"environment differs: {d}" for d in blocking] + [f"note: {n}" for n in notes]
    if blocking and not allow_env_diff:
        lines.append("timings are not compared across these differences; pass --allow-env-diff to compare them anyway")
    joined["d_acc"] = joined["acc_new"] - joined["acc_base"]
    joined["time_ratio"] = joined["epoch_s_new"] / joined["epoch_s_base"]
    acc_regressed = joined["d_acc"] < -tolerances.acc_tol
    # Slower beyond the tolerance AND beyond the spread: the new fastest repeat is slower than the base's slowest.
    time_regressed = (joined["time_ratio"] > 1 + tolerances.time_tol) & (joined["fastest_s_new"] > joined["slowest_s_base"])
    joined["verdict"] = "ok"
    joined.loc[joined["acc_new"].isna(), "verdict"] = "missing in NEW"
    joined.loc[joined["acc_base"].isna(), "verdict"] = "new"
    joined.loc[acc_regressed, "verdict"] = "REGRESSION: accuracy"
    if compare_time:
        joined.loc[time_regressed & ~acc_regressed, "verdict"] = "REGRESSION: time"
        joined.loc[time_regressed & acc_regressed, "verdict"] = "REGRESSION: accuracy and time"
    columns = ["acc_base", "acc_new", "d_acc"] + (["epoch_s_base", "epoch_s_new", "time_ratio"] if compare_time else []) + ["verdict"]
    return joined[columns].reset_index(), lines, compare_time


def render_markdown(table: pd.DataFrame, lines: list[str], tolerances: Tolerances, base_dir: str, new_dir: str) -> str:
    header = [f"## framebench compare", "", f"BASE `{base_dir}`, NEW `{new_dir}`; accuracy tolerance {tolerances.acc_tol:g}, "
              f"time tolerance {tolerances.time_tol:.0%} (and beyond the spread across repeats)", ""]
    return "\n".join(header + [f"- {line}" for line in lines] + [""]) + to_markdown(table)
