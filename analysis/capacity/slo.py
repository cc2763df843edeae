"""Latency targets (SLOs) for a capacity search: parse `ttft_p99=2`, check a run's summary against them.

A target names a metric and a percentile (`ttft_p99`, `tpot_p50`, `norm_p99`, `e2e_mean`) and an upper
bound in seconds (seconds per output token for `norm`). A run meets its SLOs when every target's
measured value is at most its bound; the binding constraint of a failed run is the target with the
largest value / bound ratio (the one violated by most).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

#: Metric short names -> the summary's key stem (sim.records.metrics.summarize: p50_ttft, mean_ttft_s, ...).
METRICS: dict[str, str] = {"ttft": "ttft", "tpot": "tpot", "e2e": "e2e", "norm": "normalized_latency"}
STATS: tuple[str, ...] = ("p50", "p90", "p99", "mean")
SLO_HELP = ("NAME=SECONDS with NAME one of " + ", ".join(f"{m}_{{{','.join(STATS)}}}" for m in METRICS)
            + " (norm: normalized latency, s per output token), e.g. ttft_p99=2 tpot_p50=0.05")


@dataclass(frozen=True, slots=True)
class Target:
    """One latency target: `metric_stat <= bound` (e.g. ttft p99 <= 2 s)."""

    metric: str
    stat: str
    bound: float

    @property
    def name(self) -> str:
        """The target's name as written on the command line ("ttft_p99")."""
        return f"{self.metric}_{self.stat}"

    @property
    def key(self) -> str:
        """The summary column holding the measured value."""
        stem = METRICS[self.metric]
        if self.stat == "mean":
            return "mean_normalized_latency_s_per_token" if self.metric == "norm" else f"mean_{stem}_s"
        return f"{self.stat}_{stem}"


def parse_target(text: str) -> Target:
    """`ttft_p99=2` -> Target; ValueError naming the text and the valid forms."""
    name, eq, val = str(text).strip().partition("=")
    metric, _, stat = name.strip().lower().partition("_")
    try:
        bound = float(val)
    except ValueError:
        bound = math.nan
    if not eq or metric not in METRICS or stat not in STATS or not (bound > 0 and math.isfinite(bound)):
        raise ValueError(f"--slo {text!r} not understood (valid: {SLO_HELP}; the bound must be > 0)")
    return Target(metric, stat, bound)


def parse_targets(texts: Iterable[str]) -> tuple[Target, ...]:
    """Several targets; ValueError for a bad one, none at all, or the same target twice."""
    out = tuple(parse_target(t) for t in texts)
    if not out:
        raise ValueError(f"no --slo given (valid: {SLO_HELP})")
    names = [t.name for t in out]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"--slo {dup[0]} given twice (valid: each target once)")
    return out


@dataclass(frozen=True, slots=True)
class Verdict:
    """How a run fares against the targets: pass/fail, each target's value/bound ratio, the binding one."""

    ok: bool
    ratios: dict[str, float]
    binding: str  # the target with the largest ratio (NaN counts as a violation)


def judge(row: Mapping[str, Any], targets: Sequence[Target]) -> Verdict:
    """Check a summary row against the targets. A missing or NaN value (no finished request) fails."""
    ratios: dict[str, float] = {}
    for t in targets:
        v = row.get(t.key, math.nan)
        try:
            v = float(v)
        except (TypeError, ValueError):
            v = math.nan
        ratios[t.name] = v / t.bound if v == v else math.inf
    binding = max(ratios, key=lambda n: ratios[n])
    return Verdict(all(r <= 1.0 for r in ratios.values()), ratios, binding)
