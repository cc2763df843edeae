"""The results directory: what a command writes and what `pagesim report` reads back.

Layout (every path relative to the directory given by `--out`):
  config.toml, config.json      effective experiment configuration (reproduce with `run --config`)
  summary.csv, summary.parquet  one row per system or sweep point (SUMMARY_KEYS first)
  runs/<system>/                requests/steps/memory/monitor .parquet (+ .csv on request), summary.json, ops.jsonl
  metrics.prom                  Prometheus text exposition of the run totals (`--metrics-format prometheus`)
  points.jsonl                  sweeps: one JSON line per finished point, appended and fsynced at once
  plots/*.png, plots/*.svg      figures;  report.html, report.md  the report
Writes that replace a file go through a temporary file and an atomic rename, so an interrupted
command never leaves a half-written summary.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from analysis.frames import (
    memory_frame,
    monitor_frame,
    requests_frame,
    steps_frame,
    summary_frame,
    summary_row,
)
from sim.records.results import SimResult

SUMMARY_CSV = "summary.csv"
SUMMARY_PARQUET = "summary.parquet"
CONFIG_TOML = "config.toml"
CONFIG_JSON = "config.json"
POINTS_FILE = "points.jsonl"
RUNS_DIR = "runs"
PLOTS_DIR = "plots"
RECORD_KINDS = ("requests", "steps", "memory", "monitor")


#: What commands write at the top of a results directory: a re-used --out is cleared of these only.
OUTPUT_NAMES: tuple[str, ...] = (SUMMARY_CSV, SUMMARY_PARQUET, CONFIG_TOML, CONFIG_JSON, POINTS_FILE, "metrics.prom",
                                 "report.html", "report.md", "replicas.csv", RUNS_DIR, PLOTS_DIR)


def prepare_out_dir(out_dir: Path, *, overwrite: bool = False, resume: bool = False) -> Path:
    """Make `out_dir` ready for a new run so that no earlier run's records mix into it.

    A missing or empty directory (or one holding only other files) is used as is. One that holds
    pagesim results is refused (ValueError naming the files and the way out) unless `overwrite`
    (the known outputs, OUTPUT_NAMES, are deleted first; other files stay) or `resume` of a sweep
    (its points log is kept and continued).
    """
    found = check_reuse(out_dir, overwrite=overwrite, resume=resume)
    if found and resume and (out_dir / POINTS_FILE).exists():
        return out_dir
    for n in found:
        p = out_dir / n
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        else:
            p.unlink()
    out_dir.mkdir(parents=True, exist_ok=True)
    return out_dir


def check_reuse(out_dir: Path, *, overwrite: bool = False, resume: bool = False) -> list[str]:
    """The check of prepare_out_dir without changing anything (a CLI runs it before any work):
    ValueError if `out_dir` may not be used; else the known outputs it holds (OUTPUT_NAMES)."""
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"--out {out_dir}: exists and is not a directory (valid: a directory path)")
    found = [n for n in OUTPUT_NAMES if (out_dir / n).exists()]
    if found and resume and (out_dir / POINTS_FILE).exists():
        return found
    if found and not overwrite:
        if resume:
            raise ValueError(f"--out {out_dir}: holds results ({', '.join(found)}) but no sweep to resume "
                             f"(no {POINTS_FILE}); add --overwrite to replace them or choose another --out")
        raise ValueError(f"--out {out_dir}: already holds results ({', '.join(found)}); add --overwrite to "
                         "replace them" + (", --resume to continue that sweep" if POINTS_FILE in found else "")
                         + " or choose another --out")
    return found


def write_run_summary(run_dir: Path, result: SimResult) -> None:
    """A run's summary.json (what save_run writes beside the records)."""
    atomic_write_text(run_dir / "summary.json", to_json(summary_row(result)) + "\n")


def slug(name: str) -> str:
    """A file-system-safe directory name for a system label ("paged(B=16)" -> "paged_B_16")."""
    s = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_.")
    return s or "run"


def check_out_dir(path: Path) -> None:
    """Make sure `path` can be a results directory before anything runs: created if missing, writable.

    Raises ValueError naming the path: an existing file, a parent that is a file, or no permission.
    """
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise ValueError(f"--out {p}: is an existing file (valid: a directory, new or existing)")
    try:
        p.mkdir(parents=True, exist_ok=True)
        probe = p / f".pagesim-write-test-{os.getpid()}"
        probe.write_text("", encoding="utf-8")
        probe.unlink()
    except OSError as exc:
        why = exc.strerror or type(exc).__name__
        raise ValueError(f"--out {p}: cannot write there ({why.lower()}; valid: a writable directory)") from None


