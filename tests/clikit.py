"""CLI test kit: run `pagesim` in-process (typer's CliRunner) or through the console script's code path."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from analysis.cli import app

RUNNER = CliRunner()


def cli(*args: str | Path) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of `pagesim ARGS` run in-process; an unexpected exception is raised."""
    r = RUNNER.invoke(app, [str(a) for a in args])
    if r.exception is not None and not isinstance(r.exception, SystemExit):
        raise r.exception
    return r.exit_code, r.stdout, r.stderr


def entry(*args: str) -> subprocess.CompletedProcess[str]:
    """The installed console script's code path: `python -m analysis.cli` runs analysis.cli:main."""
    return subprocess.run([sys.executable, "-m", "analysis.cli", *args], capture_output=True, text=True,
                          timeout=300)
