"""The static dashboard: overview, a page per benchmark key, changes, and the cross-framework view.

Everything from a results directory is untrusted: text reaches a page through html.escape, data
reaches a chart as JSON with `<`, `>` and `&` escaped (so no `</script>` can close the script), chart
labels are escaped too (Plotly renders some tags in labels), and page names are hashes. The site is
written to a temporary folder beside --out and renamed into place: never half a site. Plotly's
bundle is copied once; pages load it relatively, so the folder works offline and on any static host.
"""

from __future__ import annotations

import html
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.offline import get_plotlyjs
from plotly.subplots import make_subplots

from framebench.errors import FrameBenchError
from framebench.history.changes import ACCURACY, TIME, Found, Metric
from framebench.history.series import History
from framebench.history.text import clean, effect_text, label, short_commit, value
from framebench.reports.profiles import R_MAX, TAUS, performance_ratios, rho, scores, times_to_target
from framebench.store.job import key_columns, series_columns

MARKER = ".framebench-site"  # marks a folder this module wrote, so --out never replaces anything else
LATEST_LOSS_RUNS = 3  # loss curves overlaid on a key's page: its latest runs
STYLE = (
    "body{font-family:sans-serif;margin:1em 2em;color:#222}table{border-collapse:collapse;margin:1em 0}"
    "td,th{border:1px solid #ccc;padding:2px 8px;text-align:left;vertical-align:top}nav a{margin-right:1em}"
    ".chart{width:100%;max-width:1000px;height:360px}.small{width:320px;height:120px}.change{color:#b00;font-weight:bold}"
)


def esc(text) -> str:
    return html.escape(clean(text))


def script_json(figure: go.Figure) -> str:
    """The figure as JSON that is safe inside a <script> element."""
    return figure.to_json().replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def chart(figure: go.Figure, element_id: str, css: str = "chart") -> str:
    figure.update_layout(template="none", margin={"l": 50, "r": 10, "t": 30, "b": 40})
    return (
        f'<div id="{element_id}" class="{css}"></div><script>(function(){{var f={script_json(figure)};'
        f'Plotly.newPlot("{element_id}",f.data,f.layout,{{responsive:true,displaylogo:false}});}})();</script>'
    )


def page(title: str, body: str, depth: int) -> str:
    up = "../" * depth
    return (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>'
        f'<script src="{up}plotly.min.js"></script><style>{STYLE}</style></head><body>'
        f'<nav><a href="{up}index.html">overview</a><a href="{up}changes.html">changes</a>'
        f'<a href="{up}frameworks.html">frameworks</a></nav><h1>{esc(title)}</h1>{body}</body></html>'
    )


def hover(runs: pd.DataFrame) -> list[str]:
    """Run id, commit, date, versions and repeats of each point, escaped (Plotly renders some tags)."""
    return [
        "<br>".join(
            esc(part)
            for part in (
                f"run {r.run_id}",
                f"commit {short_commit(r.commit)}",
                f"{r.run_time:%Y-%m-%d %H:%M} UTC",
                f"versions {r.versions}",
                f"{r.repeats} ok repeat(s)",
            )
        )
        for r in runs.itertuples()
    ]


def metric_figure(runs: pd.DataFrame, found: list[Found], metric: Metric, small: bool = False) -> go.Figure:
    """One line per machine (its spread as error bars), changes as red markers at the first run after."""
    figure = go.Figure()
    for machine, series in runs.groupby("machine", sort=False):
        y = series[metric.column]
        figure.add_trace(
            go.Scatter(
                x=series["run_time"],
                y=y,
                mode="lines+markers",
                name=esc(f"machine {machine}"),
                hovertext=hover(series),
                hoverinfo="text+y",
                error_y=None if small else {"type": "data", "array": series[metric.high] - y, "arrayminus": y - series[metric.low]},
            )
        )
    steps = [f for f in found if f.change.metric == metric]
    if steps:
        figure.add_trace(
            go.Scatter(
                x=[f.first_after["run_time"] for f in steps],
                y=[f.first_after[metric.column] for f in steps],
                mode="markers",
                name="change",
                marker={"color": "#b00", "size": 12, "symbol": "diamond-open", "line": {"width": 2}},
                hovertext=[esc(f"change {effect_text(f.change)}") for f in steps],
                hoverinfo="text",
            )
        )
    figure.update_layout(showlegend=not small, yaxis_title=None if small else esc(metric.label + metric.unit))
    return figure


