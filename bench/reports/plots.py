"""Figures of a results directory (PNG, beside the tables). Each backend keeps one colour in every
figure; variants differ by line style and devices by marker, so a line is identifiable at a glance."""

from __future__ import annotations

import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
import pandas as pd  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from framebench.core import registry  # noqa: E402
from framebench.reports import environments  # noqa: E402
from framebench.reports.summary import precision_series  # noqa: E402
from framebench.store.files import replace_file  # noqa: E402
from framebench.store.metadata import swept_field  # noqa: E402

PALETTE = plt.get_cmap("tab10").colors
LINESTYLES = ["-", "--", ":", "-."]
MARKERS = {"cpu": "o", "gpu": "s"}
SERIES = ["backend", "variant", "device"]
SMOOTHING_POINTS = 60  # the running mean of step losses spans about 1/60 of the run: trends show, noise does not
HEADROOM = 1.12  # bar charts' y-limit over their tallest bar, so the value labels above the bars fit


def save_figure(fig, path: Path) -> None:
    """Write the figure as PNG by renaming (replace_file): a symbolic link at `path` is never followed."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    replace_file(Path(path), buffer.getvalue())


def pick(options: list, known: list[str], name: str):
    """The option of `name`'s place in `known`, or one fixed by its letters where it is not there (a
    name only a results directory from elsewhere has)."""
    return options[(known.index(name) if name in known else sum(map(ord, name))) % len(options)]


def colour(backend: str):
    return pick(PALETTE, registry.backend_names(), backend)


def style(backend: str, variant: str, device: str, variants: list[str]) -> dict:
    return {
        "color": colour(backend),
        "linestyle": pick(LINESTYLES, variants, variant),
        "marker": MARKERS.get(device, "^"),
        "label": f"{backend}/{variant} ({device})" if len(variants) > 1 else f"{backend} ({device})",
    }


def first_repeat(table: pd.DataFrame) -> pd.DataFrame:
    """Curves show the first repeat at the first seed of each series: one line each, no averaging across seeds."""
    if table.empty:
        return table
    first_seed = min(table["seed"], key=lambda seed: (len(str(seed)), str(seed)))  # numerically, whatever the column's type
    table = table[table["seed"] == first_seed]
    return table[table["repeat"] == table["repeat"].min()]


def plot_losses(steps: pd.DataFrame, epochs: pd.DataFrame, variants: list[str], path: Path) -> None:
    """Step losses are noisy (one batch each): every step is drawn faintly, a centred running mean on top."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 4.8))
    curves = first_repeat(steps).groupby(SERIES, sort=False)
    window = max(1, int(curves.size().max()) // SMOOTHING_POINTS) if len(curves) else 1
    for (backend, variant, device), group in curves:
        group = group.reset_index(drop=True)
        line = style(backend, variant, device, variants) | {"marker": None}
        left.plot(group.index + 1, group["loss"], **line | {"label": None, "linewidth": 0.5, "alpha": 0.15})
        smooth = group["loss"].rolling(window, center=True, min_periods=1).mean()
        left.plot(group.index + 1, smooth, **line | {"linewidth": 1.4, "alpha": 0.9})
    for (backend, variant, device), group in first_repeat(epochs).groupby(SERIES, sort=False):
        right.plot(group["epoch"], group["test_loss"], **style(backend, variant, device, variants))
    left.set(
        title=f"Training loss per step (repeat 1; faint: each step, line: mean of {window})\nidentical backends overlap",
        xlabel="optimisation step",
        ylabel="training loss (log scale)",
        yscale="log",
    )
    right.set(title="Test loss per epoch (repeat 1)", xlabel="epoch", ylabel="test loss (log scale)", yscale="log")
    right.xaxis.set_major_locator(MaxNLocator(integer=True))
    for axes in (left, right):
        axes.grid(alpha=0.3, which="both")
        axes.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)


