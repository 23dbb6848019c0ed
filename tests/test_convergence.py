"""Convergence as a verdict: seeds as a dimension of the contract, MLPerf's RCP rule (`rcp`, `converge`)
and AlgoPerf's performance profiles (`profile`). The arithmetic is tested on synthetic tables written
here; one slow test trains for real on digits: the mislearning backend passes `check` and fails `converge`."""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pandas as pd
import pytest

from framebench.core.config import Sweep, resolve
from framebench.core.seeds import compact_seeds, seed_count, seed_values
from framebench.driver.plan import Matrix, done_keys, plan
from framebench.history.series import load_history
from framebench.reports.comparison import Group, Options, Tolerances, compare_groups
from framebench.reports.convergence import MIN_SEEDS, bounds, decide
from framebench.reports.profiles import R_MAX, performance_ratios, rho, scores, times_to_target
from framebench.reports.thresholds import check, derive
from framebench.reports.verdicts import Kind, Verdict
from framebench.store import job as contract
from framebench.store import schema
from framebench.store.files import append_rows
from framebench.store.job import Job
from tests import tables
from tests.conftest import cli, framebench, printed_directory

TRAINING = {"model": {"hidden": (32,)}, "train": {"epochs": 2, "batch_size": 100, "eval_every": 10, "lr": 0.001}}
MLPERF_128 = [16, 14, 16, 17, 16, 16, 15, 16, 15, 16]  # training_rules.adoc, "Appendix: RCP Examples": batch 128
MLPERF_256 = [20, 21, 21, 20, 22, 22, 21, 21, 20, 20]  # and batch 256


def run_row(seed, epochs: float | None, *, acc=0.95, seconds=None, **fields) -> dict:
    """A runs.csv row of the ci preset at `seed`: `epochs` to the target (None: did not reach it); 10 steps per epoch."""
    reached = {"epochs_to_target": epochs, "steps_to_target": epochs * 10, "time_to_target_s": epochs * 2.0} if epochs is not None else {}
    reached = {**dict.fromkeys(["epochs_to_target", "steps_to_target", "time_to_target_s"], math.nan), **reached}
    if seconds is not None:
        reached["time_to_target_s"] = seconds
    return tables.run_row(seed=str(seed), preset="ci", final_test_acc=acc, **reached, **fields)


def results(path, rows: list[dict], seeds=None, dataset: str = "digits", target: float = 0.9, training: dict = TRAINING) -> str:
    """A results directory of `rows` (of `dataset`) run with the ci preset's `training`, its matrix numpy's at `seeds` (or the rows')."""
    seeds = seeds or sorted({r["seed"] for r in rows}, key=int)
    request = {"preset": "ci", "dataset": dataset, "target_acc": target}
    config = tables.run_config(("numpy",), repeats=1, seeds=seeds, model=training["model"], train=training["train"], **request)
    return str(tables.results_directory(path, [{**row, "dataset": dataset} for row in rows], config=config))


# --- seeds as a dimension ---------------------------------------------------------------------------


def test_seeds_are_ranges_and_lists_counted_before_they_are_expanded():
    assert seed_values("0-2,5,007,1") == ["0", "1", "2", "5", "7"]
    assert seed_count("0-999999999") == 1_000_000_000  # counted, never built
    assert compact_seeds(["5", "0", "1", "2", "9", "10"]) == "0-2,5,9-10"


def test_seed_is_one_dimension_of_the_contract_and_a_column_of_every_job_table():
    assert [d.name for d in contract.DIMENSIONS].count("seed") == 1
    seed = next(d for d in contract.DIMENSIONS if d.name == "seed")
    assert (seed.request_field, seed.default, seed.replicate) == ("seeds", "0", True)
    for table in ("runs", "epochs", "steps", "evals"):
        assert schema.columns(table).count("seed") == 1
    assert "seed" in contract.key_columns() and "seed" in contract.series_columns() and "seed" not in contract.summary_names()


def planned() -> list[Job]:
    model, train = resolve("ci", {}, {"epochs": 1})
    template = Job(run_id="r", dataset="digits", data_dir=None, preset="ci", config={}, threads=1, target_acc=0.9)
    matrix = Matrix({"backend": ["numpy", "torch"], "variant": ["default"], "device": ["cpu"], "seed": ["0", "1"]}, 2)
    return plan([matrix], template, Sweep(), model, train)


