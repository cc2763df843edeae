"""Pandas views of workloads: one row per request, plus the summary statistics a trace README quotes.

`to_frame` turns specs (or TraceColumns) into a DataFrame; `summarize` computes row count, span,
mean arrival rate (rows / (last - first)), inter-arrival CV, index of dispersion of 1-second
counts, and length percentiles (pandas linear interpolation), so a loaded trace can be checked
against its documentation.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from sim.request import RequestSpec
from workloads.columns import TraceColumns

FRAME_COLUMNS = ("req_id", "arrival_time", "prompt_len", "output_len", "n", "beam_width", "spec_k",
                 "spec_accept", "prefix_unit", "num_prefix_ids", "prefix_hashes", "cancel_time")


def to_frame(workload: Sequence[RequestSpec] | TraceColumns) -> pd.DataFrame:
    """One row per request with the RequestSpec fields (prefix ids as tuples, their count as a column).

    From TraceColumns the frame also has `line` (source line of each request, 0 if generated).
    """
    if isinstance(workload, TraceColumns):
        c = workload
        data: dict[str, Any] = {
            "req_id": c.req_id, "arrival_time": c.arrival, "prompt_len": c.prompt, "output_len": c.output,
            "n": c.n, "beam_width": c.beam_width, "spec_k": c.spec_k, "spec_accept": c.spec_accept,
            "prefix_unit": c.prefix_unit,
            "num_prefix_ids": np.fromiter((len(h) for h in c.prefix_hashes), np.int64, len(c)),
            "prefix_hashes": pd.Series(c.prefix_hashes, dtype=object),
            "cancel_time": c.cancel_time, "line": c.line,
        }
        return pd.DataFrame(data)
    specs = list(workload)
    frame = pd.DataFrame({
        "req_id": pd.Series([s.req_id for s in specs], dtype=object if any(isinstance(s.req_id, str)
                                                                            for s in specs) else np.int64),
        "arrival_time": np.array([s.arrival_time for s in specs], dtype=np.float64),
        "prompt_len": np.array([s.prompt_len for s in specs], dtype=np.int64),
        "output_len": np.array([s.output_len for s in specs], dtype=np.int64),
        "n": np.array([s.n for s in specs], dtype=np.int64),
        "beam_width": np.array([s.beam_width for s in specs], dtype=np.int64),
        "spec_k": np.array([s.spec_k for s in specs], dtype=np.int64),
        "spec_accept": np.array([s.spec_accept for s in specs], dtype=np.float64),
        "prefix_unit": np.array([s.prefix_unit for s in specs], dtype=np.int64),
        "num_prefix_ids": np.array([len(s.prefix_hashes) for s in specs], dtype=np.int64),
        "prefix_hashes": pd.Series([s.prefix_hashes for s in specs], dtype=object),
        "cancel_time": np.array([math.nan if s.cancel_time is None else s.cancel_time for s in specs],
                                dtype=np.float64),
    })
    return frame


def _dist(values: pd.Series) -> dict[str, float]:
    q = values.quantile([0.5, 0.9, 0.99])
    return {"mean": float(values.mean()), "p50": float(q[0.5]), "p90": float(q[0.9]), "p99": float(q[0.99]),
            "min": float(values.min()), "max": float(values.max())}


def summarize(workload: pd.DataFrame | Sequence[RequestSpec] | TraceColumns) -> dict[str, Any]:
    """Summary statistics of a workload (frame, specs or columns).

    Keys: rows, span_s, mean_rate (rows / span), interarrival_cv (std/mean of gaps, population std),
    iod_1s (variance/mean of counts in 1-second bins from the first arrival), max_per_second,
    prompt / output: {mean, p50, p90, p99, min, max}.
    """
    frame = workload if isinstance(workload, pd.DataFrame) else to_frame(workload)
    t = np.sort(frame["arrival_time"].to_numpy(dtype=np.float64))
    rows = len(t)
    span = float(t[-1] - t[0]) if rows else 0.0
    gaps = np.diff(t)
    cv = float(gaps.std() / gaps.mean()) if len(gaps) and gaps.mean() > 0 else math.nan
    if rows and span > 0:
        counts = np.bincount(np.floor(t - t[0]).astype(np.int64))
        iod, peak = float(counts.var() / counts.mean()), int(counts.max())
    else:
        iod, peak = math.nan, rows
    return {
        "rows": rows, "span_s": span, "mean_rate": rows / span if span > 0 else math.inf,
        "interarrival_cv": cv, "iod_1s": iod, "max_per_second": peak,
        "prompt": _dist(frame["prompt_len"]) if rows else {},
        "output": _dist(frame["output_len"]) if rows else {},
    }
