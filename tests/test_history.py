"""History: DuckDB series over synthetic results directories, the step detector on synthetic series, the
published site (escaping, hostile input, atomic writes) and, in headless Chromium, that it renders."""

from __future__ import annotations

import csv
import json
import os
import select
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from framebench.cli import main
from framebench.history.changes import ACCURACY, TIME, all_changes, detect
from framebench.history.series import export_parquet, load_history
from framebench.history.text import label
from framebench.reports.floors import load_with_floors
from framebench.reports.summary import summary
from framebench.store.schema import columns
from tests import tables

NODE = {"machine": "ci-1", "cpu": "Test CPU", "cores": 2, "kernel_settings": {}, "gpus": [], "libraries": {}}
TRAIN = {"optimizer": "sgd", "lr": 0.001, "batch_size": 128, "epochs": 2}


def series_frame(values, spread: float = 0.0, metric=TIME) -> pd.DataFrame:
    """A series as the history's runs table has it: per-run medians and their repeats' range."""
    values = np.asarray(values, float)
    return pd.DataFrame({metric.column: values, metric.low: values * (1 - spread), metric.high: values * (1 + spread)})


def noisy(levels: list[tuple[float, int]], noise: float = 0.01, seed: int = 0) -> np.ndarray:
    """Runs at each (level, count), with relative Gaussian noise."""
    rng = np.random.default_rng(seed)
    values = np.concatenate([np.full(count, level) for level, count in levels])
    return values * (1 + noise * rng.standard_normal(len(values)))


def test_a_clean_step_is_found_at_the_first_run_after_it():
    changes = detect(series_frame(noisy([(0.71, 6), (0.93, 6)])), TIME)
    assert [c.index for c in changes] == [6]
    step = changes[0]
    assert step.effect == pytest.approx(0.93 / 0.71, rel=0.03)
    assert step.low <= step.effect <= step.high and step.low > 1.2
    assert step.regression


def test_noise_without_a_step_has_no_change():
    for seed in range(20):
        assert detect(series_frame(noisy([(1.0, 20)], noise=0.03, seed=seed)), TIME) == []


def test_two_steps_are_both_found():
    changes = detect(series_frame(noisy([(1.0, 5), (1.4, 5), (0.9, 6)])), TIME)
    assert [c.index for c in changes] == [5, 10]
    assert changes[0].regression and not changes[1].regression


@pytest.mark.parametrize("where", [0, 5, 11])
def test_a_single_outlier_is_not_a_change(where):
    values = noisy([(1.0, 12)])
    values[where] *= 3
    assert detect(series_frame(values), TIME) == []


def test_a_step_inside_the_repeats_spread_is_not_claimed():
    values = noisy([(1.0, 6), (1.05, 6)], noise=0.002)
    assert [c.index for c in detect(series_frame(values), TIME)] == [6]
    assert detect(series_frame(values, spread=0.2), TIME) == []


def test_an_accuracy_drop_is_a_regression_and_its_interval_is_a_difference():
    changes = detect(series_frame(noisy([(0.97, 5), (0.95, 5)], noise=0.0005), metric=ACCURACY), ACCURACY)
    assert [c.index for c in changes] == [5]
    assert changes[0].effect == pytest.approx(-0.02, abs=0.002) and changes[0].high < 0 and changes[0].regression


