"""report.md's side-by-side of a run's framework environments (--env): per backend, each environment's
epoch time with its ratio to the first environment's (with the gate's 95% interval), its accuracy with the difference, and the first
training step whose loss differs from the first environment's beyond the conformance tolerance.

The environments of one run train from the same weights on the same batches, so any step-loss
difference is the framework's arithmetic, not the experiment's.
"""

from __future__ import annotations

import pandas as pd

from framebench.core.metrics import TRAJECTORY_RTOL
from framebench.reports.epoch_times import paired_log_ratios, slotted_epochs, steady_epochs
from framebench.reports.markdown import escape_markdown, to_markdown
from framebench.reports.stats import Interval, paired_ratio, ratio_of_medians
from framebench.store.job import OK, point_names
from framebench.store.reader import latest_attempts

COLUMNS = ["env", "framework_version", "runs_ok", "epoch_s", "time_ratio", "time_95", "test_acc", "d_acc", "diverges_at"]


def compared_point() -> list[str]:
    """What one environment is compared with another at: every dimension but the environment."""
    return [name for name in [*point_names(), "sweep_value"] if name != "env"]


def time_ratio(base: pd.DataFrame, new: pd.DataFrame, epochs: pd.DataFrame) -> Interval:
    """New's steady-state epoch time over base's with the gate's 95% interval (framebench.reports.stats:
    repeats, then epochs within each, resampled); from the pairs of adjacent epochs where the two
    environments ran in lockstep, as compare judges them."""
    pairs = paired_log_ratios(*(rows.assign(slotted=slotted_epochs(rows, epochs)) for rows in (base, new)))
    return paired_ratio(pairs) if pairs else ratio_of_medians(steady_epochs(base, epochs), steady_epochs(new, epochs))


def tolerance(step: int, optimizer: str) -> float:
    """The relative step-loss tolerance the conformance suite allows at this (1-based) step (its last
    bound holding beyond its step too)."""
    bounds = TRAJECTORY_RTOL.get(optimizer, TRAJECTORY_RTOL["adam"])
    return next((rtol for last, rtol in bounds if step <= last), bounds[-1][1])


def first_divergence(base: pd.DataFrame, new: pd.DataFrame, optimizer: str) -> str:
    """The first step (of repeat 1, latest attempts) where new's loss differs from base's beyond the
    tolerance, as "epoch E step S (relative difference D)"; "none" within it; "-" with nothing to compare."""
    joined = base.merge(new, on=["repeat", "epoch", "step"], suffixes=("_base", "_new")).sort_values(["repeat", "epoch", "step"])
    joined = joined[joined["repeat"] == joined["repeat"].min()] if not joined.empty else joined
    if joined.empty:
        return "-"
    difference = (joined["loss_new"] - joined["loss_base"]).abs() / joined["loss_base"].abs().clip(lower=1e-12)
    allowed = [tolerance(step, optimizer) for step in range(1, len(joined) + 1)]
    beyond = joined[(difference.to_numpy() > allowed) | difference.isna().to_numpy()]
    if beyond.empty:
        return "none"
    row = beyond.iloc[0]
    return f"epoch {int(row['epoch'])} step {int(row['step'])} ({abs(row['loss_new'] - row['loss_base']) / abs(row['loss_base']):.2g})"


def planned_envs(config: dict, recorded) -> list[str]:
    """The environments in the order the run planned them (the first is the one the others are compared
    with): its matrices' env axes, which keep the command line's order (config.json's envs do not: its
    keys are written sorted), then any other it names, then any only the `recorded` rows hold."""
    axes = [env for matrix in config.get("matrices", []) for env in matrix.get("axes", {}).get("env", [])]
    return list(dict.fromkeys([*axes, *config.get("envs", {}), *recorded]))


def side_by_side(tables: dict) -> pd.DataFrame:
    """One row per point of the matrix (backend, variant, device, precision, sweep value, ...) and
    environment, the environments in the run's order, each compared with the first one at that point."""
    runs = latest_attempts(tables["runs"])
    ok = runs[runs["status"] == OK]
    point = compared_point()
    steps = tables["steps"].merge(ok[[*point, "env", "repeat", "attempt"]], how="inner")
    order = [env for env in planned_envs(tables["config"], runs["env"]) if env in set(runs["env"])]
    optimizer = tables["config"].get("train", {}).get("optimizer", "adam")
    rows = []
    for key, group in runs.groupby(point, sort=False):
        ok_here, steps_here = (rows[(rows[point] == list(key)).all(axis=1)] for rows in (ok, steps))
        base = ok_here[ok_here["env"] == order[0]]
        for env in [e for e in order if e in set(group["env"])]:
            mine = ok_here[ok_here["env"] == env]
            effect = time_ratio(base, mine, tables["epochs"]) if len(base) and len(mine) else None
            rows.append(
                {
                    **dict(zip(point, key, strict=True)),
                    "env": env,
                    "framework_version": ", ".join(sorted(set(group[group["env"] == env]["framework_version"]) - {""})) or "-",
                    "runs_ok": len(mine),
                    "epoch_s": mine["median_epoch_s"].median(),
                    "time_ratio": effect.estimate if effect else None,
                    "time_95": f"[{effect.low:.3f}, {effect.high:.3f}]" if effect else "-",
                    "test_acc": mine["final_test_acc"].median(),
                    "d_acc": mine["final_test_acc"].median() - base["final_test_acc"].median() if effect else None,
                    "diverges_at": "-"
                    if env == order[0]
                    else first_divergence(
                        steps_here[steps_here["env"] == order[0]][["repeat", "epoch", "step", "loss"]],
                        steps_here[steps_here["env"] == env][["repeat", "epoch", "step", "loss"]],
                        optimizer,
                    ),
                }
            )
    return pd.DataFrame(rows, columns=[*point, *COLUMNS])


def report_section(tables: dict) -> list[str]:
    """The section, for a run with more than one environment (none otherwise)."""
    if tables["runs"]["env"].nunique() < 2 or "env" not in point_names():
        return []
    specs = tables["config"].get("envs", {})
    return [
        "## Framework environments",
        "",
        "Each backend in each environment, side by side: the steady-state epoch time (median over repeats) and its ratio "
        "to the first environment's (with a 95% interval: repeats, then epochs, resampled; from the pairs of adjacent epochs "
        "where they ran in lockstep), the test accuracy and its "
        "difference, and the first training step (repeat 1) whose loss differs from the first environment's beyond the "
        "conformance suite's tolerance (same weights, same batches: a difference there is the framework's arithmetic).",
        "",
        *[
            f"- {escape_markdown(name)}: {escape_markdown('; '.join(requirements)) or 'the lock as it is'}"  # config.json's: inert text
            for name, requirements in specs.items()
        ],
        "",
        to_markdown(side_by_side(tables)),
    ]