def plot_accuracy(epochs: pd.DataFrame, variants: list[str], path: Path) -> None:
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 4.8))
    for (backend, variant, device), group in first_repeat(epochs).groupby(SERIES, sort=False):
        line = style(backend, variant, device, variants)
        left.plot(group["epoch"], 100 * group["test_acc"], **line)
        right.plot(group["epoch_s"].cumsum(), 100 * group["test_acc"], **line)
    left.set(title="Test accuracy per epoch (repeat 1)", xlabel="epoch", ylabel="test accuracy (%)")
    left.xaxis.set_major_locator(MaxNLocator(integer=True))
    right.set(title="Test accuracy against training time (repeat 1)", xlabel="cumulative training time (s)", ylabel="test accuracy (%)")
    for axes in (left, right):
        axes.grid(alpha=0.3)
        axes.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)


def plot_epoch_times(summary: pd.DataFrame, path: Path) -> bool:
    """Steady-state epoch time (median over repeats), whiskers from the fastest to the slowest repeat;
    drawn only when some run has one."""
    table = summary.dropna(subset=["median_epoch_s"])
    if table.empty:
        return False
    labels = [f"{b}\n{v}, {d}" for b, v, d in zip(table["backend"], table["variant"], table["device"], strict=True)]
    fig, axes = plt.subplots(figsize=(max(6, 1.1 * len(table) + 2), 4.8))
    errors = [table["median_epoch_s"] - table["min_epoch_s"], table["max_epoch_s"] - table["median_epoch_s"]]
    axes.bar(labels, table["median_epoch_s"], yerr=errors, capsize=4, color=[colour(b) for b in table["backend"]])
    for x, (value, top, runs) in enumerate(zip(table["median_epoch_s"], table["max_epoch_s"], table["runs_ok"], strict=True)):
        axes.annotate(
            f"{value:.3g} s (n={runs})", (x, top), ha="center", va="bottom", fontsize=8, xytext=(0, 4), textcoords="offset points"
        )
    axes.set(
        title="Steady-state epoch time\n(bar: median over repeats; whiskers: fastest to slowest repeat)",
        ylabel="seconds per epoch",
        ylim=(0, HEADROOM * table["max_epoch_s"].max()),
    )
    axes.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)
    return True


def plot_speedup(summary: pd.DataFrame, path: Path) -> bool:
    """GPU-over-CPU speed-up per backend/variant (and precision); drawn only when both devices have results."""
    times = summary.pivot_table(index=["backend", "variant", "precision"], columns="device", values="median_epoch_s")
    if not {"cpu", "gpu"} <= set(times.columns):
        return False
    speedup = (times["cpu"] / times["gpu"]).dropna()
    if speedup.empty:
        return False
    fig, axes = plt.subplots(figsize=(max(6, 1.1 * len(speedup) + 2), 4.8))
    several = summary["precision"].nunique() > 1
    labels = [f"{b}\n{v}" + (f"\n{p}" if several else "") for b, v, p in speedup.index]
    axes.bar(labels, speedup.values, color=[colour(b) for b, _, _ in speedup.index])
    axes.axhline(1.0, color="black", linewidth=0.8)
    for x, value in enumerate(speedup.values):
        axes.annotate(f"{value:.2f}x", (x, value), ha="center", va="bottom", fontsize=8, xytext=(0, 3), textcoords="offset points")
    axes.set(
        title="GPU speed-up over CPU (steady-state epoch time, CPU / GPU)",
        ylabel="speed-up (x)",
        ylim=(0, HEADROOM * max(speedup.max(), 1.0)),
    )
    axes.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)
    return True


