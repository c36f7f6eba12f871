"""Fixtures shared by all tests: where the real data lives."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path:
    """Return the real-data folder: ``$MIDOG_SHARED_DATA`` or ``../shared/data`` beside the repository."""
    return Path(os.environ.get("MIDOG_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    path = shared_data_dir()
    if not path.is_dir():
        pytest.skip(f"real data folder {path} not found; set MIDOG_SHARED_DATA to its path")
    return path