def write_run(
    root: Path,
    run_id: str,
    seconds: dict[str, list[float]],
    *,
    started: float,
    commit: str,
    acc: float = 0.97,
    train: dict | None = None,
    extra: list[dict] = (),
) -> Path:
    """A results directory of tutorial000 on mnist as `framebench run` writes it: {backend: steady epoch
    seconds per repeat}, two epochs each, node n1; `extra` runs.csv rows after them (this run's otherwise)."""
    run = {"run_id": run_id, "dataset": "mnist", "preset": "tutorial000"}
    jobs = [(backend, repeat, value) for backend, repeats in seconds.items() for repeat, value in enumerate(repeats)]
    runs = [tables.run_row(**run, backend=b, repeat=r, epoch_s=v, final_test_acc=acc, node="n1", started_at=started) for b, r, v in jobs]
    epochs = [row for b, r, v in jobs for row in tables.epoch_rows(**run, backend=b, repeat=r, epoch_s=v, epochs=2)]
    config = tables.run_config(
        tuple(seconds) or ("numpy",), repeats=2, preset="tutorial000", dataset="mnist", model={}, train=train or TRAIN
    )
    machine = {"git_commit": commit, "started_utc": "2026-01-01T00:00:00+00:00", "nodes": {"n1": NODE}}
    extras = [tables.run_row(**run, node="n1", started_at=started, **row) for row in extra]
    return tables.results_directory(root / run_id, runs + extras, epochs=epochs, config=config, machine=machine)


def step_history(root: Path, runs: int = 8, step_at: int = 4) -> list[Path]:
    """numpy slows from 1.0 s to 1.3 s at run `step_at`; torch stays at 2.0 s."""
    directories = []
    for i in range(runs):
        numpy = (1.3 if i >= step_at else 1.0) * (1 + 0.005 * (-1) ** i)
        seconds = {"numpy": [numpy, numpy * 1.01], "torch": [2.0, 2.02]}
        directories.append(write_run(root, f"r{i:02d}", seconds, started=1.8e9 + 3600 * i, commit=f"c{i:02d}abcdef0123"))
    return directories


def test_series_are_per_run_medians_split_by_training_configuration(tmp_path):
    step_history(tmp_path)
    write_run(tmp_path, "other-lr", {"numpy": [5.0]}, started=1.9e9, commit="x", train={**TRAIN, "lr": 0.1})
    retry = {"backend": "torch", "repeat": 0, "seed": "0", "attempt": 2, "status": "ok", "median_epoch_s": 3.0, "final_test_acc": 0.97}
    write_run(tmp_path, "retried", {"torch": [9.0]}, started=1.9e9, commit="y", train={**TRAIN, "lr": 0.5}, extra=[retry])
    history = load_history([str(tmp_path)])
    runs = history.runs
    assert runs["series"].nunique() == 4  # numpy, torch, numpy at another lr, torch at a third
    numpy = runs[(runs["backend"] == "numpy") & (runs["run_id"].str.startswith("r"))]
    assert numpy["run_id"].tolist() == [f"r{i:02d}" for i in range(8)]
    assert numpy["epoch_s"].iloc[0] == pytest.approx(1.005 * 1.005)  # median of 1.005 and 1.005 * 1.01
    assert (numpy["epoch_s_min"].iloc[0], numpy["epoch_s_max"].iloc[0]) == pytest.approx((1.005, 1.005 * 1.01))
    assert runs[runs["run_id"] == "retried"]["epoch_s"].tolist() == [3.0]  # the latest attempt only


def test_the_history_and_the_reports_give_the_same_medians_for_the_same_directory(tmp_path):
    """Both read through the store's one reader: one latest attempt per job, one definition of a group's medians."""
    retry = {"backend": "torch", "repeat": 1, "seed": "0", "attempt": 2, "status": "ok", "median_epoch_s": 2.5, "final_test_acc": 0.91}
    failed = {"backend": "numpy", "repeat": 2, "seed": "0", "attempt": 1, "status": "failed", "median_epoch_s": 9.0, "final_test_acc": 0.1}
    directory = write_run(tmp_path, "r", {"numpy": [1.0, 1.2], "torch": [2.0, 2.2]}, started=1.8e9, commit="c", extra=[retry, failed])
    reported = summary(load_with_floors(directory)["runs"]).set_index("backend")
    history = load_history([str(directory)]).runs.set_index("backend")
    assert reported.loc["torch", "runs_ok"] == 2 and reported.loc["torch", "max_epoch_s"] == 2.5  # the retry replaced repeat 1
    for mine, theirs in {
        "epoch_s": "median_epoch_s",
        "epoch_s_min": "min_epoch_s",
        "epoch_s_max": "max_epoch_s",
        "acc": "test_acc",
    }.items():
        assert history[mine].to_dict() == reported[theirs].to_dict(), mine
    assert history["repeats"].to_dict() == reported["runs_ok"].to_dict() == {"numpy": 2, "torch": 2}


