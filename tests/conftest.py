"""Shared fixtures. Real MNIST comes from $FRAMEBENCH_DATA_DIR (CI: ../shared/datasets)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bench.data import load_dataset

REPO = Path(__file__).resolve().parent.parent
DATA_DIR = os.environ.get("FRAMEBENCH_DATA_DIR") or str(REPO.parent / "shared" / "datasets")


@pytest.fixture(scope="session")
def mnist():
    return load_dataset("mnist", data_dir=DATA_DIR, allow_download=False)


@pytest.fixture(autouse=True)
def no_downloads(monkeypatch):
    """Tests never reach for the network; a missing file must fail loudly instead."""
    monkeypatch.setenv("FRAMEBENCH_NO_DOWNLOAD", "1")
