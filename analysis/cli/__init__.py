"""The `pagesim` command line: a thin typer layer over the Python API.

Each command group lives in its own module with a `register(app)` function, so the file list shows
which command does what: cmd_simulate (run, compare, sweep, report), cmd_replay (allocator op-log
replay), cmd_bench (GPU kernel benchmark), cmd_calibrate (fit the latency model from timings).
"""

from __future__ import annotations

import importlib

import typer

from analysis.cli.errors import OneLineErrors

app = typer.Typer(
    name="pagesim",
    help="Simulate LLM-serving KV-cache memory: PagedAttention vs contiguous caches.",
    add_completion=False,
    pretty_exceptions_enable=False,
    cls=OneLineErrors,  # option errors: one line and exit 2, not a usage box
)

COMMAND_MODULES = (
    "analysis.cli.simulate",
    "analysis.cli.capacity",
    "analysis.cli.replay",
    "analysis.cli.bench",
    "analysis.cli.calibrate",
    "analysis.cli.validate",
    "analysis.cli.engines",
)

@app.callback(invoke_without_command=True)
def _root(
    ctx: typer.Context,
    version: bool = typer.Option(False, "--version", help="Print the version and exit.", is_eager=True),
) -> None:
    """pagesim: where KV-cache memory goes under paged and contiguous caches, and what it costs."""
    if version:
        from importlib.metadata import version as _v

        typer.echo(f"pagesim {_v('pagesim')}")
        raise typer.Exit()
    if ctx.invoked_subcommand is None:  # `pagesim` alone: the command list
        typer.echo(ctx.get_help())
        raise typer.Exit()


for _name in COMMAND_MODULES:
    importlib.import_module(_name).register(app)


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
