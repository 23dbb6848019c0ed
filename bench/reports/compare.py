"""`framebench compare BASE NEW` (and `compare DIR --base-env A --new-env B`): accuracy and
steady-state time of NEW against BASE, as a CI gate. The rule is the decision's
(framebench.reports.comparison); this is the command around it: it loads the results directories,
refuses unreadable rows, notes what differs between the two sides (training configuration, machine,
framework versions), prints the decided table with its conclusion, writes it as Markdown and JSON
where asked and returns the exit status: 1 on a regression, else 2 if anything was inconclusive or
not verified (or nothing was verified at all), else 0.
"""

from __future__ import annotations

import pandas as pd

from framebench.errors import FrameBenchError
from framebench.reports.comparison import (
    TABLE_COLUMNS,
    TRAINING,
    Group,
    Options,
    Tolerances,
    compare_groups,
    environment_groups,
    fingerprints,
)
from framebench.reports.markdown import escape_markdown
from framebench.reports.verdicts import FAIL, PASS, UNDECIDED, Kind, Report, Verdict, exit_status, publish_decided
from framebench.store.job import point_names, series_columns
from framebench.store.reader import load_results, refuse_unreadable


def differences(base: dict, new: dict) -> tuple[list[str], list[str], list[str]]:
    """(configuration differences, machine differences, notes) between the two runs."""
    config = [
        f"{section}: {base['config'].get(section)} -> {new['config'].get(section)}"
        for section in TRAINING
        if base["config"].get(section) != new["config"].get(section)
    ]
    machine = []
    base_prints, new_prints = set(fingerprints(base["machine"]).values()), set(fingerprints(new["machine"]).values())
    if base_prints != new_prints:
        machine.append(f"nodes: {sorted(base_prints - new_prints)} in BASE only, {sorted(new_prints - base_prints)} in NEW only")
    return config, machine, version_notes(base["runs"], new["runs"])


def version_notes(base: pd.DataFrame, new: pd.DataFrame) -> list[str]:
    """One line per backend whose framework version differs between the two sides, at the same point of
    the matrix (rows that never reached the framework, with no version, left out)."""
    point = [c for c in point_names() if c != "variant"]
    sides = [rows.loc[rows["framework_version"] != "", [*point, "framework_version"]].drop_duplicates() for rows in (base, new)]
    versions = sides[0].merge(sides[1], on=point, suffixes=("_base", "_new"))
    changed = versions[versions["framework_version_base"] != versions["framework_version_new"]]
    return list(dict.fromkeys(f"{r.backend}: {r.framework_version_base} -> {r.framework_version_new}" for r in changed.itertuples()))


def conclusion(verdicts: list[Verdict], fully_compared: bool) -> tuple[int, str]:
    """The exit status of the verdicts (framebench.reports.verdicts.exit_status), refusing a comparison
    that verified nothing or compared only part of what it was asked to; with the line saying so."""
    kinds = [v.kind for v in verdicts]
    status = exit_status(kinds)
    if status == FAIL:
        return FAIL, f"{kinds.count(Kind.REGRESSION)} regression(s)"
    unsettled = sum(kind.exit_status == UNDECIDED for kind in kinds)
    if not unsettled and not any(kind.verified for kind in kinds):
        return UNDECIDED, "nothing was verified: no key ran ok in BASE and in NEW (a BASE whose runs all failed is no baseline): refused"
    if unsettled or not fully_compared:
        missing = "" if fully_compared else "; accuracy or timings not compared"
        return (
            UNDECIDED,
            f"no regression found, but not everything was verified ({unsettled} key(s) inconclusive or not verified{missing}): refused",
        )
    return PASS, "no regression"


