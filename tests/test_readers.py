"""Sense, not only shape: every cell of every table is read against what its column can hold (the job
contract's Cell), a report leaves out a row that breaks it with one line naming it, and a gate never
passes on it. The walk at the end takes every column of every table, each bad value and every reading
command; the tests before it are the false greens and tracebacks found on earlier versions, one each.

Directories are built here row by row (store.files.append_rows): no training runs."""

from __future__ import annotations

import html as html_module
import io
import json
import math
import os
import re
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import duckdb
import pandas as pd
import pytest
from markdown_it import MarkdownIt

from framebench.history.site import frameworks_figure
from framebench.reports.markdown import escape_markdown
from framebench.reports.report import FIGURE_CAPTIONS
from framebench.store import schema
from framebench.store.files import append_rows, write_json
from framebench.store.reader import load_results, read_rows
from tests.conftest import REPO, cli
from tests.tables import BACKENDS, MACHINE, STARTED, finished_run, key
from tests.test_history import step_history


def rewrite(directory: Path, table: str, change) -> None:
    """Rewrite `table`.csv with `change(rows)` (a list of row dicts), cells written as given (text in a number column too)."""
    rows, refused = read_rows(directory, table)
    assert refused == []
    (directory / f"{table}.csv").unlink()
    append_rows(directory, table, change(rows.to_dict("records")))


def with_cell(directory: Path, table: str, column: str, value, row: int = 0) -> Path:
    rewrite(directory, table, lambda rows: [{**r, column: value} if i == row else r for i, r in enumerate(rows)])
    return directory


@pytest.fixture
def pair(tmp_path) -> tuple[Path, Path]:
    """BASE and NEW: the same run twice, NEW an hour later."""
    return finished_run(tmp_path / "base"), finished_run(tmp_path / "new", started=STARTED + 3600)


@pytest.fixture(scope="module")
def thresholds(tmp_path_factory) -> str:
    """Thresholds every clean run meets."""
    folder = tmp_path_factory.mktemp("thresholds")
    path = folder / "thresholds.csv"
    assert cli("thresholds", str(finished_run(folder / "r")), "--output", str(path)).returncode == 0
    return str(path)


# The contract


def test_every_column_of_every_table_says_what_it_holds():
    for table in schema.TABLE_NAMES:
        for column in schema.columns(table):
            spec = schema.cell(column)
            assert spec.kind in ("text", "int", "float") and spec.rule, (table, column)
    assert schema.cell("final_test_acc").rule == "a finite number in [0, 1] (or empty)"
    assert schema.cell("attempt").rule == "an integer in [1, 9007199254740992]"
    assert schema.text_columns() == {c for t in schema.TABLE_NAMES for c in schema.columns(t) if schema.cell(c).kind == "text"}


def test_a_bad_cell_is_one_line_naming_file_row_column_and_the_value_escaped_and_clipped(tmp_path):
    directory = with_cell(finished_run(tmp_path / "r"), "runs", "median_epoch_s", "\x1b[31m" + "9" * 100, row=2)
    rows, refused = read_rows(directory, "runs")
    assert len(rows) == 3 and [r.row for r in refused] == [3]
    assert str(refused[0]) == (
        f"{directory / 'runs.csv'}: row 3, column median_epoch_s: '\\x1b[31m{'9' * 35}...' is not a finite number in "
        "[1e-09, 31622400] (or empty)"
    )


def test_integer_columns_read_as_integers_and_text_stays_text(tmp_path):
    directory = with_cell(finished_run(tmp_path / "r"), "runs", "sweep_value", "")
    runs = load_results(directory)["runs"]
    assert runs["repeat"].dtype == "int64" and runs["attempt"].dtype == "int64" and runs["peak_gpu_mb"].isna().all()
    assert runs["error"].tolist() == [""] * 4


# False greens: each passed a gate on an earlier version


