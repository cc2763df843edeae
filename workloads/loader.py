"""One entry point for every trace format: sniff the format, read, validate, apply options.

`load_trace(path, format=None, ...)` returns a `LoadResult`: the requests (as RequestSpecs, built
on first use, and as columns), a pandas view, and `stats` saying what was read, skipped, clipped
or dropped. `TRACE_FORMATS` lists the formats by name for the CLI (`--trace PATH --format azure`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from sim.request import RequestSpec
from workloads import azure, generic, lengths_table, mooncake
from workloads.arrivals import ArrivalProcess, make_arrivals
from workloads.columns import TraceColumns
from workloads.errors import TraceError, WorkloadError
from workloads.frames import to_frame
from workloads.sources import ReadOptions, csv_header, first_json_object, read_bytes
from workloads.transforms import TraceOptions, apply_options

Reader = Callable[[str | Path, ReadOptions], tuple[TraceColumns, dict[str, Any]]]


@dataclass(frozen=True, slots=True)
class TraceFormat:
    """A trace format: its reader, a one-line description, and whether rows carry arrival times."""

    name: str
    reader: Reader
    description: str
    timestamps: bool


TRACE_FORMATS: dict[str, TraceFormat] = {
    "azure": TraceFormat("azure", azure.read_azure,
                         "Azure LLM inference CSV: TIMESTAMP, ContextTokens, GeneratedTokens", True),
    "mooncake": TraceFormat("mooncake", mooncake.read_mooncake,
                            "Mooncake JSONL: timestamp (ms), input_length, output_length, hash_ids", True),
    "sharegpt": TraceFormat("sharegpt", lengths_table.read_lengths_table,
                            "length table CSV: num_prefill_tokens, num_decode_tokens (no timestamps)", False),
    "generic": TraceFormat("generic", generic.read_generic,
                           "generic CSV/JSONL: arrival_time (s), prompt_len, output_len, optional fields", True),
}


@dataclass(slots=True)
class LoadResult:
    """A loaded trace. `specs` are built from `columns` on first access (costly for millions of rows)."""

    columns: TraceColumns
    stats: dict[str, Any]
    _specs: list[RequestSpec] | None = field(default=None, repr=False)

    @property
    def specs(self) -> list[RequestSpec]:
        """The requests in arrival order."""
        if self._specs is None:
            self._specs = self.columns.to_specs()
        return self._specs

    def iter_specs(self) -> Iterator[RequestSpec]:
        """The requests one at a time without keeping them (see TraceColumns.iter_specs)."""
        return self.columns.iter_specs() if self._specs is None else iter(self._specs)

    def frame(self) -> pd.DataFrame:
        """One row per request (workloads.frames.to_frame), with each request's source line."""
        return to_frame(self.columns)

    def __len__(self) -> int:
        return len(self.columns)


def sniff_format(path: str | Path) -> str:
    """The format name from the file's extension and header / first record."""
    data = read_bytes(path)
    name = Path(path).name.lower().removesuffix(".gz")
    obj = first_json_object(data)
    if obj is not None:
        keys = set(obj)
        if {"input_length", "output_length"} <= keys or "hash_ids" in keys:
            return "mooncake"
        if {"prompt_len", "output_len"} <= keys:
            return "generic"
        raise TraceError(path, None, None, f"JSON Lines with keys {sorted(keys)} match no known format "
                         f"(mooncake: timestamp, input_length, output_length, hash_ids; generic: "
                         f"{', '.join(generic.COLUMNS)}); pass format=")
    if name.endswith((".json", ".jsonl", ".ndjson")):
        raise TraceError(path, None, None, "a .json/.jsonl file whose first line is not a JSON object")
    header = set(csv_header(data))
    if set(azure.COLUMNS) <= header:
        return "azure"
    if {lengths_table.PROMPT, lengths_table.OUTPUT} <= header:
        return "sharegpt"
    if set(generic.REQUIRED) <= header:
        return "generic"
    raise TraceError(path, 1, None, f"unknown trace format: header {sorted(header)[:8]} matches none of "
                     + "; ".join(f"{f.name} ({f.description})" for f in TRACE_FORMATS.values())
                     + "; pass format=")


def load_trace(path: str | Path, format: str | None = None, *, skip_bad_rows: bool = False,
               sort: bool = False, window: tuple[float, float] | None = None, first_n: int | None = None,
               target_rate: float | None = None, time_scale: float | None = None,
               max_model_len: int | None = None, too_long: str = "clip",
               arrival: str | ArrivalProcess = "poisson", rate: float | None = None, cv: float = 1.0,
               rng: np.random.Generator | None = None, shuffle: bool = False,
               prefix_unit: int | None = None, hash_unit: int = 512,
               allow_extra_columns: bool = False) -> LoadResult:
    """Load a trace file into requests.

    format: one of TRACE_FORMATS, or None to sniff it from the file.
    skip_bad_rows: drop malformed rows and count them (stats['skipped_rows']) instead of raising.
    sort: sort by arrival time instead of rejecting rows that go backwards.
    window, first_n, target_rate, time_scale, max_model_len, too_long: see transforms.TraceOptions.
    arrival, rate, cv, rng, shuffle: arrival times for files without timestamps (length tables):
      a process name (workloads.arrivals) or object, its rate (req/s) and cv, and the generator.
    prefix_unit: tokens per prefix id for generic files without a prefix_unit column.
    hash_unit: tokens per Mooncake hash id (512 in the FAST'25 traces).
    """
    if format is None:
        format = sniff_format(path)
    if format not in TRACE_FORMATS:
        raise WorkloadError(f"trace format '{format}' unknown (valid: {', '.join(TRACE_FORMATS)})")
    trace_opts = TraceOptions(window=window, first_n=first_n, target_rate=target_rate, time_scale=time_scale,
                              max_model_len=max_model_len, too_long=too_long)
    if prefix_unit is not None and (not isinstance(prefix_unit, int) or prefix_unit < 1):
        raise WorkloadError(f"prefix_unit = {prefix_unit!r} out of range (valid: integer >= 1)")
    if not isinstance(hash_unit, int) or hash_unit < 1:
        raise WorkloadError(f"hash_unit = {hash_unit!r} out of range (valid: integer >= 1)")
    process = arrival if not isinstance(arrival, str) else (
        make_arrivals(arrival, rate, cv) if rate is not None or arrival == "burst" else None)
    read_opts = ReadOptions(skip_bad_rows=skip_bad_rows, sort=sort, prefix_unit=prefix_unit,
                            hash_unit=hash_unit, allow_extra_columns=allow_extra_columns,
                            arrival=process, rng=rng, shuffle=shuffle)
    cols, stats = TRACE_FORMATS[format].reader(path, read_opts)
    if "arrival" not in stats and (rate is not None or shuffle or not isinstance(arrival, str)
                                   or arrival != "poisson"):
        raise WorkloadError(f"{path}: the file has arrival times, so arrival/rate/shuffle do not apply; "
                            "use target_rate= or time_scale= to change its rate")
    stats = {"path": str(path), **stats, "rows_valid": len(cols)}
    cols, more = apply_options(cols, trace_opts)
    stats.update(more)
    stats["rows_loaded"] = len(cols)
    if len(cols) == 0:
        raise WorkloadError(f"{path}: no requests left after the options ({more})")
    return LoadResult(cols, stats)
