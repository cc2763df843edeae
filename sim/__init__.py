"""pagesim's simulator core: KV-cache memory (paged and contiguous), scheduler, SimPy engine,
latency model and metrics records. Imports nothing from workloads/gpu/analysis and no pandas,
matplotlib or cupy: results are plain dataclass records that analysis/ turns into DataFrames.

The run API (`simulate`, the config classes, the records) is imported lazily on first use so that
`import sim.request` stays cheap for tools that only build request specs.
"""

from __future__ import annotations

import importlib
from typing import Any

from sim.request import RequestSpec, SpecError

_LAZY = {
    "simulate": "sim.engine",
    "Engine": "sim.engine",
    "SimConfig": "sim.config",
    "PagedCacheSpec": "sim.config",
    "ContiguousCacheSpec": "sim.config",
    "SchedulerConfig": "sim.config",
    "system_label": "sim.config",
    "SimResult": "sim.records.results",
    "RequestRecord": "sim.records.results",
    "StepRecord": "sim.records.results",
    "MemorySample": "sim.records.results",
    "MonitorSample": "sim.records.results",
    "SUMMARY_KEYS": "sim.records.results",
    "MEMORY_CATEGORIES": "sim.records.results",
    "summarize": "sim.records.metrics",
}

__all__ = ["RequestSpec", "SpecError", *_LAZY]


def __getattr__(name: str) -> Any:
    mod = _LAZY.get(name)
    if mod is None:
        raise AttributeError(f"module 'sim' has no attribute {name!r}")
    value = getattr(importlib.import_module(mod), name)
    globals()[name] = value
    return value