@pytest.mark.parametrize("accuracy", ["inf", "-inf", "2.5", "abc"])
def test_compare_and_check_refuse_an_impossible_accuracy(pair, thresholds, accuracy):
    base, new = pair
    with_cell(new, "runs", "final_test_acc", accuracy)
    for args in (["compare", str(base), str(new)], ["check", str(new), "--thresholds", thresholds]):
        result = cli(*args)
        assert result.returncode == 2 and result.stdout == "", (args, result.stdout)
        assert result.stderr.splitlines() == [result.stderr.strip()] and "row 1, column final_test_acc" in result.stderr


@pytest.mark.parametrize("seconds", [0, -1])
def test_compare_refuses_new_epoch_times_of_zero_or_less(pair, seconds):
    base, new = pair
    rewrite(new, "epochs", lambda rows: [{**r, "epoch_s": seconds} for r in rows])
    rewrite(new, "runs", lambda rows: [{**r, "median_epoch_s": seconds, "first_epoch_s": seconds} for r in rows])
    result = cli("compare", str(base), str(new))
    assert result.returncode == 2 and "improved" not in result.stdout and "column first_epoch_s" in result.stderr


@pytest.mark.parametrize("calibration, status", [(0, 2), ("nan", 0)])
def test_compare_takes_zero_and_empty_calibrations_in_one_line(pair, calibration, status):
    """A calibration of 0 s was not timed (refused); an empty one was not measured (the machine is not compared)."""
    base, new = pair
    for directory in pair:
        rewrite(directory, "runs", lambda rows: [{**r, "calib_before_s": calibration, "calib_after_s": calibration} for r in rows])
    result = cli("compare", str(base), str(new))
    assert result.returncode == status and len(result.stderr.splitlines()) == (1 if status else 0), result.stderr


def slowed_history(root: Path, metric: str = "median_epoch_s") -> list[Path]:
    """Eight runs of numpy and jax, numpy 50% slower (or 5 points less accurate) from the fifth on."""
    directories = [finished_run(root / f"r{i:02d}", started=STARTED + 3600 * i) for i in range(8)]
    worse = {"median_epoch_s": lambda v: v * 1.5, "final_test_acc": lambda v: v - 0.05}[metric]
    for path in directories[4:]:
        rewrite(path, "runs", lambda rows: [{**r, metric: worse(r[metric])} if r["backend"] == "numpy" else r for r in rows])
    return directories


@pytest.mark.parametrize("column", ["median_epoch_s", "final_test_acc"])
def test_one_infinite_cell_does_not_disable_the_history_gate(tmp_path, column):
    directories = slowed_history(tmp_path / "runs", metric=column)
    with_cell(directories[5], "runs", column, "inf")
    result = cli("publish", str(tmp_path / "runs"), "--out", str(tmp_path / "site"), "--fail-on-regression")
    assert result.returncode == 1 and "0 change(s)" not in result.stdout
    assert result.stdout.splitlines()[-1] == "1 series' latest change is a regression (slower or less accurate)"
    assert result.stderr.splitlines() == [
        f"warning: {directories[5] / 'runs.csv'}: row 1, column {column}: 'inf' is not a finite number in "
        f"{'[1e-09, 31622400]' if column == 'median_epoch_s' else '[0, 1]'} (or empty); the row is left out"
    ]


def test_runs_the_history_cannot_read_refuse_the_gate_rather_than_pass_it(tmp_path):
    directories = slowed_history(tmp_path / "runs")
    for directory in directories[4:]:  # every run that carries the slowdown
        (directory / "runs.csv").write_bytes(b"\x00garbage\n")
    result = cli("publish", str(tmp_path / "runs"), "--out", str(tmp_path / "site"), "--fail-on-regression")
    assert result.returncode == 2 and result.stdout.startswith("0 change(s) in 2 series (inputs or rows left out: 4 warning(s))")
    assert result.stdout.splitlines()[-1].startswith("not verified: inputs or rows could not be read")
    assert len(result.stderr.splitlines()) == 4 and all(line.startswith("warning: skipped ") for line in result.stderr.splitlines())