def test_a_seeded_plan_gives_every_backend_every_seed_and_repeats_rerun_them():
    jobs = planned()
    assert [(j.repeat, j.seed, j.backend) for j in jobs] == [(r, s, b) for r in (0, 1) for s in ("0", "1") for b in ("numpy", "torch")]
    assert len({j.key() for j in jobs}) == 8 and [j.seed_number for j in jobs[:4]] == [0, 0, 1, 1]
    assert "seed=1" in jobs[2].label and "seed" not in jobs[0].label


def test_resume_keeps_seeds_apart(tmp_path):
    first, _, second, _ = planned()[:4]
    append_rows(tmp_path, "runs", [run_row(0, 1.0), {**run_row(1, 1.0), "status": "failed"}])
    done = done_keys(tmp_path)
    assert done[first.key()] == ("ok", 1) and done[second.key()] == ("failed", 1)


def test_an_attempt_that_left_only_evaluations_still_takes_its_number(tmp_path):
    """Killed mid-epoch after an evaluation: its next attempt is 2, so no two attempts share evals.csv rows."""
    job = planned()[2]
    evaluation = {"epoch": 1, "step": 20, "train_s": 0.5, "test_loss": 1.0, "test_acc": 0.5, "eval_s": 0.1}
    append_rows(tmp_path, "evals", [{**job.row_keys(), **evaluation}])
    assert done_keys(tmp_path)[job.key()] == ("", 1)


def test_compare_pairs_accuracy_seed_by_seed_and_notes_a_seed_one_side_lacks():
    """The issue's example: NEW ran seed 0 only, BASE seeds 0 and 1 (a different accuracy at seed 1).
    Medians over both of BASE's seeds would call NEW's seed 0 a regression; seed by seed it is no change."""
    base = [run_row(0, 1.0, acc=0.95, repeat=r) for r in range(3)] + [run_row(1, 1.0, acc=0.97, repeat=r) for r in range(3)]
    new = [run_row(0, 1.0, acc=0.95, repeat=r) for r in range(3)]
    options = Options(Tolerances(0.005, 0.1), compare_accuracy=True, compare_time=False)
    side = lambda rows, label: Group(pd.DataFrame(rows, columns=schema.columns("runs")), pd.DataFrame(), {}, label)  # noqa: E731
    table = compare_groups(side(base, "BASE"), side(new, "NEW"), options)
    verdicts = dict(zip(table["seed"], table["verdict"], strict=True))
    assert verdicts == {"0": Verdict(Kind.NO_CHANGE, note="accuracy only"), "1": Verdict(Kind.NOT_COMPARED, note="seed 1 ran only in BASE")}
    missing = compare_groups(side(base, "BASE"), side([], "NEW"), options)
    assert {v.kind for v in missing["verdict"]} == {Kind.REGRESSION}  # a point NEW ran at no seed is missing, not a seed left out


def test_thresholds_count_every_seed_and_check_names_the_seed_that_missed(tmp_path):
    directory = results(tmp_path / "r", [run_row(0, 1.0, acc=0.95), run_row(1, 1.0, acc=0.93)])
    table = derive([directory], margin=0.01)
    assert table[["measured_min", "measured_runs"]].values.tolist() == [[0.93, 2]] and "seed" not in table
    strict = tmp_path / "t.csv"
    strict.write_text(table.assign(min_test_acc=0.94).to_csv(index=False))
    failures, _ = check(directory, strict, allow_missing=False)
    assert len(failures) == 1 and "seed 1, repeat 1): test accuracy 0.9300 < threshold 0.9400" in failures[0]


def test_history_keeps_every_seed_a_series_of_its_own(tmp_path):
    for name in ("a", "b"):
        results(tmp_path / name, [run_row(0, 1.0, acc=0.95), run_row(1, 1.0, acc=0.97)])
    runs = load_history([str(tmp_path)]).runs
    assert runs.groupby("seed")["series"].nunique().to_dict() == {"0": 1, "1": 1} and runs["series"].nunique() == 2
    assert sorted(runs["acc"]) == [0.95, 0.95, 0.97, 0.97]


# --- MLPerf's rule ----------------------------------------------------------------------------------


