"""Streaming a run's records to disk: the RecordSink that writes Parquet (and CSV) in chunks.

`RecordFileWriter` receives the chunks a streaming run hands over (sim.records.stream) and appends
each to `runs/<system>/{requests,steps,memory}.parquet` (+ `.csv` on request) through pyarrow's
incremental writers, so a run of any length never holds its records in memory. The files have
the same columns as the ones `results_io.save_run` writes (the record fields plus `system`), so
`pagesim report` and `results_io.read_runs` read them alike. A kind that received nothing still
gets a file with its columns and no rows. Files are written under temporary names and renamed
when the run closes, so an interrupted run leaves no half-written table under a final name.
"""

from __future__ import annotations

import os
from dataclasses import fields
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from sim.records.results import MemorySample, RequestRecord, StepRecord

_KINDS: dict[str, type] = {"requests": RequestRecord, "steps": StepRecord, "memory": MemorySample}
_TYPES = {"float": pa.float64(), "int": pa.int64(), "str": pa.string(), "bool": pa.bool_()}


def _schema(cls: type, req_id: pa.DataType) -> pa.Schema:
    cols = [pa.field("system", pa.string())]
    for f in fields(cls):
        t = req_id if f.name == "req_id" else _TYPES.get(str(f.type), pa.float64())
        cols.append(pa.field(f.name, t))
    return pa.schema(cols)


class _KindWriter:
    """One record kind's Parquet (and CSV) writer, opened at the first chunk."""

    def __init__(self, stem: Path, cls: type, system: str, csv: bool) -> None:
        self.stem, self.cls, self.system, self.csv = stem, cls, system, csv
        self.names = [f.name for f in fields(cls)]
        self.rows = 0
        self._pq: pq.ParquetWriter | None = None
        self._csv: pa_csv.CSVWriter | None = None
        self._schema: pa.Schema | None = None
        self._tmp = [stem.with_name(f".{stem.name}.parquet.tmp{os.getpid()}"),
                     stem.with_name(f".{stem.name}.csv.tmp{os.getpid()}")]

    def _open(self, req_id: pa.DataType) -> None:
        self._schema = _schema(self.cls, req_id)
        self._pq = pq.ParquetWriter(self._tmp[0], self._schema)
        if self.csv:
            self._csv = pa_csv.CSVWriter(self._tmp[1], self._schema)

    def write(self, records: list[Any]) -> None:
        if not records:
            return
        data: dict[str, Any] = {n: [getattr(r, n) for r in records] for n in self.names}
        if self._schema is None:
            ids = data.get("req_id")
            self._open(pa.string() if ids is not None and any(type(i) is not int for i in ids) else pa.int64())
        assert self._schema is not None and self._pq is not None
        if "req_id" in data and self._schema.field("req_id").type == pa.string():
            data["req_id"] = [str(i) for i in data["req_id"]]
        elif "req_id" in data and any(type(i) is not int for i in data["req_id"]):
            raise ValueError(f"{self.stem}: request ids mix integers and other types across chunks "
                             "(valid: all integer or all string ids)")
        data["system"] = [self.system] * len(records)
        table = pa.Table.from_pydict(data, schema=self._schema)
        self._pq.write_table(table)
        if self._csv is not None:
            self._csv.write_table(table)
        self.rows += len(records)

    def close(self, keep: bool) -> None:
        if self._schema is None:
            self._open(pa.int64())
        assert self._pq is not None
        self._pq.close()
        if self._csv is not None:
            self._csv.close()
        for tmp, ext in zip(self._tmp, (".parquet", ".csv"), strict=True):
            if not tmp.exists():
                continue
            if keep and (ext == ".parquet" or self.csv):
                os.replace(tmp, self.stem.with_suffix(ext))
            else:
                tmp.unlink()


class RecordFileWriter:
    """A RecordSink writing one run's records under `run_dir` (created), chunk by chunk.

    Use as a context manager (or call `close`): the files appear under their final names when the
    run completes; after an exception they are removed.
    """

    def __init__(self, run_dir: Path, system: str, *, csv: bool = False) -> None:
        run_dir.mkdir(parents=True, exist_ok=True)
        self.run_dir = run_dir
        self._w = {k: _KindWriter(run_dir / k, cls, system, csv) for k, cls in _KINDS.items()}

    def requests(self, records: list[RequestRecord]) -> None:
        """Append a chunk of request records."""
        self._w["requests"].write(records)

    def steps(self, records: list[StepRecord]) -> None:
        """Append a chunk of step records."""
        self._w["steps"].write(records)

    def memory(self, samples: list[MemorySample]) -> None:
        """Append a chunk of memory samples."""
        self._w["memory"].write(samples)

    def rows(self, kind: str) -> int:
        """Records written so far of one kind."""
        return self._w[kind].rows

    def close(self, keep: bool = True) -> None:
        """Finish the files (under their final names if `keep`, else remove them)."""
        for w in self._w.values():
            w.close(keep)

    def __enter__(self) -> RecordFileWriter:
        return self

    def __exit__(self, exc_type: object, *_: object) -> None:
        self.close(keep=exc_type is None)
