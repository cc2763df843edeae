"""Reading trace files: file checks, CSV and JSON Lines parsing with exact source line numbers.

Every reader returns raw columns plus, per row, the 1-based physical line it came from, so later
validation can name the line of a bad value. Blank lines are not rows (they are ignored, including
a missing or extra final newline); CRLF and LF endings and gzip compression (`.gz`) are accepted.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from workloads.arrivals import ArrivalProcess
from workloads.errors import TraceError, WorkloadError

_GZIP_MAGIC = b"\x1f\x8b"


@dataclass(frozen=True, slots=True)
class ReadOptions:
    """Options every format reader understands.

    skip_bad_rows: drop malformed rows (counted in the stats) instead of raising on the first one.
    sort: sort rows by arrival time instead of rejecting rows whose time goes backwards.
    prefix_unit: tokens per prefix-hash id for generic files without a `prefix_unit` column.
    hash_unit: tokens per `hash_ids` entry in Mooncake files (512 in the FAST'25 release).
    allow_extra_columns: ignore unknown generic columns instead of rejecting them (typo guard).
    arrival, rng: the arrival process (workloads.arrivals) and generator that give arrival times to
      files without timestamps (length tables); required for those, unused otherwise.
    shuffle: for files without timestamps, shuffle the rows with `rng` before assigning arrivals.
    """

    skip_bad_rows: bool = False
    sort: bool = False
    prefix_unit: int | None = None
    hash_unit: int = 512
    allow_extra_columns: bool = False
    arrival: ArrivalProcess | None = None
    rng: np.random.Generator | None = None
    shuffle: bool = False


DEFAULT_READ = ReadOptions()


def read_bytes(path: str | Path) -> bytes:
    """The file's (decompressed) bytes; a clear TraceError if missing, not a file, empty or not text."""
    p = Path(path)
    if not p.exists():
        raise TraceError(path, None, None, "no such file")
    if p.is_dir():
        raise TraceError(path, None, None, "is a directory, not a trace file")
    data = p.read_bytes()
    if data[:2] == _GZIP_MAGIC:
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError) as exc:
            raise TraceError(path, None, None, f"corrupt gzip file ({exc})") from None
    if not data.strip():
        raise TraceError(path, None, None, "empty file (no header and no rows)")
    head = data[:65536]
    if b"\x00" in head:
        raise TraceError(path, None, None, "not a text file (binary content); expected CSV or JSON Lines")
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as exc:
        if exc.start < len(head) - 4:  # a multi-byte character cut at the 64 KiB boundary is fine
            raise TraceError(path, None, None, "not a UTF-8 text file; expected CSV or JSON Lines") from None
    return data


def _nonblank_lines(data: bytes) -> np.ndarray:
    """1-based numbers of the lines that hold something (not empty, not just '\\r')."""
    buf = np.frombuffer(data, dtype=np.uint8)
    ends = np.flatnonzero(buf == 10)
    if len(buf) and buf[-1] != 10:
        ends = np.append(ends, len(buf))
    starts = np.concatenate(([0], ends[:-1] + 1))
    length = ends - starts
    cr = np.zeros(len(ends), dtype=bool)
    has = length > 0
    cr[has] = buf[np.minimum(ends[has] - 1, len(buf) - 1)] == 13
    return np.flatnonzero(length - cr > 0) + 1


def read_csv(path: str | Path, data: bytes, *, str_columns: tuple[str, ...] = ()) -> tuple[pd.DataFrame, np.ndarray]:
    """Parse CSV bytes with a header; returns the frame (stripped column names) and each row's line."""
    try:
        df = pd.read_csv(io.BytesIO(data), encoding="utf-8-sig", skipinitialspace=True,
                         dtype={c: str for c in str_columns} or None)
    except pd.errors.ParserError as exc:
        raise TraceError(path, _line_from(str(exc)), None, f"malformed CSV: {str(exc).strip()}") from None
    except pd.errors.EmptyDataError:
        raise TraceError(path, None, None, "empty file (no header and no rows)") from None
    except UnicodeDecodeError as exc:
        raise TraceError(path, None, None, f"not a UTF-8 text file ({exc.reason})") from None
    df.columns = [str(c).strip() for c in df.columns]
    if len(df) == 0:
        raise TraceError(path, None, None, "no data rows (only a header)")
    lines = _nonblank_lines(data)[1:]  # the first non-blank line is the header
    if len(lines) != len(df):  # quoted fields spanning lines: fall back to row order
        lines = np.arange(len(df), dtype=np.int64) + 2
    return df, lines.astype(np.int64)