def atomic_write_text(path: Path, text: str) -> None:
    """Write `text` to `path` through a temporary file and an atomic rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _jsonable(v: Any) -> Any:
    """Make numpy scalars, paths and non-finite floats JSON-safe (NaN -> null)."""
    if isinstance(v, Mapping):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, Path):
        return str(v)
    if hasattr(v, "item") and callable(v.item):  # numpy scalar
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def to_json(data: Any) -> str:
    """Compact-but-readable JSON for configs and point records (NaN written as null)."""
    return json.dumps(_jsonable(data), indent=2, sort_keys=False)


# --------------------------------------------------------------------------- TOML (write side)
# tomllib only reads; the effective config is small and flat enough that a tiny writer is clearer
# than a dependency. None values are left out (TOML has no null): loaders treat absent as default.

def _toml_key(k: str) -> str:
    return k if re.fullmatch(r"[A-Za-z0-9_-]+", k) else json.dumps(k)


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return repr(v)
    if isinstance(v, (str, Path)):
        return json.dumps(str(v))  # JSON string escapes are valid TOML basic-string escapes
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v if x is not None) + "]"
    raise TypeError(f"cannot write {type(v).__name__} value {v!r} to TOML")


def to_toml(data: Mapping[str, Any]) -> str:
    """Serialize a nested mapping of scalars/lists to TOML (tables for nested mappings)."""
    lines: list[str] = []

    def emit(table: Mapping[str, Any], prefix: str) -> None:
        scalars = {k: v for k, v in table.items() if not isinstance(v, Mapping) and v is not None}
        subs = {k: v for k, v in table.items() if isinstance(v, Mapping)}
        if prefix and (scalars or not subs):
            lines.append(f"\n[{prefix}]")
        for k, v in scalars.items():
            lines.append(f"{_toml_key(k)} = {_toml_value(_jsonable(v) if not isinstance(v, float) else v)}")
        for k, v in subs.items():
            emit(v, f"{prefix}.{_toml_key(k)}" if prefix else _toml_key(k))

    emit(data, "")
    return "\n".join(lines).lstrip("\n") + "\n"


def write_config(out_dir: Path, config: Mapping[str, Any]) -> None:
    """Save the effective configuration as config.toml (re-runnable) and config.json (exact)."""
    atomic_write_text(out_dir / CONFIG_TOML, to_toml(config))
    atomic_write_text(out_dir / CONFIG_JSON, to_json(config) + "\n")


def read_config(out_dir: Path) -> dict[str, Any]:
    """The saved effective configuration (config.json), or {} if there is none."""
    p = out_dir / CONFIG_JSON
    return json.loads(p.read_text(encoding="utf-8")) if p.is_file() else {}


# --------------------------------------------------------------------------- tables
def write_table(df: pd.DataFrame, path_stem: Path, csv: bool = False) -> list[Path]:
    """Write `df` as `<stem>.parquet` (and `<stem>.csv` if asked); returns the paths written."""
    path_stem.parent.mkdir(parents=True, exist_ok=True)
    out = [path_stem.with_suffix(".parquet")]
    tmp = out[0].with_name(f".{out[0].name}.tmp{os.getpid()}")
    _parquet_safe(df).to_parquet(tmp, index=False)
    os.replace(tmp, out[0])
    if csv:
        out.append(path_stem.with_suffix(".csv"))
        atomic_write_text(out[1], df.to_csv(index=False))
    return out


def _parquet_safe(df: pd.DataFrame) -> pd.DataFrame:
    """Object columns with mixed types (e.g. int and str request ids) become strings for Parquet."""
    df = df.copy()
    for c in df.columns:
        if df[c].dtype == object:
            kinds = {type(x) for x in df[c] if x is not None and not (isinstance(x, float) and math.isnan(x))}
            if len(kinds) > 1 or (kinds and not kinds <= {str, int, float, bool}):
                df[c] = df[c].map(lambda x: x if x is None else str(x))
    return df


def write_summary(out_dir: Path, rows: pd.DataFrame | Iterable[Mapping[str, Any] | SimResult]) -> pd.DataFrame:
    """Write summary.csv (always) and summary.parquet for the given rows; returns the table."""
    df = rows if isinstance(rows, pd.DataFrame) else summary_frame(rows)
    atomic_write_text(out_dir / SUMMARY_CSV, df.to_csv(index=False))
    write_table(df, out_dir / "summary")
    return df


def read_summary(out_dir: Path) -> pd.DataFrame:
    """summary.csv of a results directory (FileNotFoundError naming the path if absent)."""
    p = out_dir / SUMMARY_CSV
    if not p.is_file():
        raise FileNotFoundError(f"{p}: no summary.csv here (is this a pagesim results directory?)")
    return pd.read_csv(p)


def save_run(out_dir: Path, result: SimResult, *, csv: bool = False, name: str | None = None) -> Path:
    """Write one run's records under runs/<name>/ and return that directory."""
    d = out_dir / RUNS_DIR / slug(name or result.system)
    d.mkdir(parents=True, exist_ok=True)
    write_table(requests_frame(result), d / "requests", csv)
    write_table(steps_frame(result), d / "steps", csv)
    write_table(memory_frame(result), d / "memory", csv)
    write_table(monitor_frame(result), d / "monitor", csv)
    write_run_summary(d, result)
    return d


