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
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pa_json

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
    """Parse CSV bytes with a header; returns the frame (stripped column names) and each row's line.

    `str_columns` are kept as Python strings (object dtype, NaN when empty), not parsed as numbers.
    """
    try:
        df = pd.read_csv(io.BytesIO(data), encoding="utf-8-sig", skipinitialspace=True,
                         dtype={c: object for c in str_columns} or None)
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
    """Raw JSON Lines content: per wanted key that some row has, its values (None where a row lacks
    it); each row's line; rows that are not JSON objects as (row index, message); and keys that
    were not asked for, with the first line holding each."""

    columns: dict[str, list[Any]]
    lines: np.ndarray
    broken: list[tuple[int, str]]
    extra_keys: dict[str, int]


def read_jsonl(path: str | Path, data: bytes, keys: tuple[str, ...], int_keys: tuple[str, ...] = ()) -> JsonlRows:
    """Parse JSON Lines bytes, one object per non-blank line.

    int_keys: keys whose values must be JSON integers: their cells keep their JSON types (a float
    or a string among them stays one, so validation can name it) rather than being widened."""
    text = data.decode("utf-8-sig", errors="replace")
    if text.lstrip().startswith("["):
        raise TraceError(path, 1, None, "a JSON array, not JSON Lines; write one JSON object per line")
    fast = _parse_arrow(data, keys, int_keys)
    if fast is not None:
        return fast
    raw_lines = text.split("\n")
    numbers = [i for i, raw in enumerate(raw_lines, start=1) if raw.strip()]
    if not numbers:
        raise TraceError(path, None, None, "empty file (no rows)")
    texts = [raw_lines[i - 1] for i in numbers]
    rows = _parse_all(texts)
    if rows is None:  # some line is broken: parse line by line to say which
        return _read_jsonl_slow(texts, np.asarray(numbers, dtype=np.int64), keys)
    columns = _present({k: [r.get(k) for r in rows] for k in keys})
    extra: dict[str, int] = {}
    for k in set().union(*rows) - set(keys):
        extra[k] = next(numbers[j] for j, r in enumerate(rows) if k in r)
    return JsonlRows(columns, np.asarray(numbers, dtype=np.int64), [], extra)


def _parse_arrow(data: bytes, keys: tuple[str, ...], int_keys: tuple[str, ...] = ()) -> JsonlRows | None:
    """Fast path for clean files: pyarrow's C++ JSON reader. None (use the Python paths, which
    name bad lines) on any parse error, a row count that does not match the lines, or column types
    other than numbers, strings and lists of ints."""
    lines = _nonblank_lines(data)
    try:
        table = pa_json.read_json(io.BytesIO(data))
    except (pa.ArrowException, ValueError):
        return None
    if table.num_rows != len(lines) or table.num_rows == 0:
        return None
    columns: dict[str, Any] = {}
    for k in keys:
        if k not in table.column_names:
            continue
        col, typ = table.column(k), table.schema.field(k).type
        if k in int_keys and pa.types.is_floating(typ):
            return None  # some cell is a JSON float: the Python path keeps which ones
        if k in int_keys and pa.types.is_integer(typ) and col.null_count:
            columns[k] = col.to_pylist()  # to_numpy would widen to float (NaN for null)
        elif pa.types.is_integer(typ) or pa.types.is_floating(typ):
            columns[k] = col.to_numpy()  # nulls become NaN ('missing')
        elif pa.types.is_null(typ):
            continue
        elif pa.types.is_string(typ):
            columns[k] = col.to_pylist()
        elif pa.types.is_list(typ) and pa.types.is_integer(typ.value_type) \
                and pc.list_flatten(col).null_count == 0:
            # null items are invalid anyway, and pyarrow 26 scrambles list items when a first row's
            # [null, ...] list is promoted to ints: let the Python path parse such files
            columns[k] = col.to_pylist()
        else:  # booleans, timestamps inferred from strings, nested objects...: let Python judge
            return None
    extra = {}
    for name in table.column_names:
        if name not in keys:
            valid = np.asarray(table.column(name).is_valid())
            extra[name] = int(lines[int(np.argmax(valid))])
    return JsonlRows(columns, lines.astype(np.int64), [], extra)


def _parse_all(texts: list[str]) -> list[dict[str, Any]] | None:
    """All lines at once as one JSON array (one C-level parse instead of a call per line); None if
    that fails or does not give exactly one object per line."""
    try:
        rows = json.loads("[" + ",".join(texts) + "]")
    except ValueError:
        return None
    if len(rows) != len(texts) or not all(type(r) is dict for r in rows):
        return None
    return rows


def _read_jsonl_slow(texts: list[str], numbers: np.ndarray, keys: tuple[str, ...]) -> JsonlRows:
    """Line-by-line parse that records which rows are broken and why."""
    columns: dict[str, list[Any]] = {k: [] for k in keys}
    appends = [(k, columns[k].append) for k in keys]
    wanted = set(keys)
    broken: list[tuple[int, str]] = []
    extra: dict[str, int] = {}
    for j, (number, raw) in enumerate(zip(numbers.tolist(), texts, strict=True)):
        try:
            row = json.loads(raw)
        except json.JSONDecodeError as exc:
            row, msg = None, f"not valid JSON ({exc.msg} at column {exc.colno})"
        except ValueError as exc:  # e.g. an integer literal too long to convert
            row, msg = None, f"not valid JSON ({exc})"[:200]
        else:
            msg = f"not a JSON object: {raw.strip()[:60]!r}"
        if not isinstance(row, dict):
            broken.append((j, msg))
            row = {}
        else:
            for k in row.keys() - wanted:
                extra.setdefault(k, number)
        for k, append in appends:
            append(row.get(k))
    return JsonlRows(_present(columns), numbers, broken, extra)


def _present(columns: dict[str, list[Any]]) -> dict[str, list[Any]]:
    """Only the keys that some row has with a non-null value."""
    return {k: v for k, v in columns.items() if v and (v[0] is not None or any(x is not None for x in v))}


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
