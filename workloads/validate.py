"""Row validation for trace files: coerce raw columns, find bad rows, raise or skip them.

`RowChecker` checks a whole column at once (vectorized) and remembers, per column, which rows are
bad and why. `finish()` either raises a `TraceError` for the earliest bad line of the file (naming
its column) or, when the caller asked to skip bad rows, returns the mask of good rows plus counts.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from itertools import chain
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from workloads.errors import TraceError

# Lengths above this are certainly a unit or parsing mistake (and would overflow token arithmetic).
MAX_TOKENS = 1 << 40
MAX_EXAMPLES = 5


@dataclass(slots=True)
class _Flag:
    line: int
    seq: int
    column: str | None
    msg: str


@dataclass(slots=True)
class RowChecker:
    """Collects bad rows of one file.

    Invariant: `bad[i]` is True iff some flag marked row i; each bad row is counted once, under the
    column of the first check that failed it (`counts`), so sum(counts) == bad.sum().

    json: the cells are JSON values (JSON Lines files): a number must be a JSON number, and an
    integer a JSON integer; a string such as "1", a float such as 1.0, a list or an object is a bad
    value. (A CSV cell is text, so there "1" is the number 1.)
    """

    file: str | Path
    lines: np.ndarray
    skip_bad: bool
    json: bool = False
    bad: np.ndarray = field(init=False)
    counts: dict[str, int] = field(default_factory=dict)
    _flags: list[_Flag] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.bad = np.zeros(len(self.lines), dtype=bool)

    def flag(self, column: str | None, mask: np.ndarray, reason: Callable[[int], str]) -> None:
        """Mark rows where `mask` is True as bad; `reason(i)` explains row i (called for few rows)."""
        mask = np.asarray(mask, dtype=bool)
        if not mask.any():
            return
        new = mask & ~self.bad  # one message per row: the first check that failed it
        if not new.any():
            return
        self.counts[column or "<row>"] = self.counts.get(column or "<row>", 0) + int(new.sum())
        self.bad |= new
        for i in np.flatnonzero(new)[:MAX_EXAMPLES].tolist():
            self._flags.append(_Flag(int(self.lines[i]), len(self._flags), column, reason(i)))

    def int_column(self, column: str, raw: Any, *, lo: int = 1, hi: int = MAX_TOKENS,
                   default: int | None = None) -> np.ndarray:
        """Validate an integer column; returns int64 values (0 where the row is bad).

        With a `default`, missing cells (optional columns) take it instead of being bad.
        """
        if self.json:
            self._json_types(column, raw, int, f"a JSON integer {lo}..{hi}")
        values, shown = self._numeric(column, raw, default)
        ok = np.isfinite(values)
        frac = ok & (values != np.floor(np.where(ok, values, 0)))
        self.flag(column, frac, lambda i: f"not an integer: {shown(i)}")
        out = ok & ~frac & ((values < lo) | (values > hi))
        self.flag(column, out, lambda i: f"{shown(i)} out of range (valid: integer {lo}..{hi})")
        good = ok & ~frac & ~out
        return np.where(good, values, 0).astype(np.int64)

    def float_column(self, column: str, raw: Any, *, lo: float, hi: float = np.inf,
                     unit: str = "", default: float | None = None) -> np.ndarray:
        """Validate a finite float column within [lo, hi]; returns float64 (0 where the row is bad).

        With a `default`, missing cells take it (it may be NaN, meaning 'none', and is not range-checked).
        """
        if self.json:
            self._json_types(column, raw, (int, float),
                             f"a JSON number {lo:g}..{hi:g}" if np.isfinite(hi) else f"a JSON number >= {lo:g}")
        values, shown = self._numeric(column, raw, default)
        if default is not None and default != default:
            skip = np.isnan(values)
            values = np.where(skip, 0.0, values)
        ok = np.isfinite(values)
        out = ok & ((values < lo) | (values > hi))
        rng = f"{lo:g}..{hi:g}" if np.isfinite(hi) else f">= {lo:g}"
        self.flag(column, out, lambda i: f"{shown(i)} out of range (valid: {rng}{unit})")
        result = np.where(ok & ~out, values, 0.0)
        if default is not None and default != default:
            result[skip] = np.nan
        return result

    def _json_types(self, column: str, raw: Any, ok: type | tuple[type, ...], valid: str) -> None:
        """Flag JSON cells whose type is not `ok` (None is 'missing', judged later; bools are bad)."""
        if isinstance(raw, np.ndarray) and (raw.dtype.kind in "iu" or (ok is not int and raw.dtype.kind == "f")):
            return  # a column pyarrow parsed as that type: every cell is a JSON number of the kind
        cells = raw.tolist() if isinstance(raw, np.ndarray) else raw
        oks = ok if isinstance(ok, tuple) else (ok,)
        # None is 'missing' and a boolean 'not a number', both judged by _numeric
        bad = np.fromiter((v is not None and type(v) not in oks and type(v) is not bool for v in cells),
                          dtype=bool, count=len(cells))
        if not bad.any():
            return
        names = {str: "a JSON string", float: "a JSON float", list: "a JSON array", dict: "a JSON object"}

        def reason(i: int) -> str:
            v = cells[i]
            hint = "; drop the quotes" if type(v) is str else ""
            return f"{v!r} is {names.get(type(v), type(v).__name__)} (valid: {valid}{hint})"[:200]

        self.flag(column, bad, reason)

    def _numeric(self, column: str, raw: Any, default: float | None = None) -> tuple[np.ndarray, Callable[[int], str]]:
        """Coerce to float64, flagging missing (unless defaulted), non-numeric and infinite values."""
        arr = _as_array(raw)
        if arr.dtype.kind in "iuf":
            values = arr.astype(np.float64)
            missing = np.isnan(values)
            nonnum = np.zeros(len(arr), dtype=bool)
        else:
            # pandas may hand out read-only views (copy-on-write), hence the explicit copies
            series = pd.Series(arr, dtype=object)
            blank = series.map(lambda v: isinstance(v, str) and not v.strip()).to_numpy(dtype=bool, copy=True)
            missing = series.isna().to_numpy(dtype=bool, copy=True) | blank
            is_bool = series.map(lambda v: isinstance(v, (bool, np.bool_))).to_numpy(dtype=bool, copy=True)
            numeric = pd.to_numeric(series.where(~is_bool, None), errors="coerce")
            values = numeric.to_numpy(dtype=np.float64, na_value=np.nan, copy=True)
            nonnum = (np.isnan(values) & ~missing) | is_bool
            values[nonnum] = np.nan

        def shown(i: int) -> str:
            return repr(arr[i].item() if hasattr(arr[i], "item") else arr[i])

        if default is None:
            self.flag(column, missing, lambda i: "missing value (or NaN)")
        else:
            values[missing] = default
        self.flag(column, nonnum, lambda i: f"not a number: {shown(i)}")
        inf = np.isinf(values)
        self.flag(column, inf, lambda i: f"not finite: {shown(i)}")
        return values, shown

    def hash_column(self, column: str, raw: Sequence[Any], *, text: bool = False) -> list[tuple[int, ...]]:
        """Validate a column of prefix-hash lists: JSON lists of ints, or (text=True, CSV) cells like
        '0 1 2', '0;1;2' or '[0, 1, 2]'. A missing value means no ids."""
        if not text and _all_int_lists(raw):  # the common JSON case, checked in bulk
            return [() if v is None else tuple(v) for v in raw]
        if text:
            try:
                parsed, bad = _text_ids(raw)
            except (pa.ArrowException, ValueError, TypeError):  # e.g. an id beyond int64: slow path
                pass
            else:
                self.flag(column, bad, lambda i: f"not a list of integer ids: {raw[i]!r}"[:200])
                return parsed
        out: list[tuple[int, ...]] = []
        append = out.append
        bad_rows: list[int] = []
        match, split = _IDS_TEXT.fullmatch, _ID_SPLIT.split
        for i, v in enumerate(raw):  # one pass of cheap per-cell work: this runs once per request
            if v is None or (text and type(v) is float and v != v):  # an empty CSV cell reads as NaN
                append(())
                continue
            if text and type(v) is str:
                m = match(v)
                if m is not None:
                    inner = m.group(2)
                    append(tuple(map(int, split(inner))) if inner else ())
                    continue
            elif type(v) is list and all(type(x) is int for x in v):
                append(tuple(v))
                continue
            bad_rows.append(i)
            append(())
        if bad_rows:
            mask = np.zeros(len(raw), dtype=bool)
            mask[bad_rows] = True
            self.flag(column, mask, lambda i: f"not a list of integer ids: {raw[i]!r}"[:200])
        return out

    def check_order(self, column: str, times: np.ndarray, shown: Callable[[int], str]) -> None:
        """Flag rows whose time is earlier than the latest time on an earlier good row."""
        idx = np.flatnonzero(~self.bad)
        if len(idx) < 2:
            return
        t = times[idx]
        latest = np.maximum.accumulate(t)
        back = np.zeros(len(idx), dtype=bool)
        back[1:] = t[1:] < latest[:-1]
        if not back.any():
            return
        mask = np.zeros(len(times), dtype=bool)
        mask[idx[back]] = True
        pos = {int(k): j for j, k in enumerate(idx.tolist())}

        def reason(i: int) -> str:
            j = pos[i]
            prev = int(idx[np.flatnonzero(t[:j] == latest[j - 1])[-1]])
            return (f"time goes backwards: {shown(i)} is earlier than {shown(prev)} on line "
                    f"{int(self.lines[prev])}; rows must be in arrival order")
        self.flag(column, mask, reason)

    def finish(self) -> np.ndarray:
        """Raise for the earliest bad line unless skipping; return the boolean mask of good rows."""
        if self._flags and not self.skip_bad:
            first = min(self._flags, key=lambda f: (f.line, f.seq))
            raise TraceError(self.file, first.line, first.column, first.msg)
        return ~self.bad

    @property
    def examples(self) -> list[str]:
        """Up to MAX_EXAMPLES bad-row messages, earliest line first."""
        flags = sorted(self._flags, key=lambda f: (f.line, f.seq))[:MAX_EXAMPLES]
        return [str(TraceError(self.file, f.line, f.column, f.msg)) for f in flags]

    def stats(self) -> dict[str, Any]:
        """Skipped-row counts for the load report."""
        return {"skipped_rows": int(self.bad.sum()), "skipped_by_column": dict(self.counts),
                "skipped_examples": self.examples}


def _as_array(raw: Any) -> np.ndarray:
    """A 1-D array of the raw cells: numeric dtype when clean, else object (never a 2-D array)."""
    if isinstance(raw, pd.Series):
        return raw.to_numpy()
    if isinstance(raw, np.ndarray) and raw.ndim == 1:
        return raw
    if any(type(v) is bool for v in raw):  # numpy would silently turn JSON true/false into 1/0
        return np.fromiter(raw, dtype=object, count=len(raw))
    try:
        arr = np.asarray(raw)
    except (ValueError, OverflowError):  # nested lists or ints too large for int64
        arr = np.empty(0)
    if arr.ndim == 1 and len(arr) == len(raw):
        return arr
    return np.fromiter(raw, dtype=object, count=len(raw))


def _all_int_lists(raw: Sequence[Any]) -> bool:
    """True if every cell is None or a list holding only ints (not bools)."""
    if not all(v is None or type(v) is list for v in raw):
        return False
    return set(map(type, chain.from_iterable(v for v in raw if v is not None))) <= {int}


_IDS = r"-?[0-9]+(?:[\s,;|]+-?[0-9]+)*"
_IDS_CELL = rf"^\s*(?:\[\s*(?:{_IDS})?\s*\]|(?:{_IDS})?)\s*$"  # RE2 syntax (no conditionals)


def _text_ids(cells: Sequence[Any]) -> tuple[list[tuple[int, ...]], np.ndarray]:
    """Vectorized (pyarrow) parse of CSV id cells: (tuples, bad mask). Missing cells give ()."""
    num = len(cells)
    arr = pa.array(list(cells) if isinstance(cells, pd.Series) else cells, type=pa.string(), from_pandas=True)
    null = np.asarray(arr.is_null(), dtype=bool)
    ok = pc.fill_null(pc.match_substring_regex(arr, _IDS_CELL), True).to_numpy(zero_copy_only=False)
    ok = np.asarray(ok, dtype=bool) | null
    parts = pc.split_pattern_regex(pc.fill_null(arr, ""), r"[^0-9-]+")
    row = np.repeat(np.arange(num), np.asarray(pc.list_value_length(parts), dtype=np.int64))
    flat = pc.list_flatten(parts)
    keep = (np.asarray(pc.utf8_length(flat)) > 0) & ok[row]
    values = pc.cast(flat.filter(pa.array(keep)), pa.int64()).to_numpy().tolist()
    offsets = np.concatenate(([0], np.cumsum(np.bincount(row[keep], minlength=num)))).tolist()
    return [tuple(values[a:b]) for a, b in zip(offsets[:-1], offsets[1:], strict=True)], ~ok


_ID_SPLIT = re.compile(r"[\s,;|]+")
# optional brackets around integers separated by whitespace, ',', ';' or '|'
_IDS_TEXT = re.compile(r"\s*(\[)?\s*(-?[0-9]+(?:[\s,;|]+-?[0-9]+)*)?\s*(?(1)\])\s*")
