"""Simulation records -> pandas DataFrames.

One DataFrame per record kind (requests, steps, memory and allocator-monitor samples) built from the `sim.records.results`
dataclasses by their fields, so a new record field shows up as a new column without code here.
Also the derived tables every report needs: the summary table (SUMMARY_KEYS first), the
time-weighted memory breakdown, and per-run extras (step-time and latency percentiles).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import fields
from typing import Any

import numpy as np
import pandas as pd

from analysis.rejections import rejection_kinds
from sim.records.results import (
    MEMORY_CATEGORIES,
    SUMMARY_KEYS,
    MemorySample,
    MonitorSample,
    RequestRecord,
    SimResult,
    StepRecord,
)

#: Summary columns in the order written to summary.csv; percent columns of the memory breakdown.
BREAKDOWN_PCT_COLUMNS: tuple[str, ...] = tuple(f"{c}_pct" for c in MEMORY_CATEGORIES)


def records_frame(records: Sequence[Any], record_type: type) -> pd.DataFrame:
    """A DataFrame with one row per record and one column per dataclass field of `record_type`.

    An empty sequence still gives every column (so downstream code never meets a missing column).
    """
    names = [f.name for f in fields(record_type)]
    if not records:
        return pd.DataFrame({n: pd.Series(dtype=object) for n in names})
    # getattr per field is faster than asdict (no deep copy) and works for slotted dataclasses.
    data = {n: [getattr(r, n) for r in records] for n in names}
    return pd.DataFrame(data, columns=names)


def _system_frame(result: SimResult, records: Sequence[Any], cls: type) -> pd.DataFrame:
    """One record list of a run as a DataFrame (columns: `cls` fields), with `system` first."""
    df = records_frame(records, cls)
    df.insert(0, "system", result.system)
    return df


def requests_frame(result: SimResult) -> pd.DataFrame:
    """Per-request records of a run (columns: RequestRecord fields, plus `system`)."""
    return _system_frame(result, result.requests, RequestRecord)


def steps_frame(result: SimResult) -> pd.DataFrame:
    """Per-step records of a run (columns: StepRecord fields, plus `system`)."""
    return _system_frame(result, result.steps, StepRecord)


def memory_frame(result: SimResult) -> pd.DataFrame:
    """Memory samples of a run (columns: MemorySample fields, plus `system`)."""
    return _system_frame(result, result.memory, MemorySample)


def monitor_frame(result: SimResult) -> pd.DataFrame:
    """Allocator-monitor samples of a run (columns: MonitorSample fields, plus `system`)."""
    return _system_frame(result, result.monitor, MonitorSample)


def time_weighted_breakdown(memory: pd.DataFrame, end_s: float | None = None) -> dict[str, float]:
    """Time-weighted mean share (percent of capacity) of each memory category.

    Each sample holds from its `time_s` until the next sample; the last one until `end_s`
    (default: the last sample gets the median interval, or weight 1 if there is only one).
    Returns `{category}_pct` keys; they add up to 100 when every sample's categories sum to capacity.
    """
    if memory.empty:
        return {k: math.nan for k in BREAKDOWN_PCT_COLUMNS}
    t = memory["time_s"].to_numpy(dtype=float)
    cap = memory["capacity"].to_numpy(dtype=float)
    order = np.argsort(t, kind="stable")
    t, cap = t[order], cap[order]
    dt = np.diff(t)
    default_last = float(np.median(dt)) if dt.size else 1.0
    last = end_s - t[-1] if end_s is not None and end_s >= t[-1] else default_last
    w = np.append(dt, last)
    if w.sum() <= 0:
        w = np.ones_like(t)
    out: dict[str, float] = {}
    with np.errstate(invalid="ignore", divide="ignore"):
        for c in MEMORY_CATEGORIES:
            share = memory[c].to_numpy(dtype=float)[order] / cap
            out[f"{c}_pct"] = float(100.0 * np.average(share, weights=w))
    return out


def run_extras(result: SimResult) -> dict[str, float]:
    """Extra per-run figures not in SUMMARY_KEYS: step-time mean/p50, latency percentiles, counts.

    Computed from the records so they are consistent with the per-request and per-step files.
    """
    steps = result.steps
    reqs = [r for r in result.requests if r.status == "finished"]
    dur = np.array([s.duration_s for s in steps], dtype=float)
    norm = np.array([r.normalized_latency_s_per_token for r in reqs], dtype=float)
    e2e = np.array([r.e2e_s for r in reqs], dtype=float)
    ttft = np.array([r.ttft_s for r in reqs], dtype=float)

    def pct(a: np.ndarray, q: float) -> float:
        a = a[np.isfinite(a)]
        return float(np.percentile(a, q)) if a.size else math.nan

    def mean(a: np.ndarray) -> float:
        a = a[np.isfinite(a)]
        return float(a.mean()) if a.size else math.nan

    statuses = [r.status for r in result.requests]
    return {
        "num_steps": float(len(steps)),
        "mean_step_time_s": mean(dur),
        "p50_step_time_s": pct(dur, 50),
        "p50_normalized_latency_s_per_token": pct(norm, 50),
        "p99_normalized_latency_s_per_token": pct(norm, 99),
        "p50_e2e_s": pct(e2e, 50),
        "p99_e2e_s": pct(e2e, 99),
        "p99_ttft_s": pct(ttft, 99),
        "num_finished": float(statuses.count("finished")),
        "num_rejected": float(statuses.count("rejected")),
        "num_aborted": float(statuses.count("aborted")),
        **{k: float(v) for k, v in rejection_kinds(result.requests).items()},
    }


def summary_row(result: SimResult, extras: bool = True) -> dict[str, Any]:
    """One summary.csv row for a run: the engine's summary (SUMMARY_KEYS first), plus extras.

    Missing SUMMARY_KEYS are filled from the records where possible (memory breakdown) and NaN
    otherwise, so the column set is always complete.
    """
    row: dict[str, Any] = {k: result.summary.get(k, math.nan) for k in SUMMARY_KEYS}
    row["system"] = result.summary.get("system", result.system)
    if any(_isnan(row[k]) for k in BREAKDOWN_PCT_COLUMNS) and result.memory:
        row.update(time_weighted_breakdown(memory_frame(result)))
    for k, v in result.summary.items():
        if k not in row:
            row[k] = v
    if extras:
        for k, v in run_extras(result).items():
            row.setdefault(k, v)
    return row


def summary_frame(rows: Iterable[Mapping[str, Any] | SimResult]) -> pd.DataFrame:
    """A summary table from run results or row dicts: SUMMARY_KEYS first, extra columns after."""
    dicts = [summary_row(r) if isinstance(r, SimResult) else dict(r) for r in rows]
    df = pd.DataFrame(dicts)
    for k in SUMMARY_KEYS:
        if k not in df.columns:
            df[k] = math.nan
    rest = [c for c in df.columns if c not in SUMMARY_KEYS]
    return df[list(SUMMARY_KEYS) + rest]


def breakdown_table(summary: pd.DataFrame) -> pd.DataFrame:
    """The vLLM paper's Fig. 2 as a table: one row per system, the six memory shares in percent."""
    cols = ["system", *BREAKDOWN_PCT_COLUMNS]
    present = [c for c in cols if c in summary.columns]
    return summary[present].reset_index(drop=True)


def latency_cdf(requests: pd.DataFrame, column: str = "normalized_latency_s_per_token") -> pd.DataFrame:
    """Empirical CDF of a latency column over finished requests: columns `system`, `value`, `cdf`."""
    parts = []
    done = requests[requests["status"] == "finished"] if "status" in requests else requests
    for system, g in done.groupby("system", sort=False):
        v = np.sort(g[column].to_numpy(dtype=float))
        v = v[np.isfinite(v)]
        if v.size == 0:
            continue
        parts.append(pd.DataFrame({"system": system, "value": v, "cdf": np.arange(1, v.size + 1) / v.size}))
    if not parts:
        return pd.DataFrame({"system": pd.Series(dtype=object), "value": [], "cdf": []})
    return pd.concat(parts, ignore_index=True)


def _isnan(v: Any) -> bool:
    return isinstance(v, float) and math.isnan(v)