def test_history_finds_the_step_names_the_runs_around_it_and_exports_parquet(tmp_path, capsys):
    step_history(tmp_path / "runs")
    out = tmp_path / "history.parquet"
    with pytest.raises(SystemExit) as exit_status:
        main(["history", str(tmp_path / "runs"), "--parquet", str(out)])
    assert exit_status.value.code == 0
    printed = capsys.readouterr().out
    assert "wrote 32 rows" in printed
    found = all_changes(load_history([str(tmp_path / "runs")]).runs)
    assert [(f.first_after["backend"], f.change.metric.label, f.first_after["run_id"], f.last_before["run_id"]) for f in found] == [
        ("numpy", "epoch time", "r04", "r03")
    ]
    from_parquet = load_history([str(out)]).runs
    from_csv = load_history([str(tmp_path / "runs")]).runs
    pd.testing.assert_frame_equal(from_parquet, from_csv)


def test_publish_prints_each_change_and_gates_on_a_regression(tmp_path, capsys):
    step_history(tmp_path / "runs")
    site = tmp_path / "site"
    for flags, expected in (([], 0), (["--fail-on-regression"], 1)):
        with pytest.raises(SystemExit) as exit_status:
            main(["publish", str(tmp_path / "runs"), "--out", str(site), *flags])
        assert exit_status.value.code == expected
    lines = [line for line in capsys.readouterr().out.splitlines() if "→" in line]
    assert lines[0].startswith("numpy/default cpu tutorial000 mnist [machine ")
    assert " epoch time: 1.00 s → 1.31 s (×1.30 [" in lines[0] and "from run r04 (commit c04abcdef0), last before: r03" in lines[0]
    pages = sorted(str(p.relative_to(site)) for p in site.rglob("*.html"))
    assert pages[:3] == ["changes.html", "frameworks.html", "index.html"] and len(pages) == 5
    assert len(list(site.rglob("plotly.min.js"))) == 1
    assert 'src="../plotly.min.js"' in next((site / "series").iterdir()).read_text()


def test_publish_refuses_to_replace_a_folder_it_did_not_write(tmp_path, capsys):
    step_history(tmp_path / "runs", runs=2)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "keep.txt").write_text("x")
    with pytest.raises(SystemExit) as exit_status:
        main(["publish", str(tmp_path / "runs"), "--out", str(tmp_path / "mine")])
    assert exit_status.value.code == 2
    assert "is not a site framebench wrote" in capsys.readouterr().err
    assert (tmp_path / "mine" / "keep.txt").exists()


HOSTILE = '<script>alert("x")</script>|a\nb'


def hostile_directory(root: Path) -> Path:
    """A results directory someone sent: markup, pipes and line breaks in names and errors (hand-written
    CSV: framebench's own writer would have joined the lines)."""
    directory = write_run(root, "h<i>1", {}, started=1.8e9 + 1e6, commit="<b>c</b>")
    with (directory / "runs.csv").open("a", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns("runs"), lineterminator="\n")
        common = {"run_id": HOSTILE, "device": "cpu", "dataset": "mnist", "preset": "tutorial000", "node": "n1", "attempt": 1, "repeat": 0}
        common["started_at"] = 1.8e9 + 1e6
        writer.writerow({**common, "backend": HOSTILE, "variant": HOSTILE, "status": "ok", "median_epoch_s": 1.0, "final_test_acc": 0.9})
        writer.writerow({**common, "backend": "numpy", "variant": "x", "status": "failed", "error": f"boom {HOSTILE}"})
    return directory


