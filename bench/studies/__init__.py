"""The studies: each runs framebench on a fixed design and writes the report committed under results/
(`framebench study NAME`, which `make bench-NAME` calls). The top layer: a study may use the driver,
the reports and the history; nothing below imports a study.

A study module has HELP (one line), `add_arguments(parser)` and `run(args) -> exit status`; its
docstring says what it measures and how.
"""

from __future__ import annotations

import importlib
from types import ModuleType

NAMES = ("perf", "scaling", "precision", "versions", "gate", "history", "convergence")


def load(name: str) -> ModuleType:
    return importlib.import_module(f"framebench.studies.{name}")
