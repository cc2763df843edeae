"""`pagesim engines`: list the engine profiles (serving-system overheads) `--engine` accepts, with the
numbers and where each comes from (sim.timing.engines; docs/latency.md explains them)."""

from __future__ import annotations

from typing import Annotated

import typer


def register(app: typer.Typer) -> None:
    """Add the `engines` command to the CLI."""

    @app.command("engines")
    def engines_cmd(name: Annotated[str | None, typer.Argument(help="Show one profile in full.")] = None) -> None:
        """The engine profiles for --engine: CPU per step and per sequence, decode-kernel and swap costs, sources.

        Examples:
          pagesim engines
          pagesim engines vllm-2023
        """
        from rich.console import Console

        from sim.presets import SpecError
        from sim.timing.engines import DEFAULT_ENGINE, ENGINE_PROFILES, get_engine

        out = Console()
        if name is not None:
            try:
                p = get_engine(name)
            except SpecError as e:
                typer.echo(f"pagesim engines: error: {e}", err=True)
                raise typer.Exit(2) from None
            for k, v in p.to_dict().items():
                out.print(f"[bold]{k}[/bold]: {v}", soft_wrap=True)
            return
        out.print(f"Engine profiles (default: {DEFAULT_ENGINE}); `pagesim engines NAME` shows one with its sources.")
        for p in ENGINE_PROFILES.values():
            eff = "the model's efficiency" if p.attn_efficiency is None else f"{p.attn_efficiency:g} of HBM peak"
            out.print(f"[bold]{p.name}[/bold]: {p.description}", soft_wrap=True)
            out.print(f"  CPU {p.step_overhead_s * 1e3:g} ms/step + {p.seq_overhead_s * 1e3:g} ms/seq; decode attention "
                      f"at {eff}; swap {p.swap_copy_s * 1e6:g} us per copy call", soft_wrap=True)
        out.print("docs/latency.md explains every term.")
