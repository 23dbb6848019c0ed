"""Command-line flags made from dataclasses: every flag's help is the comment on its field (RunRequest,
ModelConfig, TrainConfig), so it is written once, for `framebench run` and for every study that runs."""

from __future__ import annotations

import argparse
import dataclasses

from framebench.core.config import PRESETS, field_comments
from framebench.core.data import DATASETS
from framebench.driver.executors import EXECUTORS
from framebench.driver.request import DEVICE_CHOICES
from framebench.errors import FrameBenchError

RUN_CHOICES = {"preset": list(PRESETS), "dataset": DATASETS, "executor": EXECUTORS, "device": DEVICE_CHOICES}
TYPES = {"int": int, "float": float, "int | None": int, "float | None": float}


class Parser(argparse.ArgumentParser):
    """argparse, with its errors as one line naming the fix (exit status 2) instead of usage text."""

    def error(self, message: str):
        raise FrameBenchError(f"{message}; see `{self.prog} --help`")


def int_tuple(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def add_fields(group, cls, choices: dict, note: str = "", skip: tuple[str, ...] = ()) -> None:
    """One flag per dataclass field (but those in `skip`), default None (= the dataclass's or preset's
    value), help from its comment."""
    comments = field_comments(cls)
    for field in (f for f in dataclasses.fields(cls) if f.name not in skip):
        flag = "--" + field.name.replace("_", "-")
        text = comments[field.name] + (f" (one of: {', '.join(choices[field.name])})" if field.name in choices else "") + note
        if field.type == "bool":
            group.add_argument(flag, dest=field.name, action=argparse.BooleanOptionalAction, default=None, help=text)
        elif field.type == "tuple[str, ...]":  # a repeatable flag
            group.add_argument(flag, dest=field.name, action="append", default=None, metavar="NAME=REQ[;REQ...]", help=text)
        elif field.name == "hidden":
            group.add_argument(flag, dest=field.name, type=int_tuple, default=None, metavar="W1,W2,...", help=text)
        else:
            group.add_argument(flag, dest=field.name, type=TYPES.get(field.type, str), default=None, help=text)


class SameSeedIsGone(argparse.Action):
    """--same-seed, from before seeds were a dimension of the matrix: one line saying what replaced it."""

    def __call__(self, parser, namespace, values, option_string=None):
        raise FrameBenchError("--same-seed is gone: every repeat reruns the same seeds now; list the seeds to run with --seeds, e.g. 0-9")


def add_seed_aliases(parser: argparse.ArgumentParser) -> None:
    """--seed N, the same as --seeds N; --same-seed, refused with what replaced it (a parser of RunRequest's flags)."""
    parser.add_argument("--seed", dest="seeds", default=None, help="the same as --seeds")
    parser.add_argument("--same-seed", action=SameSeedIsGone, nargs=0, help=argparse.SUPPRESS)


def given(args: argparse.Namespace, cls) -> dict:
    """The fields of `cls` the command line set (None means: not given)."""
    return {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if getattr(args, f.name, None) is not None}