def plot_perf(table: pd.DataFrame, path: Path) -> bool:
    """Per preset, each backend/variant's steady-state epoch time as a bar (whiskers: the spread), with
    the fastest library's GEMM floor as a dashed line: how far each implementation is from the machine.
    Drawn only when some run finished ok."""
    table = table.dropna(subset=["median_epoch_s"])
    if table.empty:
        return False
    presets = list(dict.fromkeys(table["preset"]))
    rows_per_preset = [int((table["preset"] == preset).sum()) + 3 for preset in presets]  # + title and axis
    fig, panels = plt.subplots(
        len(presets), 1, figsize=(11, 0.3 * sum(rows_per_preset)), squeeze=False, gridspec_kw={"height_ratios": rows_per_preset}
    )
    for axes, preset in zip(panels[:, 0], presets, strict=True):
        rows = table[table["preset"] == preset].iloc[::-1]
        labels = [f"{b}/{v} ({d})" for b, v, d in zip(rows["backend"], rows["variant"], rows["device"], strict=True)]
        axes.barh(labels, rows["median_epoch_s"], xerr=rows["spread_s"] / 2, color=[colour(b) for b in rows["backend"]], capsize=3)
        for floor in rows["floor_epoch_s"].dropna().unique():
            axes.axvline(floor, color="black", linestyle="--", linewidth=1)
        for y, (value, spread, efficiency) in enumerate(zip(rows["median_epoch_s"], rows["spread_s"], rows["efficiency"], strict=True)):
            text = f"{value:.3g} s" + ("" if pd.isna(efficiency) else f", efficiency {efficiency:.2f}")
            axes.annotate(text, (value + spread / 2, y), xytext=(6, 0), textcoords="offset points", va="center", fontsize=7)
        axes.set(
            title=f"{preset}: steady-state epoch time (dashed: GEMM floor, fastest library)",
            xlabel="seconds per epoch",
            xlim=(0, HEADROOM * 1.25 * rows["median_epoch_s"].max()),
        )
        axes.tick_params(axis="y", labelsize=7)
        axes.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)
    return True


def plot_environments(table: pd.DataFrame, path: Path) -> None:
    """Each backend's epoch time in each environment (environments.side_by_side), its ratio to the first
    environment's written beside the bar; the first environment's bars plain, the others hatched."""
    table = table.dropna(subset=["epoch_s"]).iloc[::-1]
    point = environments.compared_point()
    varying = [c for c in point if c not in SERIES and table[c].nunique() > 1]  # shown only where they tell rows apart
    labels = [
        f"{row.backend}/{row.variant} ({', '.join([row.device, *(str(getattr(row, c)) for c in varying)])}) in {row.env}"
        for row in table.itertuples()
    ]
    first = table["env"] == table.groupby(point)["env"].transform("last")  # reversed: last is first
    fig, axes = plt.subplots(figsize=(9, 0.45 * len(table) + 1.6))
    bars = axes.barh(labels, table["epoch_s"], color=[colour(b) for b in table["backend"]])
    for bar, is_first, ratio in zip(bars, first, table["time_ratio"], strict=True):
        bar.set_hatch("" if is_first else "//")
        if not is_first and pd.notna(ratio):
            middle = (bar.get_width(), bar.get_y() + bar.get_height() / 2)
            axes.annotate(f"x{ratio:.2f}", middle, xytext=(4, 0), textcoords="offset points", va="center", fontsize=8)
    axes.set(
        title="Steady-state epoch time per environment\n(median over repeats; xN: ratio to the first environment)",
        xlabel="seconds per epoch",
        xlim=(0, HEADROOM * table["epoch_s"].max()),
    )
    axes.tick_params(axis="y", labelsize=8)
    axes.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)


def draw_all(directory: Path, tables: dict, summary: pd.DataFrame) -> list[str]:
    """Draw every figure that the data supports; returns the file names written. A sweep's runs are
    drawn against the swept value instead (framebench.reports.scaling), and a run's environments side
    by side (one curve per backend would mix them): per-run curves of every value at once would be one tangle."""
    if swept_field(tables["config"]):
        return []
    if tables["runs"]["env"].nunique() > 1:
        side = environments.side_by_side(tables)
        if side["epoch_s"].isna().all():
            return []
        plot_environments(side, directory / "environments.png")
        return ["environments.png"]
    tables = {name: precision_series(tables[name], "") for name in ("runs", "epochs", "steps")}
    series = precision_series(summary, "")
    ok_runs = tables["runs"][tables["runs"]["status"] == "ok"]
    variants = list(dict.fromkeys([*tables["runs"]["variant"], *tables["epochs"]["variant"]]))
    written = []
    if not tables["epochs"].empty:
        plot_losses(tables["steps"], tables["epochs"], variants, directory / "loss.png")
        plot_accuracy(tables["epochs"], variants, directory / "accuracy.png")
        written += ["loss.png", "accuracy.png"]
    if not ok_runs.empty and plot_epoch_times(series, directory / "epoch_time.png"):
        written.append("epoch_time.png")
    if plot_speedup(summary, directory / "speedup.png"):
        written.append("speedup.png")
    return written
