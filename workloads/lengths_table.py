"""Length-only tables (e.g. the ShareGPT statistics CSV from sarathi-serve / vidur) -> TraceColumns.

Columns `num_prefill_tokens` (prompt) and `num_decode_tokens` (output); `num_total_tokens` and
`pd_ratio`, when present, must agree with them. There are no timestamps: arrival times come from a
chosen arrival process (workloads.arrivals) and random generator, optionally after shuffling rows.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from workloads.columns import TraceColumns
from workloads.errors import TraceError
from workloads.sources import DEFAULT_READ, ReadOptions, assign_arrivals, read_bytes, read_csv
from workloads.validate import RowChecker

PROMPT, OUTPUT, TOTAL, RATIO = "num_prefill_tokens", "num_decode_tokens", "num_total_tokens", "pd_ratio"


def read_lengths_table(path: str | Path, opts: ReadOptions = DEFAULT_READ) -> tuple[TraceColumns, dict[str, Any]]:
    """Parse a prompt/output length table and give it arrivals from `opts.arrival` and `opts.rng`."""
    df, lines = read_csv(path, read_bytes(path))
    missing = [c for c in (PROMPT, OUTPUT) if c not in df.columns]
    if missing:
        raise TraceError(path, 1, missing[0], f"missing column; a length table has columns {PROMPT}, {OUTPUT} "
                         f"(optional {TOTAL}, {RATIO}); found: {', '.join(df.columns)}")
    chk = RowChecker(path, lines, opts.skip_bad_rows)
    prompt = chk.int_column(PROMPT, df[PROMPT])
    output = chk.int_column(OUTPUT, df[OUTPUT])
    if TOTAL in df.columns:
        total = chk.int_column(TOTAL, df[TOTAL], lo=2)
        chk.flag(TOTAL, total != prompt + output,
                 lambda i: f"{total[i]} != {PROMPT} + {OUTPUT} = {prompt[i] + output[i]}")
    if RATIO in df.columns:
        ratio = chk.float_column(RATIO, df[RATIO], lo=0)
        expect = prompt / np.maximum(output, 1)
        chk.flag(RATIO, ~np.isclose(ratio, expect, rtol=1e-6),
                 lambda i: f"{ratio[i]!r} != {PROMPT} / {OUTPUT} = {expect[i]!r}")
    good = chk.finish()
    if not good.any():
        raise TraceError(path, None, None, f"no valid rows (all {len(good)} rows were skipped as bad)")
    idx = np.flatnonzero(good)
    order, arrival = assign_arrivals(path, len(idx), opts)
    idx = idx[order]
    cols = TraceColumns.build(arrival, prompt[idx], output[idx], line=lines[idx], req_id=idx.astype(np.int64))
    return cols, {"format": "sharegpt", "rows_read": len(df), "arrival": repr(opts.arrival), **chk.stats()}