def read_runs(out_dir: Path, kind: str, order: Iterable[str] = ()) -> pd.DataFrame:
    """One record kind ("requests", "steps", "memory", "monitor") of every run under runs/, concatenated.

    Runs named in `order` (system labels, e.g. summary.csv's order) come first, in that order.
    """
    if kind not in RECORD_KINDS:
        raise ValueError(f"record kind {kind!r} unknown (valid: {', '.join(RECORD_KINDS)})")
    rank = {slug(str(s)): i for i, s in enumerate(order)}
    paths = sorted((out_dir / RUNS_DIR).glob(f"*/{kind}.parquet"),
                   key=lambda p: (rank.get(p.parent.name, len(rank)), p.parent.name))
    parts = [pd.read_parquet(p) for p in paths]
    parts = [p for p in parts if not p.empty]
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


# --------------------------------------------------------------------------- sweep points
class PointLog:
    """Append-only JSON-lines log of finished sweep points: the source of truth for `--resume`.

    Invariants: each line is one complete JSON object with a `point_id` and a `status` ("ok" or
    "failed"); a line is flushed and fsynced before `append` returns, so a killed sweep loses at
    most the line being written, and a torn last line is ignored on reading. When a point appears
    twice (a failed point retried), the last line wins.
    """

    def __init__(self, path: Path) -> None:
        self.path = path

    def append(self, record: Mapping[str, Any]) -> None:
        """Append one point record durably."""
        if "point_id" not in record or "status" not in record:
            raise ValueError("point record needs 'point_id' and 'status'")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        line = json.dumps(_jsonable(record), separators=(",", ":")) + "\n"
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())

    def read(self) -> dict[str, dict[str, Any]]:
        """Point id -> its latest record; torn or corrupt lines are skipped."""
        out: dict[str, dict[str, Any]] = {}
        if not self.path.is_file():
            return out
        with open(self.path, encoding="utf-8") as f:
            for line in f:
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    continue  # the line a killed sweep was writing
                if isinstance(rec, dict) and "point_id" in rec and "status" in rec:
                    out[str(rec["point_id"])] = rec
        return out

    def repair(self) -> None:
        """Drop a torn last line so later appends start on a line of their own."""
        if not self.path.is_file():
            return
        data = self.path.read_bytes()
        if data and not data.endswith(b"\n"):
            cut = data.rfind(b"\n") + 1
            with open(self.path, "r+b") as f:
                f.truncate(cut)


@dataclass(slots=True)
class ResultsBundle:
    """Everything `pagesim report` needs from a results directory, loaded as DataFrames."""

    path: Path
    config: dict[str, Any]
    summary: pd.DataFrame
    requests: pd.DataFrame = field(default_factory=pd.DataFrame)
    steps: pd.DataFrame = field(default_factory=pd.DataFrame)
    memory: pd.DataFrame = field(default_factory=pd.DataFrame)
    points: pd.DataFrame = field(default_factory=pd.DataFrame)
    monitor: pd.DataFrame = field(default_factory=pd.DataFrame)


def load_results(out_dir: Path | str) -> ResultsBundle:
    """Load a results directory (FileNotFoundError with the path if it is not one)."""
    d = Path(out_dir)
    if not d.is_dir():
        raise FileNotFoundError(f"{d}: results directory not found")
    summary = read_summary(d)
    # A sweep's summary.csv has one row per grid point with its status (see sweep.points_table).
    points = summary if "point_id" in summary.columns and "status" in summary.columns else pd.DataFrame()
    order = summary["system"].astype(str).tolist() if "system" in summary.columns else []
    return ResultsBundle(
        path=d, config=read_config(d), summary=summary,
        requests=read_runs(d, "requests", order), steps=read_runs(d, "steps", order),
        memory=read_runs(d, "memory", order),
        points=points, monitor=read_runs(d, "monitor", order),
    )

