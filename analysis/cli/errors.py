"""Option errors as one line: `pagesim run: error: No such option: --foo (see pagesim run --help)`.

Click (through typer) reports a usage error as a 5-6 line box with the usage text; the project's
rule is one line on stderr naming the option and exit code 2, as for every other bad input.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import typer
from typer.core import TyperGroup

try:  # typer >= 0.20 vendors click as typer._click
    from typer._click.exceptions import ClickException, UsageError
except ImportError:  # pragma: no cover - older typer uses click itself
    from click.exceptions import ClickException, UsageError  # type: ignore[assignment]


def fail(cmd: str, msg: str) -> typer.Exit:
    """Print `pagesim CMD: error: MSG` on stderr; the Exit(2) to raise."""
    typer.echo(f"pagesim {cmd}: error: {msg}", err=True)
    return typer.Exit(2)


def one_line(exc: ClickException) -> str:
    """The one-line form of a click error, naming the command and where to read the valid options."""
    ctx = getattr(exc, "ctx", None)
    where = ctx.command_path if ctx is not None else "pagesim"
    msg = " ".join(exc.format_message().split())
    hint = f" (see {where} --help)" if isinstance(exc, UsageError) else ""
    return f"{where}: error: {msg}{hint}"


class OneLineErrors(TyperGroup):
    """The root command group: usage errors print one line and exit 2 instead of click's usage box."""

    def main(self, args: Sequence[str] | None = None, prog_name: str | None = None,
             complete_var: str | None = None, standalone_mode: bool = True, windows_expand_args: bool = True,
             **extra: Any) -> Any:
        name = prog_name or "pagesim"
        if not standalone_mode:
            return super().main(args, name, complete_var, False, windows_expand_args, **extra)
        try:
            rv = super().main(args, name, complete_var, False, windows_expand_args, **extra)
        except typer.Abort:
            print("Aborted!", file=sys.stderr)
            sys.exit(1)
        except ClickException as exc:
            print(one_line(exc), file=sys.stderr)
            sys.exit(exc.exit_code)
        sys.exit(rv if isinstance(rv, int) else 0)
