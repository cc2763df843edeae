"""Mooncake FAST'25 traces (kvcache-ai/Mooncake): JSON Lines -> TraceColumns with prefix ids.

Keys `timestamp` (integer ms since trace start), `input_length`, `output_length`, `hash_ids`
(one id per 512-token block of the prompt; equal ids = equal prefix content). The ids become the
spec's `prefix_hashes` with `prefix_unit=512`; the simulator derives block hashes for its own
block size from them (see docs/workloads.md, "Prefix ids and block sizes").
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from workloads.columns import TraceColumns
from workloads.errors import TraceError
from workloads.sources import DEFAULT_READ, ReadOptions, read_bytes, read_jsonl
from workloads.validate import RowChecker

KEYS = ("timestamp", "input_length", "output_length", "hash_ids")


def read_mooncake(path: str | Path, opts: ReadOptions = DEFAULT_READ) -> tuple[TraceColumns, dict[str, Any]]:
    """Parse a Mooncake JSONL trace; returns columns and load stats (rows, skipped, block reuse)."""
    rows = read_jsonl(path, read_bytes(path), KEYS, int_keys=("input_length", "output_length"))
    chk = RowChecker(path, rows.lines, opts.skip_bad_rows, json=True)
    if rows.broken:
        broken = np.zeros(len(rows.lines), dtype=bool)
        why = dict(rows.broken)
        broken[list(why)] = True
        chk.flag(None, broken, lambda i: why[i])
    for key in KEYS[:3]:
        if key not in rows.columns and len(rows.broken) < len(rows.lines):
            raise TraceError(path, int(rows.lines[0]), key, f"missing key in every row (a Mooncake trace has "
                             f"keys {', '.join(KEYS)})")
    none = [None] * len(rows.lines)
    cells = {k: rows.columns.get(k, none) for k in KEYS}
    ms = chk.float_column("timestamp", cells["timestamp"], lo=0, unit=" ms")
    prompt = chk.int_column("input_length", cells["input_length"])
    output = chk.int_column("output_length", cells["output_length"])
    hashes = chk.hash_column("hash_ids", cells["hash_ids"])
    unit = opts.hash_unit
    num_ids = np.fromiter((len(h) for h in hashes), dtype=np.int64, count=len(hashes))
    room = -(-prompt // unit)
    chk.flag("hash_ids", (num_ids > room) & (prompt > 0),
             lambda i: f"{num_ids[i]} ids cover {num_ids[i] * unit} tokens but input_length is "
                       f"{prompt[i]} (at most ceil({prompt[i]}/{unit}) = {room[i]} ids)")
    if not opts.sort:
        chk.check_order("timestamp", ms, lambda i: f"{ms[i]:g} ms")
    good = chk.finish()
    if not good.any():
        raise TraceError(path, None, None, f"no valid rows (all {len(good)} rows were skipped as bad)")
    cols = TraceColumns.build(ms / 1000.0, prompt, output, prefix_hashes=hashes, prefix_unit=unit,
                              line=rows.lines, req_id=np.arange(len(rows.lines), dtype=np.int64))
    cols = cols.take(good)
    if opts.sort:
        cols = cols.take(np.argsort(cols.arrival, kind="stable"))
    stats: dict[str, Any] = {"format": "mooncake", "rows_read": len(rows.lines), "hash_unit": unit,
                             "trace_start_ms": float(cols.arrival[0] * 1000.0), **chk.stats()}
    cols.arrival = cols.arrival - cols.arrival[0]
    stats.update(hash_reuse(cols.prefix_hashes))
    return cols, stats


def hash_reuse(prefix_hashes: list[tuple[int, ...]]) -> dict[str, Any]:
    """Id-level reuse: references, unique ids, and the share of references that repeat an earlier id
    (the prefix-cache hit ratio of an unbounded cache at the id unit)."""
    refs = sum(len(h) for h in prefix_hashes)
    unique = len({i for h in prefix_hashes for i in h})
    return {"hash_refs": refs, "hash_unique": unique,
            "hash_repeat_ratio": (refs - unique) / refs if refs else 0.0}
