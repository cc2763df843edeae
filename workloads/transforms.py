"""Options that apply to any trace: time window, first N, rate scaling, max_model_len rule.

Each transform takes TraceColumns and returns new columns plus the counts it changed, so the load
report states exactly what was cut. `apply_options` runs them in a fixed order:
window -> max_model_len -> first N -> rate scaling (so N counts replayed requests and the target
rate is hit by what is replayed).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from workloads.columns import TraceColumns
from workloads.errors import WorkloadError

TOO_LONG_RULES = ("clip", "drop", "error")


@dataclass(frozen=True, slots=True)
class TraceOptions:
    """Selection and reshaping applied after loading.

    window: (start_s, end_s) keeps requests with start <= arrival < end, then shifts times so the
      window starts at 0 (end may be inf).
    first_n: keep only the first N requests (after window and the max_model_len rule).
    target_rate: scale inter-arrival times so the mean rate N / (last - first) hits this req/s.
    time_scale: multiply all arrival times by this factor (> 1 stretches, < 1 compresses);
      exclusive with target_rate.
    max_model_len: longest sequence (prompt + output) the model accepts; `too_long` says what
      happens to longer requests: 'clip' (keep the prompt up to max_model_len - 1 tokens and cut
      the output to fit), 'drop' (remove the request), 'error' (raise naming the request).
    """

    window: tuple[float, float] | None = None
    first_n: int | None = None
    target_rate: float | None = None
    time_scale: float | None = None
    max_model_len: int | None = None
    too_long: str = "clip"

    def __post_init__(self) -> None:
        if self.window is not None:
            start, end = self.window
            if not (math.isfinite(start) and start >= 0 and end > start):
                raise WorkloadError(f"window = {self.window!r} out of range (valid: 0 <= start < end, seconds)")
        if self.first_n is not None and (not isinstance(self.first_n, int) or self.first_n < 1):
            raise WorkloadError(f"first_n = {self.first_n!r} out of range (valid: integer >= 1)")
        for name in ("target_rate", "time_scale"):
            v = getattr(self, name)
            if v is not None and not (math.isfinite(v) and v > 0):
                raise WorkloadError(f"{name} = {v!r} out of range (valid: finite > 0)")
        if self.target_rate is not None and self.time_scale is not None:
            raise WorkloadError("target_rate and time_scale cannot both be given; choose one")
        if self.max_model_len is not None and (not isinstance(self.max_model_len, int) or self.max_model_len < 2):
            raise WorkloadError(f"max_model_len = {self.max_model_len!r} out of range (valid: integer >= 2)")
        if self.too_long not in TOO_LONG_RULES:
            raise WorkloadError(f"too_long = {self.too_long!r} unknown (valid: {', '.join(TOO_LONG_RULES)})")


def time_window(cols: TraceColumns, start: float, end: float) -> tuple[TraceColumns, dict[str, Any]]:
    """Requests arriving in [start, end), re-based so the window starts at time 0."""
    keep = (cols.arrival >= start) & (cols.arrival < end)
    out = cols.take(keep)
    out.arrival = out.arrival - start
    return out, {"window_s": [start, end], "outside_window": int((~keep).sum())}


def first_n(cols: TraceColumns, num: int) -> tuple[TraceColumns, dict[str, Any]]:
    """The first `num` requests in arrival order."""
    keep = min(num, len(cols))
    return cols.take(np.arange(keep)), {"first_n": num, "beyond_first_n": len(cols) - keep}


def mean_rate(arrival: np.ndarray) -> float:
    """Requests per second as rows / (last - first); inf when all arrive at once."""
    span = float(arrival[-1] - arrival[0]) if len(arrival) else 0.0
    return len(arrival) / span if span > 0 else math.inf


def scale_times(cols: TraceColumns, factor: float) -> tuple[TraceColumns, dict[str, Any]]:
    """Multiply gaps by `factor` (the first arrival stays where it is)."""
    out = cols.take(np.arange(len(cols)))
    t0 = out.arrival[0] if len(out) else 0.0
    out.arrival = t0 + (out.arrival - t0) * factor
    return out, {"time_scale": factor}


def scale_to_rate(cols: TraceColumns, rate: float) -> tuple[TraceColumns, dict[str, Any]]:
    """Compress or stretch inter-arrival times so the mean rate becomes `rate` req/s."""
    before = mean_rate(cols.arrival)
    if not math.isfinite(before):
        raise WorkloadError("target_rate: all requests arrive at the same instant, so there are no gaps to "
                            "scale; use an arrival process instead")
    out, stats = scale_times(cols, before / rate)
    return out, {**stats, "rate_before": before, "rate_after": mean_rate(out.arrival)}


def limit_length(cols: TraceColumns, max_model_len: int, rule: str) -> tuple[TraceColumns, dict[str, Any]]:
    """Apply the max_model_len rule to requests with prompt + output > max_model_len."""
    over = cols.prompt + cols.output > max_model_len
    stats: dict[str, Any] = {"max_model_len": max_model_len, "too_long_rule": rule, "too_long": int(over.sum())}
    if not over.any():
        return cols, {**stats, "dropped_too_long": 0, "clipped_prompt": 0, "clipped_output": 0}
    if rule == "error":
        i = int(np.flatnonzero(over)[0])
        where = f" (line {cols.line[i]})" if cols.line[i] else ""
        rid = cols.req_id[i].item() if hasattr(cols.req_id[i], "item") else cols.req_id[i]
        raise WorkloadError(f"request {rid!r}{where}: prompt {cols.prompt[i]} + output "
                            f"{cols.output[i]} > max_model_len {max_model_len}; use too_long='clip' or 'drop'")
    if rule == "drop":
        return cols.take(~over), {**stats, "dropped_too_long": int(over.sum()), "clipped_prompt": 0,
                                  "clipped_output": 0}
    out = cols.take(np.arange(len(cols)))
    long_prompt = out.prompt > max_model_len - 1
    out.prompt = np.minimum(out.prompt, max_model_len - 1)
    new_output = np.minimum(out.output, max_model_len - out.prompt)
    cut_output = new_output < out.output
    out.output = new_output
    for i in np.flatnonzero(long_prompt).tolist():  # prefix ids past the shortened prompt cover nothing
        keep = -(-int(out.prompt[i]) // int(out.prefix_unit[i]))
        out.prefix_hashes[i] = out.prefix_hashes[i][:keep]
    return out, {**stats, "dropped_too_long": 0, "clipped_prompt": int(long_prompt.sum()),
                 "clipped_output": int(cut_output.sum())}


def apply_options(cols: TraceColumns, opts: TraceOptions) -> tuple[TraceColumns, dict[str, Any]]:
    """Run the transforms in the documented order; returns new columns and merged stats."""
    stats: dict[str, Any] = {}
    if opts.window is not None:
        cols, s = time_window(cols, *opts.window)
        stats.update(s)
    if opts.max_model_len is not None:
        cols, s = limit_length(cols, opts.max_model_len, opts.too_long)
        stats.update(s)
    if opts.first_n is not None:
        cols, s = first_n(cols, opts.first_n)
        stats.update(s)
    if len(cols) and opts.target_rate is not None:
        cols, s = scale_to_rate(cols, opts.target_rate)
        stats.update(s)
    if len(cols) and opts.time_scale is not None:
        cols, s = scale_times(cols, opts.time_scale)
        stats.update(s)
    return cols, stats
