"""The timings table `pagesim bench` writes: its columns, per-row arithmetic, and resumable CSV output.

Rows are appended to a CSV one at a time (flushed and fsynced), so a killed run keeps every finished
config and `--resume` skips them by config_id. The derived columns (achieved bandwidth, fraction of
peak, paged-vs-contiguous overhead) are computed here, the same way for fresh and resumed rows.
"""

from __future__ import annotations

import csv
import math
import os
from pathlib import Path
from typing import Any

import pandas as pd

# The CONTRACT columns gpu/calibration/kernels.py reads come first; then the harness's own.
COLUMNS: tuple[str, ...] = (
    "variant", "batch_size", "block_size", "num_heads", "num_kv_heads", "head_dim", "dtype", "kv_bytes",
    "num_blocks_touched", "latency_s",
    "context_len_mean", "context_len_max", "latency_p10_s", "latency_p90_s", "latency_std_s", "reps",
    "achieved_bw_Bps", "peak_bw_Bps", "bw_fraction", "paged_overhead_pct", "max_abs_err",
    "device", "driver", "cuda_version", "cupy_version", "config_id",
    "context_mode", "latency_min_s", "l2_flushed", "check_ok", "checked_seqs", "split", "baseline_latency_s",
    "backend", "peak_bw_source", "seed",
)


class OutputError(ValueError):
    """An existing output file that cannot be resumed (wrong columns, another device); names the file."""


def achieved_bandwidth(kv_bytes: int, latency_s: float) -> float:
    """KV bytes read per second: kv_bytes / latency_s (bytes/s). latency_s must be > 0."""
    if not latency_s > 0:
        raise ValueError(f"latency must be > 0 s (got {latency_s})")
    return kv_bytes / latency_s


def bandwidth_fraction(achieved_Bps: float, peak_Bps: float) -> float:
    """achieved / peak; NaN when the peak is unknown (NaN). Not clipped: a value above 1 means the
    KV bytes were not all read from HBM (an L2 hit the flush missed) and must stay visible."""
    if math.isnan(peak_Bps):
        return math.nan
    if not peak_Bps > 0:
        raise ValueError(f"peak bandwidth must be > 0 bytes/s (got {peak_Bps})")
    return achieved_Bps / peak_Bps


def overhead_pct(latency_s: float, baseline_s: float | None) -> float:
    """How much slower than the baseline, in percent: 100 * (latency / baseline - 1); NaN without one."""
    if baseline_s is None or math.isnan(baseline_s):
        return math.nan
    return 100.0 * (latency_s / baseline_s - 1.0)


def read_rows(path: Path) -> list[dict[str, str]]:
    """Rows of an existing timings CSV as strings, checking the header. A truncated last line (the run
    was killed mid-write) is dropped and the file rewritten without it; any other bad line is an error."""
    with path.open(newline="") as f:
        lines = f.read().splitlines(keepends=True)
    if not lines:
        return []
    reader = csv.reader(lines)
    header = next(reader)
    if tuple(header) != COLUMNS:
        missing = [c for c in COLUMNS if c not in header]
        raise OutputError(f"{path}: not a timings file of this pagesim version (columns differ; missing: "
                          f"{', '.join(missing) or 'none'}); use another --out or --overwrite")
    rows: list[dict[str, str]] = []
    for lineno, fields in enumerate(reader, start=2):
        if len(fields) != len(COLUMNS):
            if lineno == len(lines) and not lines[-1].endswith("\n"):
                _rewrite(path, lines[:-1])
                break
            raise OutputError(f"{path} line {lineno}: {len(fields)} fields, expected {len(COLUMNS)}")
        rows.append(dict(zip(COLUMNS, fields, strict=True)))
    return rows


def _rewrite(path: Path, lines: list[str]) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text("".join(lines))
    os.replace(tmp, path)


class TimingsWriter:
    """Appends rows to a timings CSV (header written once); each row reaches the disk before the next
    config starts. `done` maps config_id -> the rows already there (for resume)."""

    def __init__(self, path: Path, *, resume: bool, overwrite: bool = False, device: str | None = None) -> None:
        self.path = Path(path)
        self.done: dict[str, dict[str, str]] = {}
        if self.path.exists() and not (resume or overwrite):
            raise OutputError(f"{self.path} exists; pass --resume to continue it or --overwrite to replace it")
        if self.path.exists() and resume:
            rows = read_rows(self.path)
            others = sorted({r["device"] for r in rows} - {device}) if device is not None else []
            if others:
                raise OutputError(f"{self.path}: rows were measured on {', '.join(others)}, this run is on "
                                  f"{device}; resume on the same device or use another --out")
            self.done = {r["config_id"]: r for r in rows}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fresh = overwrite or not self.path.exists() or self.path.stat().st_size == 0
        self._file = self.path.open("w" if fresh else "a", newline="")
        self._csv = csv.writer(self._file, lineterminator="\n")
        if fresh:
            self._csv.writerow(COLUMNS)
            self._sync()

    def _sync(self) -> None:
        self._file.flush()
        os.fsync(self._file.fileno())

    def write(self, row: dict[str, Any]) -> None:
        """Append one row (all COLUMNS, floats with full precision) and sync it to disk."""
        missing = [c for c in COLUMNS if c not in row]
        if missing:
            raise ValueError(f"row {row.get('config_id')!r} lacks column(s) {', '.join(missing)}")
        self._csv.writerow([_fmt(row[c]) for c in COLUMNS])
        self._sync()

    def close(self) -> None:
        """Close the file (rows are already on disk)."""
        self._file.close()

    def __enter__(self) -> TimingsWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _fmt(v: Any) -> Any:
    return repr(v) if isinstance(v, float) else v  # repr: shortest round-tripping float text


def load_timings(path: Path) -> pd.DataFrame:
    """The timings CSV as a typed DataFrame (numbers as numbers, booleans as booleans)."""
    df = pd.read_csv(path, keep_default_na=False, na_values=["nan", "NaN"],
                     dtype={"device": str, "driver": str, "cuda_version": str, "cupy_version": str,
                            "config_id": str, "variant": str, "dtype": str, "backend": str,
                            "peak_bw_source": str, "context_mode": str})
    for col in ("l2_flushed", "check_ok", "split"):
        df[col] = df[col].astype(str).map({"True": True, "False": False})
    return df


def write_parquet(df: pd.DataFrame, path: Path) -> Path:
    """Write the table as Parquet next to the CSV (atomic rename); returns the path."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    df.to_parquet(tmp, index=False)
    os.replace(tmp, path)
    return path