def test_the_history_reads_a_byte_order_mark_and_framebench_s_own_long_error_cells(tmp_path):
    """A spreadsheet's save (a UTF-8 BOM) and a job whose one-line exception is over 2 MB (a directory
    framebench itself writes) are read: the regression they carry is found."""
    directories = slowed_history(tmp_path / "runs")
    for directory in directories[4:6]:
        (directory / "runs.csv").write_bytes(b"\xef\xbb\xbf" + (directory / "runs.csv").read_bytes())
    failed = {**key(backend="jax", repeat=2), "node": "box", "status": "failed", "error": "RuntimeError: " + "x" * 3_000_000}
    append_rows(directories[6], "runs", [failed])
    result = cli("publish", str(tmp_path / "runs"), "--out", str(tmp_path / "site"), "--fail-on-regression")
    assert result.returncode == 1 and result.stderr == "" and "numpy/default cpu mlp digits" in result.stdout
    append_rows(
        directories[4], "runs", [{**key(backend="jax", repeat=2), "node": "box", "status": "failed"}]
    )  # a writer appends after the mark
    assert (directories[4] / "runs.csv").read_bytes().startswith(b"\xef\xbb\xbf") and len(load_results(directories[4])["runs"]) == 5


# Tracebacks: each was one on an earlier version


@pytest.mark.parametrize(
    "change, field",
    [
        ({"sweep": {"field": "epochs", "values": ["abc"]}}, "'abc' is not a valid value"),
        ({"sweep": {"field": "no_such_field", "values": ["1"]}}, "not a field a sweep can vary"),
        ({"target_acc": math.inf}, "target_acc is inf"),
        ({"threads": 0}, "threads is 0"),
        ({"train": {"epochs": -3}}, "epochs must be positive"),
        ({"train": {"lr": math.nan}}, "lr must be a finite number > 0"),
    ],
)
def test_config_values_that_cannot_be_are_one_line_in_every_command(pair, thresholds, tmp_path, change, field):
    base, new = pair
    data = json.loads((new / "config.json").read_text())
    data.update({k: {**data[k], **v} if k == "train" else v for k, v in change.items()})
    (new / "config.json").write_text(json.dumps(data))
    commands = [
        ["plot", str(new)],
        ["check", str(new), "--thresholds", thresholds],
        ["compare", str(base), str(new)],
        ["thresholds", str(new)],
        ["run", "--resume", str(new)],
    ]
    for args in commands:
        result = cli(*args)
        assert result.returncode == 2 and result.stderr.splitlines() == [result.stderr.strip()] and field in result.stderr, (
            args,
            result.stderr,
        )


def test_a_sweep_value_the_config_never_had_is_left_out_of_reports_and_refused_by_gates(pair, thresholds):
    base, new = pair
    data = json.loads((new / "config.json").read_text())
    data["sweep"], data["train"]["epochs"] = {"field": "epochs", "values": ["3"]}, 3
    (new / "config.json").write_text(json.dumps(data))
    rewrite(new, "runs", lambda rows: [{**r, "sweep_field": "epochs", "sweep_value": "abc" if i == 0 else "3"} for i, r in enumerate(rows)])
    check = cli("check", str(new), "--thresholds", thresholds)
    assert check.returncode == 2 and "row 1, column sweep_value: 'abc' is not a value of config.json's sweep (epochs: 3)" in check.stderr
    plot = cli("plot", str(new))
    assert plot.returncode == 0 and plot.stderr.count("the row is left out") == 1


@pytest.mark.parametrize("start", ["nan", "absent", "huge"])
def test_history_and_publish_take_a_job_without_a_usable_start_time_in_one_line(tmp_path, start):
    directory = finished_run(tmp_path / "runs" / "r")
    rewrite(directory, "runs", lambda rows: [{**r, "started_at": 1e30 if start == "huge" else None} for r in rows])
    if start == "absent":
        write_json(directory, "machine.json", {k: v for k, v in MACHINE.items() if k != "started_utc"})  # no started_utc either
    finished_run(tmp_path / "runs" / "s", started=STARTED + 3600)
    for args in (["history", str(tmp_path / "runs")], ["publish", str(tmp_path / "runs"), "--out", str(tmp_path / "site")]):
        result = cli(*args)
        assert result.returncode == 0 and len(result.stderr.splitlines()) == (1 if start != "nan" else 0), result.stderr
    if start == "absent":
        assert "4 job(s) without a start time" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["runs", "site"]  # no staging folder left behind


