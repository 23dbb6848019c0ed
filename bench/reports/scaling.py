"""Curves over a sweep (`--sweep FIELD=V1,V2,...`): which backend is fastest at which value, whether
that lead is outside the noise, and where each backend leaves its overhead-bound regime.

Everything here is derived from the tables of one results directory (each job's latest attempt, ok
runs only), so scaling.png and the report.md section are redrawn whenever the report is written.
Sweep values stay the strings the command line gave, in the order it gave them; numeric ones are
placed on a log axis by their number (a `hidden` value by its total width, the sum of its layers,
which changes whichever layer the sweep varies)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
import pandas as pd  # noqa: E402
from matplotlib.ticker import NullLocator  # noqa: E402

from framebench.reports.markdown import to_markdown  # noqa: E402
from framebench.reports.plots import save_figure, style  # noqa: E402
from framebench.reports.summary import precision_series  # noqa: E402
from framebench.store.reader import latest_attempts  # noqa: E402

SERIES = ["backend", "variant", "device"]
POINT = SERIES + ["sweep_value"]
FIGURE = "scaling.png"
COUNTED = ["samples_per_s", "its_slowest_repeat", "runner_up_samples_per_s", "its_fastest_repeat"]  # crossover's throughputs
CROSSOVER = ["sweep_value", "device", "fastest", *COUNTED[:2], "runner_up", *COUNTED[2:], "lead", "verdict"]
TIE_RULE = (
    "a lead is a tie when the leader's slowest repeat is not faster than the runner-up's fastest repeat (their "
    "ranges overlap); with a single repeat there is no spread to judge, and the verdict says so"
)


def position(field: str, value: str) -> float | None:
    """Where a sweep value sits on a numeric axis; None when it is not a positive number."""
    try:
        number = sum(int(width) for width in value.split(",")) if field == "hidden" else float(value)
    except ValueError:
        return None
    return number if number > 0 else None


def positions(field: str, order: list[str]) -> tuple[list[float], bool]:
    """x positions of the values in `order`, and whether they go on a log axis: by number when every
    value is a distinct positive number, else evenly spaced in the order given."""
    numbers = [position(field, value) for value in order]
    if None in numbers or len(set(numbers)) != len(numbers):
        return [float(i) for i in range(len(order))], False
    return numbers, True


def throughput(runs: pd.DataFrame, order: list[str]) -> pd.DataFrame:
    """One row per (backend, variant, device, sweep value): samples/s and epoch time as the median over
    ok repeats with the slowest and fastest repeat, the efficiency's median, and the floor's throughput
    (samples per epoch over the GEMM floor's epoch time: the fastest library, GEMMs only)."""
    ok = latest_attempts(runs)
    ok = ok[ok["status"] == "ok"].assign(floor_samples_per_s=lambda t: t["samples_per_epoch"] / t["floor_epoch_s"])
    groups = ok.groupby(POINT, sort=False)
    table = groups.agg(
        runs_ok=("samples_per_s", "size"),
        samples_per_s=("samples_per_s", "median"),
        slowest_samples_per_s=("samples_per_s", "min"),
        fastest_samples_per_s=("samples_per_s", "max"),
        median_epoch_s=("median_epoch_s", "median"),
        efficiency=("efficiency", "median"),
        floor_samples_per_s=("floor_samples_per_s", "median"),
    ).reset_index()
    table["sweep_value"] = pd.Categorical(table["sweep_value"], categories=order, ordered=True)
    return table.sort_values(["sweep_value"], kind="stable").reset_index(drop=True)


def labels(columns: pd.MultiIndex, variants: list[str]) -> list[str]:
    """(backend, variant, device) columns named as the figure's legend names them."""
    return [style(backend, variant, device, variants)["label"] for backend, variant, device in columns]


def whole(table: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """Throughputs as whole samples/s, which read (and compare down a column) better than e-notation."""
    return table.assign(**{column: table[column].astype(float).round().astype("Int64") for column in columns})


def verdict(leader: pd.Series, runner_up: pd.Series) -> str:
    """The tie rule (TIE_RULE) applied to the leader and the runner-up at one value."""
    if min(leader["runs_ok"], runner_up["runs_ok"]) < 2:
        return "lead (1 repeat: no spread)"
    return "tie" if leader["slowest_samples_per_s"] <= runner_up["fastest_samples_per_s"] else "lead"


def crossover(table: pd.DataFrame) -> pd.DataFrame:
    """Per (sweep value, device): the fastest backend/variant by median samples/s, its lead over the
    runner-up (median over median) and whether that lead is outside the spread of the repeats."""
    rows = []
    for (value, device), group in table.groupby(["sweep_value", "device"], sort=True, observed=True):
        ranked = group.dropna(subset=["samples_per_s"]).sort_values("samples_per_s", ascending=False)
        if ranked.empty:
            continue
        leader = ranked.iloc[0]
        row = {
            "sweep_value": value,
            "device": device,
            "fastest": f"{leader['backend']}/{leader['variant']}",
            "samples_per_s": leader["samples_per_s"],
            "its_slowest_repeat": leader["slowest_samples_per_s"],
            "runner_up": "-",
            "runner_up_samples_per_s": float("nan"),
            "its_fastest_repeat": float("nan"),
            "lead": float("nan"),
            "verdict": "only one ran",
        }
        if len(ranked) > 1:
            second = ranked.iloc[1]
            row |= {
                "runner_up": f"{second['backend']}/{second['variant']}",
                "runner_up_samples_per_s": second["samples_per_s"],
                "its_fastest_repeat": second["fastest_samples_per_s"],
                "lead": leader["samples_per_s"] / second["samples_per_s"],
                "verdict": verdict(leader, second),
            }
        rows.append(row)
    return pd.DataFrame(rows, columns=CROSSOVER)


def half_efficiency(table: pd.DataFrame, order: list[str]) -> pd.DataFrame:
    """Per backend/variant/device: its best efficiency, where, and the first swept value (in the order
    swept) at which it reaches half of that best: where it leaves its overhead-bound regime. When the
    first value with an efficiency already reaches it, the answer is 'at or below' that value; how many
    values had an efficiency (unreliable floors leave some empty) says how much of a curve it rests on."""
    rows = []
    for (backend, variant, device), group in table.dropna(subset=["efficiency"]).groupby(SERIES, sort=False):
        group = group.sort_values("sweep_value")
        best = group.loc[group["efficiency"].idxmax()]
        reached = group[group["efficiency"] >= best["efficiency"] / 2].iloc[0]["sweep_value"]
        rows.append(
            {
                "backend": backend,
                "variant": variant,
                "device": device,
                "best_efficiency": best["efficiency"],
                "best_at": best["sweep_value"],
                "half_of_best_at": f"≤ {reached}" if reached == group.iloc[0]["sweep_value"] else reached,
                "values_measured": f"{len(group)} of {len(order)}",
            }
        )
    return pd.DataFrame(rows, columns=SERIES + ["best_efficiency", "best_at", "half_of_best_at", "values_measured"])


def parallel_speedup(table: pd.DataFrame, order: list[str]) -> pd.DataFrame:
    """For a threads sweep: per thread count, each series' epoch time at the fewest threads swept over
    its time at N threads, beside the ideal (N over that fewest count: 1 thread when 1 is swept)."""
    counts = sorted(int(value) for value in order)
    times = table.pivot_table(index="sweep_value", columns=SERIES, values="median_epoch_s", observed=True, sort=False)
    times.index = [int(value) for value in times.index]
    times = times.reindex(counts)
    speedup = times.iloc[0] / times
    speedup.columns = labels(speedup.columns, list(dict.fromkeys(table["variant"])))
    speedup.insert(0, "ideal", [count / counts[0] for count in counts])
    return speedup.rename_axis("threads").reset_index()


def throughput_pivot(table: pd.DataFrame) -> pd.DataFrame:
    """samples/s per sweep value (rows) and series (columns), with the floor's throughput per device."""
    series = table.pivot_table(index="sweep_value", columns=SERIES, values="samples_per_s", observed=True, sort=False)
    series.columns = labels(series.columns, list(dict.fromkeys(table["variant"])))
    floors = table.pivot_table(index="sweep_value", columns="device", values="floor_samples_per_s", observed=True, sort=False)
    floors.columns = [f"GEMM floor ({device})" for device in floors.columns]
    return series.join(floors).sort_index().rename_axis("sweep_value").reset_index()


def axis_label(field: str, log: bool) -> str:
    if not log:
        return f"{field} (in the order swept)"
    return f"{field} ({'total hidden width, ' if field == 'hidden' else ''}log scale)"


def note_missing(axes, table: pd.DataFrame, order: list[str]) -> None:
    """Say in the efficiency panel which values have none, rather than leave a gap unexplained."""
    measured = set(table.dropna(subset=["efficiency"])["sweep_value"])
    missing = [value for value in order if value not in measured]
    if missing:
        text = f"no reliable efficiency at {', '.join(missing)}\n(GEMM floor probes disturbed or not run: see report.md's warnings)"
        axes.text(0.02, 0.03, text, transform=axes.transAxes, ha="left", va="bottom", fontsize=8)


def scaling_figure(table: pd.DataFrame, field: str, order: list[str]):
    """Left: samples/s against the swept value (median, band from the slowest to the fastest repeat)
    with the floor's throughput dashed; right, when efficiencies exist: efficiency against the value."""
    xs, log = positions(field, order)
    where = dict(zip(order, xs, strict=True))
    with_efficiency = table["efficiency"].notna().any()
    fig, panels = plt.subplots(1, 2 if with_efficiency else 1, figsize=(14 if with_efficiency else 8, 5.4), squeeze=False)
    left, right = panels[0, 0], panels[0, -1]
    variants = list(dict.fromkeys(table["variant"]))
    for (backend, variant, device), group in table.groupby(SERIES, sort=False):
        x = [where[value] for value in group["sweep_value"]]
        line = style(backend, variant, device, variants)
        left.plot(x, group["samples_per_s"], **line)
        left.fill_between(x, group["slowest_samples_per_s"], group["fastest_samples_per_s"], color=line["color"], alpha=0.15)
        if with_efficiency:
            right.plot(x, group["efficiency"], **line | {"label": None})
    floors = table.groupby(["device", "sweep_value"], observed=True)["floor_samples_per_s"].median().dropna()
    for device, floor in floors.groupby(level="device"):
        left.plot(
            [where[value] for value in floor.index.get_level_values("sweep_value")],
            floor.to_numpy(),
            color="black",
            linestyle="--",
            linewidth=1.2,
            label=f"GEMM floor ({device}, fastest library)",
        )
    left.set(
        title=f"Training throughput against {field}\n(line: median over repeats; band: slowest to fastest repeat)",
        ylabel="samples per second",
        yscale="log",
    )
    if with_efficiency:
        right.axhline(1.0, color="black", linestyle="--", linewidth=1)
        note_missing(right, table, order)
        right.set(
            title=f"Efficiency against {field}\n(GEMM floor time / epoch time; 1 = only the GEMMs, dashed)",
            ylabel="efficiency",
            ylim=(0, 1.1 * max(1.0, table["efficiency"].max())),
        )
    for axes in panels[0]:
        axes.set(xlabel=axis_label(field, log), xscale="log" if log else "linear")
        axes.set_xticks(xs, order)
        axes.xaxis.set_minor_locator(NullLocator())  # the swept values are the only x ticks
        axes.grid(alpha=0.3, which="both")
    left.legend(fontsize=8)  # one legend: each backend has the same colour and style in both panels
    fig.tight_layout()
    return fig


def efficiency_lines(efficiency: pd.DataFrame) -> list[str]:
    if efficiency.empty:
        return ["No efficiencies (no GEMM floors, or unreliable ones).", ""]
    return [
        "Efficiency is the GEMM floor's epoch time over the measured one; `half_of_best_at` is the first swept value at "
        "which a backend reaches half of its best efficiency ('≤ v': already at the first value with an efficiency); values "
        "without a reliable floor have none.",
        "",
        to_markdown(efficiency),
    ]


def report_section(directory: Path, tables: dict) -> list[str]:
    """report.md lines of a sweep: scaling.png, the throughput per value, the crossover table, where
    each backend reaches half its best efficiency and, on a threads sweep, the parallel speed-up."""
    field, order = tables["config"]["sweep"]["field"], list(tables["config"]["sweep"]["values"])
    table = throughput(precision_series(tables["runs"], field), order)
    lines = [f"## Scaling over {field}", ""]
    if table.empty:
        return lines + ["No run finished ok, so there are no curves.", ""]
    pivot = throughput_pivot(table)
    fig = scaling_figure(table, field, order)
    save_figure(fig, Path(directory) / FIGURE)
    plt.close(fig)
    lines += [
        f"![Throughput and efficiency against {field}]({FIGURE})",
        "",
        "Training samples per second (median over ok repeats of each run's steady-state epoch), with the GEMM floor's: "
        "the same epoch's matrix products alone, fastest library at each shape.",
        "",
        to_markdown(whole(pivot, list(pivot.columns[1:]))),
        "### Fastest per value",
        "",
        f"`lead` is the fastest median over the runner-up's; {TIE_RULE}.",
        "",
        to_markdown(whole(crossover(table), COUNTED)),
    ]
    lines += ["### Leaving the overhead-bound regime", "", *efficiency_lines(half_efficiency(table, order))]
    if field == "threads":
        lines += [
            "### Parallel speed-up",
            "",
            "Epoch time at the fewest threads swept over the time at N threads; `ideal` is N over that fewest count.",
            "",
            to_markdown(parallel_speedup(table, order)),
        ]
    return lines
