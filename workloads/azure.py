"""Azure LLM inference traces (AzurePublicDataset, 2023 and 2024 releases): CSV -> TraceColumns.

Columns `TIMESTAMP, ContextTokens, GeneratedTokens`. TIMESTAMP is a wall-clock datetime with up to
7 fractional digits (100 ns ticks), naive or with a UTC offset; arrival times become seconds since
the first kept row. ContextTokens is the prompt length, GeneratedTokens the output length.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from workloads.columns import TraceColumns
from workloads.errors import TraceError
from workloads.sources import DEFAULT_READ, ReadOptions, read_bytes, read_csv
from workloads.validate import RowChecker

COLUMNS = ("TIMESTAMP", "ContextTokens", "GeneratedTokens")


def read_azure(path: str | Path, opts: ReadOptions = DEFAULT_READ) -> tuple[TraceColumns, dict[str, Any]]:
    """Parse an Azure LLM inference CSV; returns columns and load stats (rows, skipped, start time)."""
    df, lines = read_csv(path, read_bytes(path), str_columns=("TIMESTAMP",))
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise TraceError(path, 1, missing[0], f"missing column; an Azure LLM trace has columns {', '.join(COLUMNS)}"
                         f" (found: {', '.join(df.columns)})")
    chk = RowChecker(path, lines, opts.skip_bad_rows)
    raw_ts = df["TIMESTAMP"].to_numpy(dtype=object)
    stamps = pd.to_datetime(df["TIMESTAMP"], format="ISO8601", errors="coerce", utc=True)
    chk.flag("TIMESTAMP", df["TIMESTAMP"].isna().to_numpy(), lambda i: "missing value")
    chk.flag("TIMESTAMP", (stamps.isna() & df["TIMESTAMP"].notna()).to_numpy(),
             lambda i: f"not a timestamp: {raw_ts[i]!r} (expected e.g. '2023-11-16 18:17:03.9799600')")
    prompt = chk.int_column("ContextTokens", df["ContextTokens"])
    output = chk.int_column("GeneratedTokens", df["GeneratedTokens"])
    valid = stamps.notna().to_numpy()
    if not valid.any():
        chk.finish()
        raise TraceError(path, None, "TIMESTAMP", "no row has a valid timestamp")
    origin = stamps[valid].min()
    secs = ((stamps - origin) / pd.Timedelta(seconds=1)).to_numpy(dtype=np.float64, na_value=np.nan)
    secs = np.nan_to_num(secs, nan=0.0)
    if not opts.sort:
        chk.check_order("TIMESTAMP", secs, lambda i: repr(raw_ts[i]))
    good = chk.finish()
    if not good.any():
        raise TraceError(path, None, None, f"no valid rows (all {len(good)} rows were skipped as bad)")
    cols = TraceColumns.build(secs, prompt, output, line=lines, req_id=np.arange(len(df), dtype=np.int64))
    cols = cols.take(good)
    if opts.sort:
        cols = cols.take(np.argsort(cols.arrival, kind="stable"))
    start = cols.arrival[0]
    cols.arrival = cols.arrival - start
    first_time = origin + pd.Timedelta(seconds=float(start))
    stats = {"format": "azure", "rows_read": len(df), "start_time": str(first_time.tz_convert(None)),
             **chk.stats()}
    return cols, stats
