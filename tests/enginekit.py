"""Engine test kit shared by the engine, swap, window and monitor tests: a constant-step latency stand-in
(every step 0.1 s, so times are hand-computable), a small paged config and a run in check mode."""

from __future__ import annotations

from typing import Any

import pytest

from sim.config import PagedCacheSpec, SimConfig
from sim.engine import Engine
from sim.records.results import SimResult
from sim.request import RequestSpec
from sim.timing.latency import BatchShape


class ConstLatency:
    """Test stand-in: every non-empty step takes `dt` seconds."""

    name = "const"

    def __init__(self, dt: float = 0.1) -> None:
        self.dt = dt

    def step_time(self, batch: BatchShape) -> float:
        return self.dt if batch.num_seqs else 0.0


def cfg(capacity: int = 64, block_size: int = 4, **kw: Any) -> SimConfig:
    cache = kw.pop("cache", PagedCacheSpec(block_size=block_size, watermark=0.0,
                                           prefix_caching=kw.pop("prefix", False)))
    return SimConfig(cache=cache, kv_capacity_tokens=capacity, latency=ConstLatency(), **kw)


def run(reqs: list[RequestSpec], config: SimConfig, **kw: Any) -> SimResult:
    return Engine(reqs, config, check_invariants=True, **kw).run()


def sample_at(res: SimResult, t: float) -> Any:
    return next(m for m in res.memory if m.time_s == pytest.approx(t))
