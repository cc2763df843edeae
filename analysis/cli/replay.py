"""`pagesim replay`: replay a KV-cache op log (JSON lines) and print one JSON result line per op.

A thin layer over sim.memory.replay: reads the file (or stdin for '-') lazily, streams results to stdout,
and turns malformed input into one line on stderr naming the file and line, with exit code 2.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

import typer

from sim.checks import MAX_NUM_BLOCKS
from sim.memory.replay import ReplayError, replay
from sim.memory.semantics import SEMANTICS


def _lines(f: TextIO, name: str) -> Iterator[str]:
    try:
        yield from f
    except UnicodeDecodeError as e:
        raise ReplayError(0, f"{name}: not UTF-8 text ({e.reason} at byte {e.start})") from None


def _check_watermark(value: float | None) -> float | None:
    if value is not None and not 0.0 <= value < 1.0:
        raise typer.BadParameter(f"{value} out of range (valid: fraction of blocks in [0, 1))")
    return value


def _check_semantics(value: str | None) -> str | None:
    if value is not None and value not in SEMANTICS:
        raise typer.BadParameter(f"{value!r} is not valid (valid: {', '.join(SEMANTICS)})")
    return value


def register(app: typer.Typer) -> None:
    """Register the `replay` command on the app."""

    @app.command("replay")
    def replay_cmd(
        ops: str = typer.Argument(..., help="Op log (JSON lines); '-' reads stdin."),
        block_size: int | None = typer.Option(None, "--block-size", min=1, help="Tokens per block."),
        num_blocks: int | None = typer.Option(None, "--num-blocks", min=1, max=MAX_NUM_BLOCKS,
                                              help=f"Blocks in the pool (at most {MAX_NUM_BLOCKS:,})."),
        prefix_caching: bool | None = typer.Option(
            None, "--prefix-caching/--no-prefix-caching", help="Reuse cached full blocks by content hash."),
        watermark: float | None = typer.Option(
            None, "--watermark", callback=_check_watermark,
            help="Fraction of blocks kept free at admission (default 0.01)."),
        semantics: str | None = typer.Option(
            None, "--semantics", callback=_check_semantics,
            help="Block-manager behaviour: pagesim (default), vllm-v0 (vLLM 0.7.3's block manager) or "
                 "vllm-v1 (vLLM v1's BlockPool/KVCacheManager); see docs/memory.md."),
    ) -> None:
        """Replay allocator ops (allocate, append, fork, free, rollback, free_before) against a paged
        KV cache; settings from the options and/or a first {"op": "config", ...} line."""
        name = "<stdin>" if ops == "-" else ops
        if ops != "-" and not Path(ops).is_file():
            typer.echo(f"pagesim replay: error: {ops}: no such file", err=True)
            raise typer.Exit(2)
        f: TextIO = sys.stdin if ops == "-" else open(ops, encoding="utf-8")  # noqa: SIM115
        out = sys.stdout
        try:
            for rec in replay(_lines(f, name), block_size=block_size, num_blocks=num_blocks,
                              prefix_caching=prefix_caching, watermark=watermark, semantics=semantics):
                out.write(json.dumps(rec) + "\n")
            out.flush()
        except ReplayError as e:
            where = f"{name}:{e.line_no}" if e.line_no else name
            msg = e.msg if e.line_no else e.msg.removeprefix(f"{name}: ")
            typer.echo(f"pagesim replay: error: {where}: {msg}", err=True)
            raise typer.Exit(2) from None
        except BrokenPipeError:  # e.g. `pagesim replay ops.jsonl | head`
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no flush error at exit
            raise typer.Exit(0) from None
        finally:
            if f is not sys.stdin:
                f.close()