def loss_figure(history: History, runs: pd.DataFrame) -> go.Figure:
    """Train and test loss per epoch (median over repeats) of the key's latest runs."""
    figure = go.Figure()
    key = runs.iloc[0]
    latest = runs.sort_values("run_time").drop_duplicates("directory", keep="last").tail(LATEST_LOSS_RUNS)
    for run in latest.itertuples():
        epochs = history.epochs
        point = [c for c in key_columns() if c != "repeat"]
        mine = epochs[(epochs["directory"] == run.directory) & (epochs[point] == key[point].tolist()).all(axis=1)]
        curves = mine.groupby("epoch")[["train_loss", "test_loss"]].median()
        if curves.empty:
            continue
        for column, dash in (("train_loss", "solid"), ("test_loss", "dot")):
            figure.add_trace(go.Scatter(x=curves.index, y=curves[column], name=esc(f"{run.run_id} {column}"), line={"dash": dash}))
    figure.update_layout(xaxis_title="epoch", yaxis_title="loss")
    return figure


def cell_table(header: list[str], rows: list[list[str]], ids: list[str] | None = None) -> str:
    """An HTML table; cells are given already escaped (some hold links)."""
    ids = [f' id="{i}"' if i else "" for i in ids or [""] * len(rows)]
    body = "".join(f"<tr{i}>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row, i in zip(rows, ids, strict=True))
    return "<table><tr>" + "".join(f"<th>{h}</th>" for h in header) + "</tr>" + body + "</table>"


def run_link(run: pd.Series, depth: int) -> str:
    return f'<a href="{"../" * depth}series/{run["page"]}.html#{run["anchor"]}">{esc(run["run_id"])}</a>'


def key_page(history: History, runs: pd.DataFrame, found: list[Found]) -> str:
    key = runs.iloc[0]
    body = f"<p>training configuration {esc(key['config'])}; every machine its own line; red diamonds: detected changes</p>"
    for metric in (TIME, ACCURACY):
        body += f"<h2>{esc(metric.label)}</h2>" + chart(metric_figure(runs, found, metric), f"{metric.column}-chart")
    losses = loss_figure(history, runs)
    if losses.data:  # a Parquet history, or runs without epochs.csv, have none
        body += "<h2>loss curves of the latest runs</h2>" + chart(losses, "loss-chart")
    ordered = runs.sort_values(["run_time", "commit"])
    seen, ids, rows = set(), [], []
    for run in ordered.itertuples():
        ids.append("" if run.anchor in seen else run.anchor)
        seen.add(run.anchor)
        rows.append(
            [
                esc(run.run_id),
                esc(f"{run.run_time:%Y-%m-%d %H:%M}"),
                esc(short_commit(run.commit)),
                esc(run.machine),
                esc(f"{run.epoch_s:.4g} [{run.epoch_s_min:.4g}, {run.epoch_s_max:.4g}]"),
                esc(f"{run.acc:.4f}"),
                esc(run.versions),
                esc(run.directory),
            ]
        )
    header = ["run", "date (UTC)", "commit", "machine", "epoch s [range]", "accuracy", "versions", "directory"]
    body += "<h2>runs</h2>" + cell_table(header, rows, ids)
    return page(label(key), body, depth=1)


def overview(history: History, found: list[Found]) -> str:
    rows = []
    for number, (_, series) in enumerate(history.runs.groupby("series", sort=False)):
        last = series.iloc[-1]
        mine = [f for f in found if f.first_after["series"] == last["series"]]
        marks = "".join(
            f'<div class="change">{esc(f.change.metric.label)} {esc(effect_text(f.change))} from {run_link(f.first_after, 0)}</div>'
            for f in mine
        )
        rows.append(
            [
                f'<a href="series/{last["page"]}.html">{esc(label(last))}</a>',
                esc(last["machine"]),
                esc(value(last["epoch_s"], TIME)),
                esc(value(last["acc"], ACCURACY)),
                str(len(series)),
                marks or "none",
                chart(metric_figure(series, mine, TIME, small=True), f"overview-{number}", "small"),
            ]
        )
    body = cell_table(["benchmark", "machine", "latest epoch time", "latest accuracy", "runs", "changes", "epoch time over runs"], rows)
    skipped = "".join(f"<li>{esc(line)}</li>" for line in history.skipped)
    return page("framebench history", body + (f"<h2>inputs left out</h2><ul>{skipped}</ul>" if skipped else ""), depth=0)


def changes_page(found: list[Found]) -> str:
    rows = [
        [
            f'<a href="series/{f.first_after["page"]}.html">{esc(label(f.first_after))}</a>',
            esc(f.first_after["machine"]),
            esc(f.change.metric.label),
            esc(f"{value(f.change.before, f.change.metric)} → {value(f.change.after, f.change.metric)}"),
            esc(effect_text(f.change)) + (' <span class="change">regression</span>' if f.change.regression else ""),
            run_link(f.first_after, 0) + esc(f" (commit {short_commit(f.first_after['commit'])})"),
            run_link(f.last_before, 0),
        ]
        for f in found
    ]
    header = ["benchmark", "machine", "metric", "before → after", "effect [95% interval]", "first run after", "last run before"]
    return page("detected changes, newest first", cell_table(header, rows) if rows else "<p>no change detected</p>", depth=0)


def frameworks_figure(names: list[str], rows: pd.DataFrame) -> go.Figure:
    """Epoch time and accuracy of each backend side by side, each on an axis of its own (bars of two
    quantities on overlaid axes hide one another)."""
    figure = make_subplots(rows=1, cols=2, subplot_titles=("epoch time (s)", "test accuracy"), horizontal_spacing=0.12)
    figure.add_trace(go.Bar(x=names, y=rows["epoch_s"], name="epoch time (s)", hovertext=hover(rows), hoverinfo="text+y"), row=1, col=1)
    figure.add_trace(go.Bar(x=names, y=rows["acc"], name="test accuracy", hovertext=hover(rows), hoverinfo="text+y"), row=1, col=2)
    figure.update_layout(showlegend=False)
    return figure


def frameworks_page(history: History) -> str:
    """At each configuration's latest run, every backend side by side; the newest directory's failures listed."""
    latest = history.runs.groupby("series", sort=False).tail(1)
    body = ""
    group = [c for c in series_columns() if c not in ("backend", "variant")] + ["config", "machine"]
    for number, (key, rows) in enumerate(latest.groupby(group, sort=False)):
        where = dict(zip(group, key, strict=True))
        names = [esc(f"{r.backend}/{r.variant}") for r in rows.itertuples()]
        figure = frameworks_figure(names, rows)
        title = (
            " ".join(clean(where[name]) for name in group[:-2] if where[name]) + f" (machine {where['machine']}, config {where['config']})"
        )
        body += f"<h2>{esc(title)}</h2>" + chart(figure, f"frameworks-{number}")
    if not history.rows.empty:
        newest = history.rows[history.rows["directory"] == history.rows.sort_values("run_time")["directory"].iloc[-1]]
        problems = newest[newest["status"] != "ok"]
        rows = [[esc(f"{r.backend}/{r.variant}"), esc(r.device), esc(r.status), esc(r.error)] for r in problems.itertuples()]
        body += f"<h2>jobs of the newest run ({esc(newest['run_id'].iloc[0])}) that did not finish ok</h2>"
        body += cell_table(["backend", "device", "status", "error"], rows) if rows else "<p>none</p>"
    return page("all backends at their latest run", body + profiles_section(history), depth=0)


def profiles_section(history: History) -> str:
    """Per machine, AlgoPerf's performance profile of every backend over the workloads (preset x dataset),
    each at its newest run there: ρ(τ) and the score (framebench.reports.profiles). Empty where no run was timed to a target."""
    if "time_to_target_s" not in history.rows:  # a Parquet export of an older framebench
        return ""
    rows = history.rows.assign(run_id=history.rows["directory"])  # each directory its own run, whatever its rows call it
    body = ""
    timed = set(rows.loc[rows["time_to_target_s"].astype(str) != "", "machine"])
    for number, (machine, mine) in enumerate(rows[rows["machine"].isin(timed)].groupby("machine", sort=False)):
        mine = mine.sort_values("run_time")
        newest = mine.groupby(["preset", "dataset"])["directory"].transform("last")
        ratios = performance_ratios(times_to_target(mine[mine["directory"] == newest], "seconds", precision_workloads=False))
        taus, score = np.linspace(1.0, R_MAX, TAUS), scores(ratios)
        curves = rho(ratios, taus)
        figure = go.Figure(
            [go.Scatter(x=taus, y=curves.loc[s], mode="lines", line={"shape": "hv"}, name=esc(f"{s} {score[s]:.3f}")) for s in score.index]
        )
        figure.update_layout(xaxis_title="τ: time to target over the fastest's", yaxis_title="ρ(τ)", yaxis_range=[-0.02, 1.02])
        body += f"<h2>{esc(f'performance profiles over {ratios.shape[1]} workload(s), machine {machine}')}</h2><p>"
        body += "AlgoPerf's: per workload each backend's median time to target over its seeds (∞: did not converge) over the "
        body += f"fastest's; ratios above {R_MAX:g} get no credit; score: the normalised area under ρ(τ) from 1 to {R_MAX:g}.</p>"
        body += chart(figure, f"profile-{number}")
    return body


def swap_in(staging: Path, target: Path) -> None:
    """Rename the finished site onto `target`, the previous one moved aside first and back on failure."""
    aside = Path(tempfile.mkdtemp(prefix=f".{target.name}.old.", dir=target.parent))
    try:
        if target.exists():
            target.rename(aside / "site")
        try:
            staging.rename(target)
        except OSError:
            if (aside / "site").exists():
                (aside / "site").rename(target)
            raise
    finally:
        shutil.rmtree(aside, ignore_errors=True)


def write_site(history: History, found: list[Found], out: str) -> str:
    """Write the whole site beside --out, then swap it in; returns the index page's path."""
    target = Path(out)
    if target.exists() and not (target / MARKER).is_file():
        raise FrameBenchError(f"--out {out} exists and is not a site framebench wrote; pass a new folder")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
        staging.chmod(0o755)  # mkdtemp's owner-only mode would make the site unreadable to a web server
    except OSError as exc:
        raise FrameBenchError(f"cannot write --out {out} ({exc.strerror or exc})") from None
    try:
        (staging / "series").mkdir()
        (staging / "plotly.min.js").write_text(get_plotlyjs())
        (staging / "index.html").write_text(overview(history, found))
        (staging / "changes.html").write_text(changes_page(found))
        (staging / "frameworks.html").write_text(frameworks_page(history))
        for page_id, runs in history.runs.groupby("page", sort=False):
            mine = [f for f in found if f.first_after["page"] == page_id]
            (staging / "series" / f"{page_id}.html").write_text(key_page(history, runs, mine))
        (staging / MARKER).write_text("written by framebench publish; replaced whole on the next publish\n")
        swap_in(staging, target)
    except OSError as exc:
        raise FrameBenchError(f"cannot write --out {out} ({exc.strerror or exc}); nothing was changed there") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # gone once swapped in; never left behind on any other way out
    return str(target / "index.html")