def test_a_site_that_fails_mid_write_leaves_no_staging_folder(tmp_path, monkeypatch):
    finished_run(tmp_path / "runs" / "r")
    monkeypatch.setattr("framebench.history.site.frameworks_page", lambda history: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        cli("publish", str(tmp_path / "runs"), "--out", str(tmp_path / "site"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["runs"]


def test_a_parquet_file_of_another_shape_is_one_line_and_refuses_the_gate(tmp_path):
    finished_run(tmp_path / "runs" / "r")
    other, exported, damaged = tmp_path / "other.parquet", tmp_path / "history.parquet", tmp_path / "damaged.parquet"
    duckdb.sql(f"COPY (SELECT 1 AS a, 'x' AS b) TO '{other}' (FORMAT parquet)")
    assert cli("history", str(tmp_path / "runs"), "--parquet", str(exported)).returncode == 0
    duckdb.sql(f"COPY (SELECT * REPLACE (2.5 AS final_test_acc) FROM read_parquet('{exported}')) TO '{damaged}' (FORMAT parquet)")
    for path, warning in ((other, "is not a history export (no column run_id"), (damaged, "column final_test_acc: '2.5' is not")):
        result = cli("publish", str(tmp_path / "runs"), str(path), "--out", str(tmp_path / "site"), "--fail-on-regression")
        assert result.returncode == 2 and len(result.stderr.splitlines()) == 1 and warning in result.stderr, result.stderr


def test_a_clean_parquet_export_reads_back_as_the_directories(tmp_path):
    finished_run(tmp_path / "runs" / "r")
    exported = tmp_path / "history.parquet"
    assert cli("history", str(tmp_path / "runs"), "--parquet", str(exported)).returncode == 0
    result = cli("publish", str(exported), "--out", str(tmp_path / "site"), "--fail-on-regression")
    assert result.returncode == 0 and result.stderr == ""


# Markdown, pipes, interrupts, the frameworks chart


BEACON = "![b](http://host/t.png) @everyone"


def rendered(markdown: str) -> str:
    """GitHub-flavoured Markdown's core (CommonMark, with tables) rendered to HTML."""
    return MarkdownIt("commonmark").enable("table").render(markdown)


@pytest.mark.parametrize(
    "text",
    [
        BEACON,
        "[click](javascript:alert(1)) [ref][1]\n[1]: http://evil.example",
        "<http://evil.example> www.evil.example https://evil.example/x mailto:a@evil.example",
        "fixes #12 and owner/repo#3, @org/team",
        "a\\| b \\[x](y)",
    ],
)
def test_text_from_results_renders_as_text_without_images_links_or_mentions(text):
    cell = escape_markdown(text)
    html = rendered(f"| a |\n|---|\n| {cell} |\n")
    assert "<img" not in html and "<a " not in html and html.count("<td>") == 1, html
    for live in (
        "http://",
        "https://",
        "www.",
        "@everyone",
        "@org",
        "@evil",
        "#12",
        "#3",
    ):  # what GitHub links after parsing (GFM's extended autolinks, mentions, references)
        assert live not in html
    shown = html_module.unescape(re.sub(r"<[^>]+>", "", html.split("<td>")[1].split("</td>")[0])).replace("\u2060", "")
    assert shown == text.replace("\n", " ")  # it reads as written


def test_report_and_compare_markdown_keep_a_beacon_inert(pair, tmp_path):
    base, new = pair
    append_rows(new, "runs", [{**key(attempt=2), "node": "box", "status": "failed", "error": BEACON}])
    assert cli("plot", str(new)).returncode == 0
    markdown = tmp_path / "compare.md"
    assert cli("compare", str(base), str(new), "--markdown", str(markdown)).returncode == 1
    for text in ((new / "report.md").read_text(), markdown.read_text()):
        html = rendered(text)
        assert "t.png" in html and set(re.findall(r'<img src="([^"]*)"', html)) <= {*FIGURE_CAPTIONS, "profile.png"}, (
            html
        )  # only the report's own figures
        assert "@everyone" not in html and "http://host" not in html


def test_a_closed_stdout_ends_publish_quietly_after_its_work(tmp_path):
    """`framebench publish ... | head`: the site is written, then the process ends as one killed by SIGPIPE would
    (status 141), with no message claiming a path or permission problem and no traceback."""
    step_history(tmp_path / "runs", runs=4)
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before the first line
    try:
        process = subprocess.run(
            [sys.executable, "-m", "framebench", "publish", str(tmp_path / "runs"), "--out", str(tmp_path / "site")],
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            cwd=REPO,
            timeout=120,
        )
    finally:
        os.close(write_end)
    assert process.returncode == 141 and process.stderr == "" and (tmp_path / "site" / "index.html").is_file()


def test_a_closed_stdout_in_process_is_status_141_without_a_message(tmp_path, monkeypatch):
    class ClosedPipe(io.StringIO):
        def write(self, text):
            raise BrokenPipeError(32, "Broken pipe")

    finished_run(tmp_path / "r")
    monkeypatch.setattr(sys, "stdout", ClosedPipe())
    with pytest.raises(SystemExit) as exited:
        from framebench.cli import main

        main(["check", str(tmp_path / "r"), "--allow-missing"])
    assert exited.value.code == 141


@pytest.mark.parametrize(
    "command, handler, words",
    [
        ("publish", "framebench.history.commands.run_publish", "interrupted; the site at --out is only ever replaced whole"),
        ("history", "framebench.history.commands.run_history", "interrupted"),
    ],
)
def test_ctrl_c_says_what_is_true_of_the_command_interrupted(tmp_path, monkeypatch, command, handler, words):
    def interrupted(*_, **__):
        raise KeyboardInterrupt

    monkeypatch.setattr(handler, interrupted)
    result = cli(command, str(tmp_path), *(["--out", str(tmp_path / "site")] if command == "publish" else []))
    assert result.returncode == 130 and result.stderr == words + "\n"


def test_the_frameworks_chart_gives_each_quantity_an_axis_of_its_own():
    rows = pd.DataFrame({"epoch_s": [1.0, 0.5], "acc": [0.95, 0.96], "run_id": ["r", "r"], "commit": ["c", "c"]})
    rows["run_time"], rows["versions"], rows["repeats"] = pd.Timestamp("2027-01-01", tz="UTC"), "1.0", 2
    figure = frameworks_figure(["numpy/default", "jax/default"], rows)
    time, accuracy = figure.data
    assert list(time.y) == [1.0, 0.5] and list(accuracy.y) == [0.95, 0.96]
    domains = [figure.layout[f"xaxis{'' if axis.xaxis == 'x' else axis.xaxis[1:]}"].domain for axis in (time, accuracy)]
    assert time.xaxis != accuracy.xaxis and domains[0][1] < domains[1][0]  # side by side, not overlaid


# The walk: every column of every table, each bad value, every reading command


BAD_VALUES = {"text": "abc", "nan": "nan", "inf": "inf", "-inf": "-inf", "negative": "-1", "zero": "0", "huge": "1e300"}


def impossible(table: str, column: str, written: str) -> bool:
    """Whether the contract says no measurement can be `written` in `column` (the oracle of the walk,
    stated apart from the reader's code)."""
    spec = schema.cell(column)
    if table == "runs" and column in ("sweep_field", "sweep_value"):
        return written != ""  # config.json's sweep is none
    if spec.kind == "text":
        return bool(spec.choices) and written not in spec.choices
    try:
        number = float(written)
    except ValueError:
        return True
    if math.isnan(number):
        return spec.required
    return not (math.isfinite(number) and spec.low <= number <= spec.high and (spec.kind == "float" or number.is_integer()))


def damaged(root: Path, name: str, table: str, cells: list[tuple[str, str]]) -> Path:
    """A clean directory with each (column, value) of `cells` written into a row of its own of `table`.
    A runs.csv cell goes into a new attempt of its own job (the job's latest then carries it, and a
    damaged key names a job nobody planned, so resume has nothing to run); other tables' cells replace
    the cell of an existing row."""
    directory = finished_run(root / name, repeats=max(2, math.ceil(len(cells) / len(BACKENDS))), started=STARTED + 3600)
    if table == "runs":
        for curves in ("epochs", "steps", "evals"):  # two repeats' curves are enough (the reports draw every job's: 160 cost 30 s)
            rewrite(directory, curves, lambda rows: [r for r in rows if r["repeat"] < 2])
        rows = read_rows(directory, "runs")[0].to_dict("records")[: len(cells)]  # a job per cell
        append_rows(directory, "runs", [{**row, "attempt": 2, column: value} for row, (column, value) in zip(rows, cells, strict=True)])
    else:
        by_row = dict(enumerate(cells))
        copies = lambda rows: rows * math.ceil(len(cells) / len(rows))  # noqa: E731  (gemm.csv's rows do not grow with the jobs)
        rewrite(directory, table, lambda rows: [{**r, **dict([by_row[i]])} if i in by_row else r for i, r in enumerate(copies(rows))])
    return directory


@dataclass(frozen=True)
class Reading:
    """A command that reads results directories: its arguments, and the tables on which it is a gate
    (an impossible cell there never lets it exit 0); of any other table it leaves the row out with a warning."""

    name: str
    args: object  # (clean directory, damaged directory, thresholds file, scratch folder) -> argv
    refuses: tuple[str, ...] = ()  # the tables on which it is a gate
    leaves_out: tuple[str, ...] = ()  # columns whose bad rows it leaves out even on those tables

    def __call__(self, clean: Path, bad: Path, thresholds: str, scratch: Path):
        return cli(*self.args(clean, bad, thresholds, scratch))


ALL = schema.TABLE_NAMES
READINGS = [  # a new reading command is one line here
    Reading("plot", lambda c, b, t, s: ["plot", str(b)]),
    Reading("check", lambda c, b, t, s: ["check", str(b), "--thresholds", t], refuses=ALL),
    Reading("thresholds", lambda c, b, t, s: ["thresholds", str(b)], refuses=ALL),
    Reading("compare NEW", lambda c, b, t, s: ["compare", str(c), str(b)], refuses=ALL),
    Reading("compare BASE", lambda c, b, t, s: ["compare", str(b), str(c)], refuses=ALL),
    Reading("history", lambda c, b, t, s: ["history", str(c), str(b)]),
    Reading("publish", lambda c, b, t, s: ["publish", str(c), str(b), "--out", str(s / "site")]),
    Reading("publish gate", lambda c, b, t, s: ["publish", str(c), str(b), "--out", str(s / "gate"), "--fail-on-regression"], refuses=ALL),
    Reading(  # last: it rewrites the report. A sweep value config.json never had names a job it never planned: nothing to resume
        "resume", lambda c, b, t, s: ["run", "--resume", str(b)], ("runs", "epochs", "steps", "evals"), ("sweep_field", "sweep_value")
    ),
]


def counted(lines: list[str]) -> Counter:
    """{column: rows} of a command's lines about rows it left out or refused (each names its first row and counts the rest)."""
    rows = Counter()
    for line in lines:
        if ", column " in line:
            more = re.search(r"and (\d+) more row\(s\)", line)
            rows[line.split(", column ")[1].split(":")[0]] += 1 + (int(more[1]) if more else 0)
    return rows


def walk(tmp_path: Path, thresholds: str, table: str, values: list[str], kind: str) -> None:
    """Every column of `table` with each of `values`, where the value is impossible (kind "impossible") or
    possible ("possible") there, each cell in a row of its own, all at once through every reading command.
    Each command's lines count the rows they leave out or refuse, column by column: one cell read wrongly
    changes a count."""
    cells = [(c, v) for v in values for c in schema.columns(table) if impossible(table, c, v) == (kind == "impossible")]
    if not cells:
        pytest.skip(f"{values} are {'possible' if kind == 'impossible' else 'impossible'} in every column of {table}.csv")
    expected = Counter(column for column, _ in cells) if kind == "impossible" else Counter()
    clean = finished_run(tmp_path / "clean")
    bad = damaged(tmp_path, "damaged", table, cells)
    assert Counter(r.column for r in load_results(bad)["refused"]) == expected
    for reading in READINGS:
        result = reading(clean, bad, thresholds, tmp_path)  # a traceback fails the test here
        lines = result.stderr.splitlines()
        where = (reading.name, result.returncode, result.stderr[-2000:], result.stdout[-500:])
        gated = [column for column, _ in cells if column not in reading.leaves_out] if table in reading.refuses else []
        changes = [line for line in result.stdout.splitlines() if "0 change(s)" in line]
        assert kind == "possible" or all("left out" in line for line in changes), where  # never "0 change(s)" hiding what was not read
        if kind == "possible":
            assert counted(lines) == Counter() and (len(lines) <= 1 or reading.name == "resume"), where  # no row left out or refused
            assert result.returncode == 0 or (reading.refuses == ALL and result.returncode in (1, 2)), where  # a gate's verdict on it
            assert "0 to run" in result.stderr or reading.name != "resume", where  # nothing planned went missing: no training
        elif reading.name == "publish gate" and gated:  # it prints its changes, then says why it refuses
            assert result.returncode == 2 and result.stdout.splitlines()[-1].startswith("not verified: inputs or rows could not be"), where
            assert counted(lines) == expected, where
        elif gated:  # never a pass on an impossible value: one line, counting every row it refused
            assert result.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: ") and "column " in lines[0], where
            assert sum(counted(lines).values()) == len(gated), where
        else:
            assert result.returncode == 0 and counted([line for line in lines if "left out" in line]) == expected, where


FAST = [("runs", ["inf"], "impossible"), ("epochs", ["nan"], "possible")]  # one value each; the slow part walks them all
WALKED = [(table, list(BAD_VALUES), kind) for table in schema.TABLE_NAMES for kind in ("impossible", "possible")]


@pytest.mark.parametrize(
    "table, values, kind",
    [pytest.param(*case, id="-".join([case[0], *case[1], case[2]])) for case in FAST]
    + [pytest.param(*case, marks=pytest.mark.slow, id=f"{case[0]}-every-{case[2]}") for case in WALKED],
)
def test_every_column_of_every_table_with_every_bad_value_through_every_reading_command(tmp_path, thresholds, table, values, kind):
    walk(tmp_path, thresholds, table, [BAD_VALUES[v] for v in values], kind)


@pytest.mark.parametrize("table", schema.TABLE_NAMES)
def test_the_reader_refuses_exactly_the_cells_the_contract_calls_impossible(tmp_path, table):
    """Every column with every bad value, each in a row of its own, in one read: fast and exhaustive."""
    for name, value in BAD_VALUES.items():
        cells = [(c, value) for c in schema.columns(table) if c not in ("run_id", "attempt") or table != "runs"]
        directory = damaged(tmp_path, name, table, cells)
        refused = load_results(directory)["refused"]
        expected = {c for c, v in cells if impossible(table, c, v)}
        assert {r.column for r in refused} == expected, (name, {r.column for r in refused} ^ expected)
        assert all(r.value in (value, "" if value == "abc" else str(float(value)), "") for r in refused), [str(r) for r in refused]


def test_many_bad_rows_of_one_column_are_one_line_in_a_report(tmp_path):
    """Many bad rows of one column are one line in a report, naming the first and counting the rest."""
    directory = finished_run(tmp_path / "r")
    rewrite(directory, "epochs", lambda rows: [{**r, "test_acc": 7} for r in rows])
    result = cli("plot", str(directory))
    assert result.returncode == 0 and result.stderr.splitlines() == [
        f"warning: {directory / 'epochs.csv'}: row 1, column test_acc: '7.0' is not a finite number in [0, 1] (or empty); "
        "the row is left out, and 11 more row(s) with a bad test_acc"
    ]
    assert "- left out: " in (directory / "report.md").read_text()


def test_a_directory_written_before_the_machine_record_s_rename_is_read_and_compared_alike(tmp_path):
    """Older results name their machine record env.json: it is read in place, and compare matches its timings."""
    current = finished_run(tmp_path / "current")
    older = finished_run(tmp_path / "older")
    (older / "machine.json").rename(older / "env.json")
    assert load_results(older)["machine"] == load_results(current)["machine"] != {}
    result = cli("compare", str(current), str(older))
    assert result.returncode == 0 and "no machine record" not in result.stdout, result.stdout
