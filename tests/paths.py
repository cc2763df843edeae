"""Where the tests find the repository, their data files and ../shared (one definition for every test)."""

from pathlib import Path

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
DATA = TESTS / "data"
DOCS = REPO / "docs"
SHARED = REPO.parent / "shared"
TRACES = SHARED / "traces"
