"""report.md's side-by-side of a run's framework environments (--env): per backend, each environment's
epoch time with its ratio to the first environment's (with the gate's 95% interval), its accuracy with the difference, and the first
training step whose loss differs from the first environment's beyond the conformance tolerance.

The environments of one run train from the same weights on the same batches, so any step-loss
difference is the framework's arithmetic, not the experiment's.
"""

from __future__ import annotations

import pandas as pd

from framebench.core.metrics import TRAJECTORY_RTOL
from framebench.reports.compare import steady_epochs
from framebench.reports.stats import ratio_of_medians
from framebench.store.job import OK, point_names
from framebench.store.tables import latest_attempts, to_markdown

COLUMNS = [
    "backend",
    "variant",
    "device",
    "env",
    "framework_version",
    "runs_ok",
    "epoch_s",
    "time_ratio",
    "test_acc",
    "d_acc",
    "diverges_at",
]


def time_ratio(base: pd.DataFrame, new: pd.DataFrame, epochs: pd.DataFrame) -> str:
    """New's steady-state epoch time over base's with the gate's 95% interval (framebench.reports.stats:
    repeats, then epochs within each, resampled), e.g. "×1.24 [1.19, 1.30]"."""
    effect = ratio_of_medians(steady_epochs(base, epochs), steady_epochs(new, epochs))
    return f"×{effect.estimate:.3f} [{effect.low:.3f}, {effect.high:.3f}]"


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


def side_by_side(tables: dict) -> pd.DataFrame:
    """One row per (backend, variant, device, environment), the environments in the run's order."""
    runs = latest_attempts(tables["runs"])
    ok = runs[runs["status"] == OK]
    steps = tables["steps"].merge(ok[["backend", "variant", "device", "env", "repeat", "attempt"]], how="inner")
    order = list(dict.fromkeys(runs["env"]))
    optimizer = tables["config"].get("train", {}).get("optimizer", "adam")
    rows = []
    for (backend, variant, device), group in runs.groupby(["backend", "variant", "device"], sort=False):
        base_env = order[0]
        base = ok[(ok["backend"] == backend) & (ok["variant"] == variant) & (ok["device"] == device) & (ok["env"] == base_env)]
        in_point = (steps["backend"] == backend) & (steps["variant"] == variant) & (steps["device"] == device)
        for env in [e for e in order if e in set(group["env"])]:
            mine = ok[(ok["backend"] == backend) & (ok["variant"] == variant) & (ok["device"] == device) & (ok["env"] == env)]
            rows.append(
                {
                    "backend": backend,
                    "variant": variant,
                    "device": device,
                    "env": env,
                    "framework_version": ", ".join(sorted(set(group[group["env"] == env]["framework_version"]) - {""})) or "-",
                    "runs_ok": len(mine),
                    "epoch_s": mine["median_epoch_s"].median(),
                    "time_ratio": time_ratio(base, mine, tables["epochs"]) if len(base) and len(mine) else None,
                    "test_acc": mine["final_test_acc"].median(),
                    "d_acc": mine["final_test_acc"].median() - base["final_test_acc"].median() if len(base) and len(mine) else None,
                    "diverges_at": "-"
                    if env == base_env
                    else first_divergence(
                        steps[in_point & (steps["env"] == base_env)][["repeat", "epoch", "step", "loss"]],
                        steps[in_point & (steps["env"] == env)][["repeat", "epoch", "step", "loss"]],
                        optimizer,
                    ),
                }
            )
    return pd.DataFrame(rows, columns=COLUMNS)


def report_section(tables: dict) -> list[str]:
    """The section, for a run with more than one environment (none otherwise)."""
    if tables["runs"]["env"].nunique() < 2 or "env" not in point_names():
        return []
    specs = tables["config"].get("envs", {})
    return [
        "## Framework environments",
        "",
        "Each backend in each environment, side by side: the steady-state epoch time (median over repeats) and its ratio "
        "to the first environment's (with a 95% interval: repeats, then epochs, resampled), the test accuracy and its "
        "difference, and the first training step (repeat 1) whose loss differs from the first environment's beyond the "
        "conformance suite's tolerance (same weights, same batches: a difference there is the framework's arithmetic).",
        "",
        *[f"- `{name}`: {'; '.join(f'`{r}`' for r in requirements) or 'the lock as it is'}" for name, requirements in specs.items()],
        "",
        to_markdown(side_by_side(tables)),
    ]
