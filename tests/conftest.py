"""Shared test fixtures: the path to ../shared/traces (tests that need it skip with a stated reason)."""

from __future__ import annotations

from pathlib import Path

import pytest
from paths import TRACES


@pytest.fixture(scope="session")
def traces_dir() -> Path:
    """../shared/traces beside the checkout; skip when absent (a user's machine has no ../shared)."""
    if not TRACES.is_dir():
        pytest.skip(f"real traces not found at {TRACES} (../shared is only beside CI/developer checkouts)")
    return TRACES