def _line_from(message: str) -> int | None:
    """The line number pandas' C parser reports ('... in line 5, saw 4')."""
    import re

    m = re.search(r"line (\d+)", message)
    return int(m.group(1)) if m else None


def csv_header(data: bytes) -> list[str]:
    """Column names of the first non-blank line (for format sniffing)."""
    text = data[:65536].decode("utf-8-sig", errors="replace")
    for raw in text.splitlines():
        if raw.strip():
            return [c.strip() for c in next(csv.reader([raw]))]
    return []


@dataclass(slots=True)
class JsonlRows:
    """Raw JSON Lines content: per wanted key a list of values (None when absent), each row's line,
    rows that are not JSON objects as (row index, message), and other keys with their first line."""

    columns: dict[str, list[Any]]
    lines: np.ndarray
    broken: list[tuple[int, str]]
    extra_keys: dict[str, int]


def read_jsonl(path: str | Path, data: bytes, keys: tuple[str, ...]) -> JsonlRows:
    """Parse JSON Lines bytes, one object per non-blank line."""
    text = data.decode("utf-8-sig", errors="replace")
    if text.lstrip().startswith("["):
        raise TraceError(path, 1, None, "a JSON array, not JSON Lines; write one JSON object per line")
    columns: dict[str, list[Any]] = {k: [] for k in keys}
    appends = [(k, columns[k].append) for k in keys]
    wanted = set(keys)
    lines: list[int] = []
    broken: list[tuple[int, str]] = []
    extra: dict[str, int] = {}
    loads = json.loads
    for number, raw in enumerate(text.split("\n"), start=1):
        if not raw.strip():
            continue
        try:
            row = loads(raw)
        except json.JSONDecodeError as exc:
            row, msg = None, f"not valid JSON ({exc.msg} at column {exc.colno})"
        except ValueError as exc:  # e.g. an integer literal too long to convert
            row, msg = None, f"not valid JSON ({exc})"[:200]
        else:
            msg = f"not a JSON object: {raw.strip()[:60]!r}"
        if not isinstance(row, dict):
            broken.append((len(lines), msg))
            row = {}
        elif row.keys() - wanted:
            for k in row.keys() - wanted:
                extra.setdefault(k, number)
        for k, append in appends:
            append(row.get(k))
        lines.append(number)
    if not lines:
        raise TraceError(path, None, None, "empty file (no rows)")
    return JsonlRows(columns, np.asarray(lines, dtype=np.int64), broken, extra)


def first_json_object(data: bytes) -> dict[str, Any] | None:
    """The first non-blank line parsed as a JSON object, or None (for format sniffing)."""
    for raw in data[:1 << 20].decode("utf-8-sig", errors="replace").split("\n"):
        if raw.strip():
            try:
                obj = json.loads(raw)
            except ValueError:
                return None
            return obj if isinstance(obj, dict) else None
    return None


def assign_arrivals(path: str | Path, num: int, opts: ReadOptions) -> tuple[np.ndarray, np.ndarray]:
    """(row order, arrival times) for a file without timestamps, from opts.arrival and opts.rng."""
    if opts.arrival is None or opts.rng is None:
        raise WorkloadError(f"{path}: this file has no arrival times; give an arrival process and a "
                            "random generator (e.g. load_trace(..., rate=2.0, arrival='poisson', rng=...))")
    order = opts.rng.permutation(num) if opts.shuffle else np.arange(num)
    return order, np.asarray(opts.arrival.times(num, opts.rng), dtype=np.float64)