def test_publish_escapes_hostile_text_and_skips_malformed_directories(tmp_path, capsys):
    step_history(tmp_path / "runs", runs=4)
    hostile_directory(tmp_path / "runs")
    broken = tmp_path / "runs" / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    (broken / "runs.csv").write_text("a,b\n1,2\n")
    wrong = write_run(tmp_path / "runs", "wrong-columns", {"numpy": [1.0]}, started=1.8e9, commit="c")
    (wrong / "runs.csv").write_text("run_id,backend\nx,y\n")
    site = tmp_path / "site"
    with pytest.raises(SystemExit) as exit_status:
        main(["publish", str(tmp_path / "runs"), "--out", str(site)])
    assert exit_status.value.code == 0
    captured = capsys.readouterr()
    skipped = [line for line in captured.err.splitlines() if line.startswith("warning: skipped")]
    assert len(skipped) == 2 and "broken" in skipped[0] and "wrong-columns" in skipped[1]
    assert len(captured.err.splitlines()) == 2
    text = "".join(p.read_text() for p in site.rglob("*.html"))
    assert "boom" in text and "alert" in text  # the hostile rows did reach the pages...
    for raw in ("<script>alert", "</script>|", "<b>c</b>", "h<i>1", '"x")</script>'):
        assert raw not in text  # ...escaped
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;|a b" in text
    assert all(p.name.isascii() and "<" not in p.name for p in site.rglob("*"))


def test_a_failed_write_leaves_the_previous_site_whole(tmp_path, monkeypatch):
    step_history(tmp_path / "runs", runs=2)
    site = tmp_path / "site"
    with pytest.raises(SystemExit):
        main(["publish", str(tmp_path / "runs"), "--out", str(site)])
    before = sorted(p.relative_to(site) for p in site.rglob("*"))

    def fail(*_):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("framebench.history.site.frameworks_page", fail)
    with pytest.raises(SystemExit) as exit_status:
        main(["publish", str(tmp_path / "runs"), "--out", str(site)])
    assert exit_status.value.code == 2
    assert sorted(p.relative_to(site) for p in site.rglob("*")) == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_parquet_export_to_an_unwritable_place_is_one_line(tmp_path):
    history = load_history([str(p) for p in step_history(tmp_path / "runs", runs=2)])
    with pytest.raises(Exception, match="cannot write --parquet"):
        export_parquet(history.rows, str(tmp_path / "missing" / "x.parquet"))


