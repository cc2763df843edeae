"""The `pagesim` command line: a thin typer layer over the Python API.

Each command group lives in its own module with a `register(app)` function, so the file list shows
which command does what: cmd_replay (allocator op-log replay), cmd_simulate (run, compare, sweep,
report), cmd_gpu (bench, calibrate).
"""

from __future__ import annotations

import importlib

import typer

app = typer.Typer(
    name="pagesim",
    help="Simulate LLM-serving KV-cache memory: PagedAttention vs contiguous caches.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

COMMAND_MODULES = ("analysis.cmd_simulate", "analysis.cmd_replay", "analysis.cmd_gpu")

for _name in COMMAND_MODULES:
    importlib.import_module(_name).register(app)


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