def test_the_rcp_bounds_reproduce_mlperfs_worked_example():
    """training_rules.adoc: batch 128, mean 15.75, stdev 0.43, max speed-up 3.53%, lowest mean 15.21;
    batch 256, mean 20.75, stdev 0.66, 4.12%, 19.93 (five submission runs)."""
    for epochs, mean, sd, speedup, lowest in ((MLPERF_128, 15.75, 0.43, 1.0353, 15.21), (MLPERF_256, 20.75, 0.66, 1.0412, 19.93)):
        limits = bounds(np.array(epochs, float), runs=5)
        assert limits.mean == mean and round(limits.sd, 2) == sd
        assert limits.max_speedup == pytest.approx(speedup, abs=1e-4) and round(limits.low, 2) == lowest
        assert limits.high - limits.mean == pytest.approx(limits.mean - limits.low, abs=2e-4)  # the mirror image


def test_the_worked_examples_submissions_pass_and_fail_as_the_rules_say():
    """S1 (batch 128, [15, 15, 15, 16, 16]: trimmed mean 15.33 > 15.21) passes, normalised; S2 (batch 256,
    [19, 19, 19, 20, 21]: 19.33 < 19.93) is faster than the reference allows."""
    s1, figures = decide(pd.Series([15.0, 15, 15, 16, 16]), np.array(MLPERF_128, float))
    assert s1.kind is Kind.CONVERGES and "normalised x1.0272" in s1.note and figures["epochs"] == pytest.approx(15.3333, abs=1e-4)
    s2, _ = decide(pd.Series([19.0, 19, 19, 20, 21]), np.array(MLPERF_256, float))
    assert s2.kind is Kind.TOO_FAST and s2.reason.startswith("19.33 epochs < 19.93")


@pytest.mark.parametrize(
    "epochs, kind, text",
    [
        ([17.5, 17.0, 18.0, 17.5, 17.2], Kind.SLOWER_TO_CONVERGE, "SLOWER TO CONVERGE: 17.4 epochs > 16.29"),
        ([16.0, 15.5, 16.0, 15.8, math.inf], Kind.CONVERGES, "1 of 5 seeds did not converge, dropped as the slowest"),
        ([16.0, 15.5, 16.0, math.inf, math.inf], Kind.DID_NOT_CONVERGE, "did not converge: in 2 of 5 seeds"),
        ([16.0, 15.5, 16.0, 15.8], Kind.INCONCLUSIVE, f"inconclusive: 4 seeds (the rule needs at least {MIN_SEEDS})"),
        ([16.0] * 6, Kind.INCONCLUSIVE, "inconclusive: 6 seeds (the reference holds 10; the rule needs 2 x 6)"),
    ],
)
def test_a_verdict_for_every_outcome_of_the_rule(epochs, kind, text):
    verdict, _ = decide(pd.Series(epochs, index=[str(i) for i in range(len(epochs))]), np.array(MLPERF_128, float))
    assert verdict.kind is kind and text in str(verdict)


def rcp_runs(first_seed: int, epochs: list[float], **row) -> list[dict]:
    return [run_row(first_seed + i, e, **row) for i, e in enumerate(epochs)]


@pytest.fixture
def reference(tmp_path) -> str:
    """An RCP file from 10 numpy seeds (MLPerf's batch-128 epochs, read as epochs to target)."""
    directory = results(tmp_path / "ref", rcp_runs(100, MLPERF_128))
    output = tmp_path / "rcps.csv"
    assert cli("rcp", directory, "--output", str(output)).returncode == 0
    return str(output)


def test_converge_passes_a_backend_like_the_reference_and_fails_a_slower_one(tmp_path, reference):
    rows = rcp_runs(0, [16, 15, 16, 16, 15.5]) + rcp_runs(0, [17.5, 17, 18, 17.5, 17.2], backend="torch")
    directory = results(tmp_path / "new", rows)
    result = cli("converge", directory, "--reference", reference, "--json", str(tmp_path / "v.json"), "--markdown", str(tmp_path / "v.md"))
    assert result.returncode == 1 and "1 key(s) do not converge as the reference" in result.stdout
    keys = {k["backend"]: k["decision"]["kind"] for k in json.loads((tmp_path / "v.json").read_text())["keys"]}
    assert keys == {"numpy": "CONVERGES", "torch": "SLOWER_TO_CONVERGE"}
    assert "| numpy | default |" in (tmp_path / "v.md").read_text()
    same = cli("converge", directory, "--base", directory)
    assert same.returncode == 2 and "the reference holds 5; the rule needs 2 x 5" in same.stdout  # BASE's 5 seeds are no RCP of 5