class Chromium:
    """Headless Chromium driven over the DevTools protocol on a pipe (--remote-debugging-pipe: messages are
    JSON, each ended by a NUL, commands in on fd 3, answers and events out on fd 4): no driver, no port."""

    def __init__(self, binary: str, profile: str) -> None:
        commands_read, self.commands = os.pipe()
        self.answers, answers_write = os.pipe()

        def as_fds_3_and_4():
            os.dup2(commands_read, 3)
            os.dup2(answers_write, 4)

        flags = ["--headless", "--no-sandbox", "--disable-gpu", "--remote-debugging-pipe", f"--user-data-dir={profile}", "about:blank"]
        self.process = subprocess.Popen(
            [binary, *flags], preexec_fn=as_fds_3_and_4, pass_fds=(3, 4), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        os.close(commands_read)
        os.close(answers_write)
        self.buffer, self.events, self.next_id, self.session = b"", [], 0, None
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        for domain in ("Page", "Runtime", "Log"):
            self.call(f"{domain}.enable")

    def message(self, timeout: float = 30) -> dict:
        while b"\0" not in self.buffer:
            ready, _, _ = select.select([self.answers], [], [], timeout)
            chunk = os.read(self.answers, 1 << 20) if ready else b""
            assert chunk, "Chromium did not answer"
            self.buffer += chunk
        text, self.buffer = self.buffer.split(b"\0", 1)
        return json.loads(text)

    def call(self, method: str, **params) -> dict:
        self.next_id += 1
        request = {"id": self.next_id, "method": method, "params": params} | ({"sessionId": self.session} if self.session else {})
        os.write(self.commands, json.dumps(request).encode() + b"\0")
        while (answer := self.message()).get("id") != self.next_id:
            self.events.append(answer)
        assert "error" not in answer, answer
        return answer["result"]

    def wait_for(self, event: str) -> None:
        while not any(e.get("method") == event for e in self.events):
            self.events.append(self.message())

    def open(self, url: str) -> None:
        self.events.clear()
        self.call("Page.navigate", url=url)
        self.wait_for("Page.loadEventFired")

    def evaluate(self, expression: str):
        return self.call("Runtime.evaluate", expression=expression, returnByValue=True)["result"].get("value")

    def errors(self) -> list:
        """JavaScript exceptions and console or log errors since the last page was opened."""
        return [
            e
            for e in self.events
            if e.get("method") == "Runtime.exceptionThrown"
            or (e.get("method") == "Runtime.consoleAPICalled" and e["params"]["type"] == "error")
            or (e.get("method") == "Log.entryAdded" and e["params"]["entry"]["level"] == "error")
        ]

    def close(self) -> None:
        self.process.kill()
        self.process.wait()
        os.close(self.commands)
        os.close(self.answers)


CHARTS_WITH_DATA = """Array.from(document.querySelectorAll('.chart, .small')).map(d =>
    d.querySelector('svg.main-svg') !== null && d.querySelectorAll('.scatterlayer .point, .barlayer .point, path.js-line').length > 0)"""


@pytest.fixture
def chromium(tmp_path):
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    if binary is None:
        if os.environ.get("CI") == "true":
            pytest.fail("chromium is missing: .ci/run installs Debian's chromium before the tests")
        pytest.skip("chromium is not installed (apt-get install chromium)")
    browser = Chromium(binary, tempfile.mkdtemp(dir=tmp_path))
    yield browser
    browser.close()


@pytest.mark.slow
def test_the_site_renders_in_chromium_and_its_change_links_reach_the_runs(tmp_path, chromium):
    step_history(tmp_path / "runs")
    hostile_directory(tmp_path / "runs")
    site = tmp_path / "site"
    with pytest.raises(SystemExit):
        main(["publish", str(tmp_path / "runs"), "--out", str(site)])
    pages = sorted(site.rglob("*.html"))
    assert len(pages) == 6
    for path in pages:
        chromium.open(path.as_uri())
        assert chromium.errors() == [], path.name
        rendered = chromium.evaluate(CHARTS_WITH_DATA)
        assert all(rendered) and (rendered or path.name == "changes.html"), f"{path.name}: charts without data: {rendered}"
    chromium.open((site / "changes.html").as_uri())
    link = chromium.evaluate("(a => [a.href, a.textContent])(document.querySelector('table tr:nth-child(2) td:nth-child(6) a'))")
    assert link[1] == "r04"
    chromium.open(link[0])
    assert chromium.evaluate("document.getElementById(location.hash.slice(1)).cells[0].textContent") == "r04"
    assert chromium.evaluate("document.getElementById(location.hash.slice(1)).cells[2].textContent") == "c04abcdef0"


def test_a_label_names_every_dimension_off_its_default_so_series_of_two_precisions_read_apart():
    run = {
        "backend": "torch",
        "variant": "default",
        "device": "cpu",
        "preset": "mlp",
        "dataset": "mnist",
        "sweep_field": "",
        "sweep_value": "",
    }
    fp32, bf16 = pd.Series({**run, "env": "current", "precision": "fp32"}), pd.Series({**run, "env": "new", "precision": "bf16"})
    assert label(fp32) == "torch/default cpu mlp mnist"
    assert label(bf16) == "torch/default cpu mlp mnist env=new precision=bf16"
