"""Errors raised by workload loaders and generators.

`TraceError` names the file, line and column of a bad trace row (or just the file for file-level
problems: missing, empty, not text, unknown format). `WorkloadError` is a bad generator or loader
option; its message names the option and the valid range. Both are one-line `ValueError`s so the
CLI can print them and exit with code 2.
"""

from __future__ import annotations

from pathlib import Path


class WorkloadError(ValueError):
    """A bad workload option or configuration value; the message names the option and valid range."""


class TraceError(WorkloadError):
    """A bad trace file or row.

    Attributes:
      file: the trace path as given.
      line: 1-based physical line number in the file (None for file-level errors).
      column: the column / JSON key at fault (None when the whole row or file is at fault).
      msg: what is wrong and what would be valid.
    """

    def __init__(self, file: str | Path, line: int | None, column: str | None, msg: str) -> None:
        self.file = str(file)
        self.line = line
        self.column = column
        self.msg = msg
        super().__init__(str(self))

    def __str__(self) -> str:
        where = self.file
        if self.line is not None:
            where += f":{self.line}"
        if self.column is not None:
            where += f": column '{self.column}'"
        return f"{where}: {self.msg}"

    def __reduce__(self):  # keep picklable (multiprocessing / dask) despite the custom __init__
        return (TraceError, (self.file, self.line, self.column, self.msg))