def test_the_shipped_rcp_file_reads_and_names_the_command_that_measured_it():
    from framebench.reports.converge import DEFAULT_FILE, load_rcps

    rcps = load_rcps(DEFAULT_FILE)
    assert set(rcps["dataset"]) == {"mnist", "fashion-mnist"} and set(rcps["preset"]) == {"ci"}
    assert rcps.groupby("dataset")["seed"].nunique().min() >= 2 * MIN_SEEDS and set(rcps["backend"]) == {"numpy"}
    text = DEFAULT_FILE.read_text()
    assert "# Runs measured by:" in text and "--eval-every" in text and "# Derived by: framebench rcp" in text


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: results(p, rcp_runs(0, [1.0] * 5), dataset="mnist"), "holds no RCP comparable with ci on mnist"),
        (lambda p: results(p, rcp_runs(0, [1.0] * 5), target=0.95), "target_acc 0.95 instead of 0.9"),
        (lambda p: results(p, rcp_runs(0, [1.0] * 5), training={**TRAINING, "train": {**TRAINING["train"], "lr": 0.01}}), "train.lr"),
        (lambda p: results(p, [run_row(0, 1.0, acc=float("nan"))] + rcp_runs(1, [1.0] * 4)), "its test accuracy is NaN"),
    ],
)
def test_what_converge_cannot_compare_is_one_line(tmp_path, reference, make, message):
    result = cli("converge", make(tmp_path / "new"), "--reference", reference)
    assert result.returncode == 2 and message in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_a_target_nothing_reaches_is_said_once_and_every_key_did_not_converge(tmp_path, reference):
    rows = rcp_runs(0, [None] * 5, acc=0.6) + rcp_runs(0, [None] * 5, acc=0.61, backend="torch")
    result = cli("converge", results(tmp_path / "new", rows), "--reference", reference)
    said = "no run reached the target 0.9 at any seed (the best final test accuracy was 0.6100)"
    assert result.returncode == 1 and result.stdout.count(said) == 1
    assert result.stdout.count("did not converge: in 5 of 5 seeds") == 2


@pytest.mark.parametrize(
    "epochs, message",
    [
        ([1.0] * 9, "9 seeds; an RCP needs 10 or more"),
        ([1.0] * 9 + [None], "did not reach the target 0.9 at seed(s) 9"),
    ],
)
def test_an_rcp_needs_enough_seeds_all_converged(tmp_path, epochs, message):
    result = cli("rcp", results(tmp_path / "ref", rcp_runs(0, epochs)))
    assert result.returncode == 2 and message in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr


# --- AlgoPerf's performance profiles ---------------------------------------------------------------


def test_the_profile_score_is_algoperfs_area_under_rho():
    """Three backends, three workloads (times to target; inf: a miss). Ratios to the best: A 1, 2, inf;
    B 2, 1, 100/30 = 3.33; C 5 -> inf (over 4), 3, 1. Score = mean over workloads of (4 - r) / 3:
    A (3 + 2 + 0) / 9, B (2 + 3 + 2/3) / 9, C (0 + 1 + 3) / 9 - and, independently, the trapezoidal
    area of rho on a fine grid of tau, as AlgoPerf's code integrates it."""
    times = pd.DataFrame({"w1": [10, 20, 50], "w2": [20, 10, 30], "w3": [math.inf, 100, 30]}, index=["A", "B", "C"], dtype=float)
    ratios = performance_ratios(times)
    assert ratios.loc["C", "w1"] == math.inf and ratios.loc["B", "w3"] == pytest.approx(10 / 3)
    expected = {"A": 5 / 9, "B": (5 + 2 / 3) / 9, "C": 4 / 9}
    assert scores(ratios).to_dict() == pytest.approx(expected)
    taus = np.linspace(1, R_MAX, 30001)
    area = np.trapezoid(rho(ratios, taus).to_numpy(), taus, axis=1) / (R_MAX - 1)
    assert dict(zip(ratios.index, area, strict=True)) == pytest.approx(expected, abs=1e-3)


