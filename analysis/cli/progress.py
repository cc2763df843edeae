"""While a simulating command runs: the KV pool it simulates and a progress bar per system.

The pool line says what is being simulated (token slots, GiB, blocks); the progress bar (stderr, a
terminal only) shows the arrivals admitted and the simulated clock of the system that is running.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn


def pool_lines(exp: Any) -> list[str]:
    """The KV pool of each system: token slots, GiB and (paged) blocks; systems sharing a pool share a line."""
    from sim.config import resolve, system_label

    pools: dict[str, list[tuple[str, int, int]]] = {}
    for system in exp.systems:
        cfg = exp.sim_config(system)
        res = resolve(cfg)
        gib = res.capacity_tokens * res.kv_bytes_per_token / (1 << 30)
        pool = (f"KV pool: {res.capacity_tokens:,} token slots = {gib:.1f} GiB ({exp.model} {exp.kv_dtype}, "
                f"{res.kv_bytes_per_token / 1024:.0f} KiB/token; max_model_len {res.max_model_len:,})")
        pools.setdefault(pool, []).append((system_label(cfg.cache), res.num_blocks, res.block_size))
    out = []
    for pool, systems in pools.items():
        out.append(pool)
        out += [f"  {label}: {n:,} blocks of {b} tokens" for label, n, b in systems if b]
        contig = [label for label, _, b in systems if not b]
        if contig:
            out.append(f"  {', '.join(contig)}: one contiguous extent per request")
    return out


@contextlib.contextmanager
def progress(err: Console, enabled: bool = True) -> Iterator[Callable[[str, Any], Callable[[], None]]]:
    """A rich progress bar per system while it runs (arrivals admitted / total, simulated time).

    Yields `start(system, engine) -> stop`: call start before `engine.run()` and stop after. A
    daemon thread polls the engine's arrival count and clock (reads only) five times a second.
    """
    if not enabled or not err.is_terminal:
        yield lambda system, engine: (lambda: None)
        return
    bar = Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed:,}/{task.total:,} arrived"),
                   TextColumn("sim t={task.fields[t]:.0f} s"), TimeElapsedColumn(), console=err, transient=True)

    def start(system: str, engine: Any) -> Callable[[], None]:
        task = bar.add_task(system, total=max(1, len(engine.specs)), t=0.0)
        done = threading.Event()

        def poll() -> None:
            while not done.wait(0.2):
                bar.update(task, completed=engine.num_arrived, t=float(engine.env.now))

        th = threading.Thread(target=poll, daemon=True)
        th.start()

        def stop() -> None:
            done.set()
            th.join()
            bar.remove_task(task)
        return stop

    with bar:
        yield start


def elapsed(t0: float) -> str:
    """Seconds since t0, for the per-system progress lines."""
    return f"{time.perf_counter() - t0:.1f} s"
