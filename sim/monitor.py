"""Allocator monitoring: free blocks, allocation and reuse rates, fragmentation, the ref-count
histogram, KV bytes in use, copy-on-write copies and swaps, per sample and as run totals.

Everything is read from counters the caches keep, so a sample costs O(1) and never scans the pool
(the paged ref-count histogram is kept incrementally by PagedKVCache and read in O(distinct ref
counts)). Samples are taken with the memory samples: every step by default, at most one per
`memory_sample_interval_s` when that is set (each sample then stands for the time until the next).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from sim.kv_ops import KVOps
from sim.paged_cache import PagedKVCache
from sim.results import MemorySample, MonitorSample
from sim.swap import SwapSpace

_NAN = float("nan")


class Monitor:
    """Samples the allocator of one run.

    unit_bytes: bytes of one unit of the pool (paged: a block, block_size * kv_bytes_per_token;
    contiguous: one token slot). Invariants: samples are in time order, one per instant; the
    cumulative counters never decrease.
    """

    def __init__(self, ops: KVOps, swap: SwapSpace | None, *, unit_bytes: float) -> None:
        self.ops = ops
        self.cache = ops.cache
        self.paged = isinstance(ops.cache, PagedKVCache)
        self.swap = swap
        self.unit_bytes = float(unit_bytes)
        self.samples: list[MonitorSample] = []
        self._step_mark = (0, 0, 0)

    # ---- counters -----------------------------------------------------------------------------
    def counters(self) -> tuple[int, int, int]:
        """Cumulative (fresh allocations, reuses, window releases) in pool units."""
        c = self.cache
        if self.paged:
            return c.num_blocks_allocated, c.num_blocks_reused, c.num_window_released
        return self.ops.slots_allocated, 0, 0

    def step_deltas(self) -> tuple[int, int, int]:
        """Counters since the previous call (the engine calls it once per recorded step)."""
        now = self.counters()
        m = self._step_mark
        self._step_mark = now
        return now[0] - m[0], now[1] - m[1], now[2] - m[2]

    def cows(self) -> int:
        """Copy-on-write copies so far (copies made while rebuilding a swapped-in group excluded)."""
        return self.cache.total_cows - self.ops.cows_ignored if self.paged else 0

    # ---- samples ------------------------------------------------------------------------------
    def sample(self, now: float, mem: MemorySample) -> None:
        """Append a sample at `now` (replacing one taken at the same instant); `mem` is the memory
        sample of the same instant (its fragmentation categories are reported here too)."""
        s = self.samples
        if s and s[-1].time_s == now:
            s.pop()
        c = self.cache
        alloc, reused, released = self.counters()
        if self.paged:
            free = c.num_free_blocks
            used = c.num_blocks - free
            r1, r2, r3, r5, r9 = c.ref_count_histogram()
        else:
            free, used = c.free_slots, c.used_slots
            r1, r2, r3, r5, r9 = used, 0, 0, 0, 0
        rate = reuse = _NAN
        if s:
            p = s[-1]
            dt = now - p.time_s
            da, dr = alloc - p.blocks_allocated_total, reused - p.blocks_reused_total
            rate = da / dt if dt > 0 else _NAN
            reuse = dr / (da + dr) if da + dr else _NAN
        cap = mem.capacity
        sw = self.swap
        s.append(MonitorSample(
            now, free, used, used * self.unit_bytes, rate, reuse,
            100.0 * mem.internal_frag / cap if cap else _NAN, 100.0 * mem.external_frag / cap if cap else _NAN,
            r1, r2, r3, r5, r9, alloc, reused, self.cows(), sw.total_out if sw else 0, sw.total_in if sw else 0,
            released))

    # ---- run totals ---------------------------------------------------------------------------
    def totals(self, end_s: float, duration_s: float) -> dict[str, Any]:
        """Summary extras: run totals and time-weighted means over the samples (each holds until the
        next; the last until end_s)."""
        alloc, reused, released = self.counters()
        out: dict[str, Any] = {
            "monitor_unit": "block" if self.paged else "slot",
            "pool_blocks": self.cache.num_blocks if self.paged else self.cache.capacity_tokens,
            "blocks_allocated": alloc,
            "blocks_reused": reused,
            "alloc_rate_blocks_per_s": alloc / duration_s if duration_s > 0 else _NAN,
            "reuse_rate": reused / (alloc + reused) if alloc + reused else _NAN,
            "window_released_blocks": released,
        }
        s = self.samples
        names = ("free_blocks", "kv_bytes_used", "refs_1", "refs_2", "refs_3_4", "refs_5_8", "refs_gt8")
        if not s:
            out.update({f"mean_{n}": _NAN for n in names}, min_free_blocks=_NAN, peak_kv_bytes_used=_NAN)
            return out
        t = np.array([x.time_s for x in s])
        w = np.maximum(np.diff(np.append(t, max(end_s, t[-1]))), 0.0)
        total = w.sum()
        for n in names:
            v = np.array([getattr(x, n) for x in s], dtype=float)
            out[f"mean_{n}"] = float((v * w).sum() / total) if total > 0 else float(v[-1])
        out["min_free_blocks"] = min(x.free_blocks for x in s)
        out["peak_kv_bytes_used"] = max(x.kv_bytes_used for x in s)
        return out