def run_compare_envs(
    directory: str,
    base_env: str,
    new_env: str,
    tolerances: Tolerances,
    *,
    accuracy_only: bool,
    markdown: str | None,
    json_file=None,
    sides: dict[str, str] | None = None,
    notes: list[str] | tuple[str, ...] = (),
) -> int:
    """`compare DIR --base-env A --new-env B`: the gate between two environments of one run (same machine,
    same configuration, interleaved; paired where they ran in lockstep), each group's rows keyed alike
    by giving both environments one name. A change of the backend's code between them is what is
    measured (`framebench gate` runs two revisions so). `sides` describes BASE and NEW (default: the
    environments' names), `notes` come first among the printed lines."""
    tolerances.validate()
    if base_env == new_env:
        raise FrameBenchError(f"--base-env and --new-env both name {base_env}: name two environments of {directory}")
    tables = load_results(directory)
    refuse_unreadable(tables["refused"])
    groups = environment_groups(tables, base_env, new_env, directory)
    options = Options(tolerances, compare_accuracy=True, compare_time=not accuracy_only, paired=True, judge_code_changes=True)
    table = compare_groups(*groups, options)
    versions = [f"note: {line}" for line in version_notes(groups[0].runs, groups[1].runs)]
    sides = sides or {"base": f"environment {base_env} of {directory}", "new": f"environment {new_env}"}
    return finish_comparison(table, [*notes, *versions], sides, options, accuracy_only, markdown, json_file)


def run_compare(
    base_dir: str,
    new_dir: str,
    tolerances: Tolerances,
    *,
    allow_machine_diff: bool,
    allow_config_diff: bool,
    accuracy_only: bool,
    markdown: str | None,
    json_file: str | None = None,
) -> int:
    """Print the comparison of two results directories; the exit status of `exit_status`."""
    tolerances.validate()
    base, new = load_results(base_dir), load_results(new_dir)
    refuse_unreadable(base["refused"] + new["refused"])
    if base["runs"].empty:
        raise FrameBenchError(f"{base_dir} holds no runs; there is nothing to compare against")
    config_diff, machine_diff, notes = differences(base, new)
    options = Options(
        tolerances,
        compare_accuracy=not config_diff or allow_config_diff,
        compare_time=not accuracy_only,
        any_machine=allow_machine_diff,
    )
    table = compare_groups(
        Group(base["runs"], base["epochs"], base["machine"], "BASE"), Group(new["runs"], new["epochs"], new["machine"], "NEW"), options
    )
    lines = [f"configuration differs: {d}" for d in config_diff] + [f"environment differs: {d}" for d in machine_diff]
    lines += [f"note: {line}" for line in notes]
    if config_diff and not allow_config_diff:
        lines.append("accuracy is not compared across training configurations; pass --allow-config-diff to compare it anyway")
    if machine_diff and not allow_machine_diff and not accuracy_only:
        lines.append(
            "timings are compared only between nodes of the same machine fingerprint; pass --allow-machine-diff to compare "
            "them anyway, or --accuracy-only"
        )
    if options.compare_time and (unknown := [label for label, tables in (("BASE", base), ("NEW", new)) if not tables["machine"]]):
        lines.append(
            f"{' and '.join(unknown)} has no machine record (machine.json), so its machine is unknown and no timing can be matched: "
            "pass --accuracy-only or --allow-machine-diff"
        )
    sides = {"base": base_dir, "new": new_dir}
    return finish_comparison(table, lines, sides, options, accuracy_only, markdown, json_file)


def finish_comparison(
    table: pd.DataFrame, lines: list[str], sides: dict[str, str], options: Options, accuracy_only: bool, markdown: str | None, json_file
) -> int:
    """Print the decided table (and write it as Markdown and JSON where asked); the exit status of `exit_status`."""
    tolerances = options.tolerances
    status, concluded = conclusion(list(table["verdict"]), options.compare_accuracy and (options.compare_time or accuracy_only))
    shown = table[series_columns() + TABLE_COLUMNS].assign(verdict=table["verdict"].map(str))
    rule = (
        f"accuracy tolerance {tolerances.acc_tol:g}; time tolerance {tolerances.time_tol:.0%}: a regression's 95% interval lies above 1 "
        f"and its ratio beyond {1 + tolerances.time_tol:g}; no change: the interval inside the tolerance band"
    )
    intro = f"BASE {escape_markdown(sides['base'])}, NEW {escape_markdown(sides['new'])}; {rule}"
    report = Report("framebench compare", intro, lines, concluded, status, {**sides, "rule": rule}, markdown, json_file)
    publish_decided(table, shown, report)
    return status