def test_a_submissions_time_is_its_median_over_seeds_a_miss_counting_as_forever():
    runs = pd.DataFrame(
        rcp_runs(0, [1.0, 2.0, 3.0]) + rcp_runs(0, [1.0, None, None], backend="torch") + [run_row(3, 0.5, status="diverged")]
    )
    times = times_to_target(runs, "epochs", precision_workloads=False)
    assert times.loc["numpy/default cpu", "ci digits"] == 2.5  # of 1, 2, 3 and the diverged run's ∞ (its 0.5 does not count)
    assert times.loc["torch/default cpu", "ci digits"] == math.inf


def test_profile_prints_scores_and_writes_its_report(tmp_path):
    first = results(tmp_path / "a", rcp_runs(0, [1.0] * 3) + rcp_runs(0, [2.0] * 3, backend="torch"))
    second = results(tmp_path / "b", rcp_runs(0, [3.0] * 3) + rcp_runs(0, [1.0] * 3, backend="torch"), dataset="mnist")
    result = cli("profile", first, second, "--by", "epochs", "--out", str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr
    report = (tmp_path / "out" / "report.md").read_text()
    assert "| numpy/default cpu | 0.6667 |" in report and "| torch/default cpu | 0.8333 |" in report  # (3 + 1) / 6, (2 + 3) / 6
    assert (tmp_path / "out" / "profile.png").stat().st_size > 0
    assert cli("profile", first, "--by", "hours").returncode == 2


# --- for real -------------------------------------------------------------------------------------


@pytest.mark.slow
def test_converge_catches_a_backend_that_learns_slower_while_check_passes_it(tmp_path):
    """numpy:mislearning steps at 0.8 x the learning rate; on digits it still meets numpy's final-accuracy
    threshold, and converge calls it SLOWER TO CONVERGE while numpy itself converges as the reference."""
    env = {**os.environ, "FRAMEBENCH_PLUGINS": "numpy:mislearning=framebench.studies.mislearning:MislearningNumpy"}
    flags = ["--preset", "ci", "--dataset", "digits", "--batch-size", "32", "--epochs", "10", "--eval-every", "5", "--target-acc", "0.9"]
    flags += ["--threads", "1", "--no-floors", "--results-dir", str(tmp_path)]
    reference = framebench("run", "--backends", "numpy", "--seeds", "100-109", *flags, "--run-id", "ref", env=env)
    assert reference.returncode == 0, reference.stderr[-2000:]
    variants = ["--variants", "default,mislearning"]
    new = framebench("run", "--backends", "numpy", *variants, "--seeds", "0-4", *flags, "--run-id", "new", env=env)
    assert new.returncode == 0, new.stderr[-2000:]
    for command in (
        ["rcp", printed_directory(reference), "--output", str(tmp_path / "rcps.csv")],
        ["thresholds", printed_directory(reference), "--output", str(tmp_path / "thresholds.csv")],
    ):
        assert framebench(*command, env=env).returncode == 0
    checked = framebench("check", printed_directory(new), "--thresholds", str(tmp_path / "thresholds.csv"), env=env)
    assert checked.returncode == 0 and "all runs meet their thresholds" in checked.stdout, checked.stdout
    verdicts = ["--reference", str(tmp_path / "rcps.csv"), "--json", str(tmp_path / "v.json")]
    converged = framebench("converge", printed_directory(new), *verdicts, env=env)
    keys = {k["variant"]: k["decision"]["kind"] for k in json.loads((tmp_path / "v.json").read_text())["keys"]}
    assert converged.returncode == 1 and keys == {"default": "CONVERGES", "mislearning": "SLOWER_TO_CONVERGE"}, converged.stdout


def test_the_sites_frameworks_page_draws_the_profiles_over_the_workloads(tmp_path):
    results(tmp_path / "runs" / "a", rcp_runs(0, [1.0] * 3) + rcp_runs(0, [2.0] * 3, backend="torch"))
    results(tmp_path / "runs" / "b", rcp_runs(0, [3.0] * 3) + rcp_runs(0, [1.0] * 3, backend="torch"), dataset="mnist")
    result = cli("publish", str(tmp_path / "runs"), "--out", str(tmp_path / "site"))
    assert result.returncode == 0, result.stderr
    page = (tmp_path / "site" / "frameworks.html").read_text()
    assert "performance profiles over 2 workload(s), machine" in page and "torch\\u002fdefault cpu 0.833" in page  # (2 + 3) / 6
