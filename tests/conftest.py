"""Shared test fixtures: the path to ../shared/traces (tests that need it skip with a stated reason),
and the hypothesis profile every property test runs under."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import settings
from paths import TRACES

# No example database: a failing example hypothesis once found must not be replayed from a local
# .hypothesis/ folder on every later run (it made one rare find fail the suite for good in that
# checkout); a failure prints its reproduction blob instead. "ci" also derandomizes, so CI runs
# the same examples every time. Select with HYPOTHESIS_PROFILE=ci (default: "pagesim").
settings.register_profile("pagesim", database=None, print_blob=True)
settings.register_profile("ci", database=None, print_blob=True, derandomize=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "pagesim"))


@pytest.fixture(scope="session")
def traces_dir() -> Path:
    """../shared/traces beside the checkout; skip when absent (a user's machine has no ../shared)."""
    if not TRACES.is_dir():
        pytest.skip(f"real traces not found at {TRACES} (../shared is only beside CI/developer checkouts)")
    return TRACES
