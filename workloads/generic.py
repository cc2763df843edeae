"""The generic trace schema (CSV or JSON Lines) so users can bring their own workloads.

One request per row. Required: `prompt_len`, `output_len`. Optional: `arrival_time` (seconds; without
it the file is a length table and needs an arrival process), `req_id`, `n`, `beam_width`, `spec_k`,
`spec_accept`, `prefix_hashes` (ids, JSON list or CSV text '3 7 9'), `prefix_unit`, `cancel_time`.
Empty optional cells take the RequestSpec default. Unknown columns are rejected (typo guard).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from workloads.columns import TraceColumns
from workloads.errors import TraceError
from workloads.sources import (
    DEFAULT_READ,
    ReadOptions,
    assign_arrivals,
    read_bytes,
    read_csv,
    read_jsonl,
)
from workloads.validate import RowChecker

REQUIRED = ("prompt_len", "output_len")
OPTIONAL = ("arrival_time", "req_id", "n", "beam_width", "spec_k", "spec_accept", "prefix_hashes",
            "prefix_unit", "cancel_time")
COLUMNS = REQUIRED + OPTIONAL
INT_COLUMNS = ("prompt_len", "output_len", "n", "beam_width", "spec_k", "prefix_unit")
MAX_FANOUT = 1 << 16  # n, beam_width and spec_k beyond this are certainly a mistake


def read_generic(path: str | Path, opts: ReadOptions = DEFAULT_READ) -> tuple[TraceColumns, dict[str, Any]]:
    """Parse a generic CSV or JSONL trace (JSONL if the first non-blank line is a JSON object)."""
    data = read_bytes(path)
    if data.lstrip()[:1] in (b"{", b"["):
        rows = read_jsonl(path, data, COLUMNS, int_keys=INT_COLUMNS)
        lines, present = rows.lines, [k for k in COLUMNS if k in rows.columns]
        cells: dict[str, Any] = dict(rows.columns)
        for col in REQUIRED:  # only reached with every line broken; those errors are reported instead
            cells.setdefault(col, [None] * len(lines))
        extra = rows.extra_keys
        broken = rows.broken
        kind = "jsonl"
    else:
        df, lines = read_csv(path, data, str_columns=("prefix_hashes", "req_id"))
        present = [c for c in COLUMNS if c in df.columns]
        cells = {c: df[c] for c in present}
        extra = {c: 1 for c in df.columns if c not in COLUMNS}
        broken = []
        kind = "csv"
    for col in REQUIRED:
        if col not in present and len(broken) < len(lines):  # if every line is broken, report that instead
            raise TraceError(path, 1 if kind == "csv" else None, col,
                             f"missing required column (generic schema: {', '.join(COLUMNS)})")
    if extra and not opts.allow_extra_columns:
        name, line = min(extra.items(), key=lambda kv: kv[1])
        raise TraceError(path, line, name, f"unknown column (known: {', '.join(COLUMNS)}); "
                         "pass allow_extra_columns=True to ignore it")
    chk = RowChecker(path, lines, opts.skip_bad_rows, json=kind == "jsonl")
    if broken:
        mask = np.zeros(len(lines), dtype=bool)
        why = dict(broken)
        mask[list(why)] = True
        chk.flag(None, mask, lambda i: why[i])
    cols = _validate(path, chk, cells, present, lines, opts)
    good = chk.finish()
    if not good.any():
        raise TraceError(path, None, None, f"no valid rows (all {len(good)} rows were skipped as bad)")
    cols = cols.take(good)
    stats: dict[str, Any] = {"format": "generic", "file_kind": kind, "rows_read": len(lines),
                             "columns": present, "ignored_columns": sorted(extra), **chk.stats()}
    if "arrival_time" in present:
        if opts.sort:
            cols = cols.take(np.argsort(cols.arrival, kind="stable"))
    else:
        order, cols.arrival = assign_arrivals(path, len(cols), opts)
        arrival = cols.arrival
        cols = cols.take(order)
        cols.arrival = arrival
        stats["arrival"] = repr(opts.arrival)
    return cols, stats


def _validate(path: str | Path, chk: RowChecker, cells: dict[str, Any], present: list[str],
              lines: np.ndarray, opts: ReadOptions) -> TraceColumns:
    """Check every present column; absent optional ones take the RequestSpec defaults."""
    num = len(lines)

    def opt_int(name: str, default: int, lo: int) -> np.ndarray:
        if name not in present:
            return np.full(num, default, dtype=np.int64)
        return chk.int_column(name, cells[name], lo=lo, hi=MAX_FANOUT, default=default)

    arrival = (chk.float_column("arrival_time", cells["arrival_time"], lo=0, unit=" s")
               if "arrival_time" in present else np.zeros(num))
    prompt = chk.int_column("prompt_len", cells["prompt_len"])
    output = chk.int_column("output_len", cells["output_len"])
    n = opt_int("n", 1, 1)
    beam = opt_int("beam_width", 1, 1)
    chk.flag("beam_width", (n > 1) & (beam > 1),
             lambda i: f"n = {n[i]} and beam_width = {beam[i]} cannot both be > 1")
    spec_k = opt_int("spec_k", 0, 0)
    accept = (chk.float_column("spec_accept", cells["spec_accept"], lo=0, hi=1, default=0.0)
              if "spec_accept" in present else np.zeros(num))
    cancel = (chk.float_column("cancel_time", cells["cancel_time"], lo=0, unit=" s", default=np.nan)
              if "cancel_time" in present else np.full(num, np.nan))
    hashes = (chk.hash_column("prefix_hashes", cells["prefix_hashes"], text=isinstance(cells["prefix_hashes"], pd.Series))
              if "prefix_hashes" in present else None)
    if "prefix_unit" in present:
        unit = chk.int_column("prefix_unit", cells["prefix_unit"], default=opts.prefix_unit or 16)
    else:
        if hashes is not None and opts.prefix_unit is None and any(hashes):
            raise TraceError(path, None, "prefix_unit", "prefix_hashes given but no prefix_unit: add a "
                             "prefix_unit column or pass prefix_unit= (tokens covered by each id)")
        unit = np.full(num, opts.prefix_unit or 16, dtype=np.int64)
    if hashes is not None:
        num_ids = np.fromiter((len(h) for h in hashes), dtype=np.int64, count=num)
        room = -(-prompt // np.maximum(unit, 1))
        chk.flag("prefix_hashes", (num_ids > room) & (prompt > 0),
                 lambda i: f"{num_ids[i]} ids of {unit[i]} tokens extend past prompt_len {prompt[i]} "
                           f"(at most {room[i]})")
    req_id = _req_ids(chk, cells["req_id"]) if "req_id" in present else np.arange(num, dtype=np.int64)
    if "arrival_time" in present and not opts.sort:
        chk.check_order("arrival_time", arrival, lambda i: f"{arrival[i]:g} s")
    return TraceColumns.build(arrival, prompt, output, n=n, beam_width=beam, spec_k=spec_k,
                              spec_accept=accept, prefix_hashes=hashes, prefix_unit=unit,
                              cancel_time=cancel, line=lines, req_id=req_id)


def _req_ids(chk: RowChecker, raw: Any) -> np.ndarray:
    """Request ids: ints when every id is an integer, else strings; missing or duplicate ids are bad."""
    vals = list(raw.tolist() if isinstance(raw, pd.Series) else raw)
    text = [None if v is None or (isinstance(v, float) and v != v) else str(v).strip() for v in vals]
    missing = np.array([t is None or t == "" for t in text], dtype=bool)
    chk.flag("req_id", missing, lambda i: "missing value")
    series = pd.Series(text, dtype=object)
    dup = series.duplicated(keep="first").to_numpy() & ~missing
    first_line: dict[str | None, int] = {}
    for t, line in zip(text, chk.lines.tolist(), strict=True):
        first_line.setdefault(t, line)
    chk.flag("req_id", dup, lambda i: f"duplicate id {text[i]!r} (first on line {first_line[text[i]]})")
    if all(t is not None and t.lstrip("-").isdigit() and len(t) < 19 for t in text):
        return np.array([int(t) for t in text], dtype=np.int64)  # type: ignore[arg-type]
    return np.array(text, dtype=object)

