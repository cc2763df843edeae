"""Allocator monitoring: free blocks, allocation and reuse rates, fragmentation, the ref-count
histogram, KV bytes in use, copy-on-write copies and swaps, per sample and as run totals.

Everything is read from counters the caches keep, so a sample costs O(1) and never scans the pool
(the paged ref-count histogram is kept incrementally by PagedKVCache and read in O(distinct ref
counts)). Samples are taken with the memory samples: every step by default, at most one per
`memory_sample_interval_s` when that is set (each sample then stands for the time until the next).
"""

from __future__ import annotations

from itertools import chain
from typing import Any

import numpy as np

from sim.memory.paged_cache import PagedKVCache
from sim.records.results import MemorySample, MonitorSample
from sim.records.stream import TimeWeighted
from sim.sched.kv_ops import KVOps
from sim.sched.swap import SwapSpace

_NAN = float("nan")
_MEANS = ("free_blocks", "kv_bytes_used", "refs_1", "refs_2", "refs_3_4", "refs_5_8", "refs_gt8")


class Monitor:
    """Samples the allocator of one run.

    unit_bytes: bytes of one unit of the pool (paged: a block, block_size * kv_bytes_per_token;
    contiguous: one token slot). Invariants: samples are in time order, one per instant; the
    cumulative counters never decrease.
    """

    def __init__(self, ops: KVOps, swap: SwapSpace | None, *, unit_bytes: float,
                 keep_samples: bool = True) -> None:
        self.ops = ops
        self.cache = ops.cache
        self.paged = isinstance(ops.cache, PagedKVCache)
        self.swap = swap
        self.unit_bytes = float(unit_bytes)
        self.pool = self.cache.num_blocks if self.paged else self.cache.capacity_tokens
        self.samples: list[MonitorSample] = []  # built by finish()
        self._rows: list[tuple[Any, ...]] = []  # raw counters per sample (the per-step path)
        self._built = False
        self._t: np.ndarray = np.zeros(0)
        self._used: np.ndarray = np.zeros(0)
        self._hist: np.ndarray = np.zeros((0, 5))
        # Streaming runs keep no samples: the run totals come from running time-weighted sums of
        # (free, KV bytes, refs_1..refs_gt8, used) instead (sim.records.stream.TimeWeighted).
        self.keep = keep_samples
        self._running = None if keep_samples else TimeWeighted(len(_MEANS) + 1)

    # ---- counters -----------------------------------------------------------------------------
    def counters(self) -> tuple[int, int, int]:
        """Cumulative (fresh allocations, reuses, window releases) in pool units."""
        c = self.cache
        if self.paged:
            return c.num_blocks_allocated, c.num_blocks_reused, c.num_window_released
        return self.ops.slots_allocated, 0, 0

    # ---- samples ------------------------------------------------------------------------------
    def sample(self, now: float, mem: MemorySample, used: int) -> None:
        """Record a sample at `now` (replacing one taken at the same instant): `mem` is the memory
        sample of the same instant (its fragmentation categories are reported here too), `used` the
        pool units in use. This per-step path keeps only a tuple of counters; `finish()` builds the
        records (with their rates) once, at the end of the run."""
        if self._running is not None:
            hist = self.cache.ref_count_histogram() if self.paged else (used, 0, 0, 0, 0)
            self._running.add(now, (self.pool - used, used * self.unit_bytes, *hist, used))
            return
        rows = self._rows
        if rows and rows[-1][0] == now:
            rows.pop()
        if self.paged:
            c, sw = self.cache, self.swap
            rows.append((now, used, c.num_blocks_allocated, c.num_blocks_reused, c.num_window_released,
                         c.total_cows - self.ops.cows_ignored, sw.total_out if sw else 0, sw.total_in if sw else 0,
                         c.ref_count_histogram(), mem))
        else:
            rows.append((now, used, self.ops.slots_allocated, 0, 0, 0, 0, 0, None, mem))

    def finish(self) -> list[MonitorSample]:
        """The samples as MonitorSample records, built once at the end of the run. The raw rows are
        replaced one by one (so they never coexist with the records), after the columns the run totals
        need are taken out of them."""
        if self._built:
            return self.samples
        rows: list[Any] = self._rows
        k = len(rows)
        self._t = np.fromiter((r[0] for r in rows), dtype=float, count=k)
        self._used = np.fromiter((r[1] for r in rows), dtype=float, count=k)
        if self.paged:
            self._hist = np.fromiter(chain.from_iterable(r[8] for r in rows), dtype=float, count=5 * k).reshape(k, 5)
        else:
            self._hist = np.zeros((k, 5))
            self._hist[:, 0] = self._used
        pool, unit, nan = self.pool, self.unit_bytes, _NAN
        t0 = a0 = r0 = None
        for i in range(k):
            now, used, alloc, reused, released, cows, s_out, s_in, hist, mem = rows[i]
            r1, r2, r3, r5, r9 = hist if hist is not None else (used, 0, 0, 0, 0)
            rate = reuse = nan
            if t0 is not None:
                dt, da, dr = now - t0, alloc - a0, reused - r0
                rate = da / dt if dt > 0 else nan
                reuse = dr / (da + dr) if da + dr else nan
            t0, a0, r0 = now, alloc, reused
            pct = 100.0 / mem.capacity if mem.capacity else nan
            rows[i] = MonitorSample(now, pool - used, used, used * unit, rate, reuse, mem.internal_frag * pct,
                                    mem.external_frag * pct, r1, r2, r3, r5, r9, alloc, reused, cows, s_out, s_in,
                                    released)
        self.samples, self._rows, self._built = rows, [], True
        return self.samples

    # ---- run totals ---------------------------------------------------------------------------
    def totals(self, end_s: float, duration_s: float) -> dict[str, Any]:
        """Summary extras: run totals and time-weighted means over the samples (each holds until the
        next; the last until end_s)."""
        self.finish()
        alloc, reused, released = self.counters()
        out: dict[str, Any] = {
            "monitor_unit": "block" if self.paged else "slot",
            "pool_blocks": self.pool,
            "blocks_allocated": alloc,
            "blocks_reused": reused,
            "alloc_rate_blocks_per_s": alloc / duration_s if duration_s > 0 else _NAN,
            "reuse_rate": reused / (alloc + reused) if alloc + reused else _NAN,
            "window_released_blocks": released,
        }
        run = self._running
        if run is not None:
            if run.empty:
                out.update({f"mean_{n}": _NAN for n in _MEANS}, min_free_blocks=_NAN, peak_kv_bytes_used=_NAN)
                return out
            for name, v in zip(_MEANS, run.means(end_s), strict=False):
                out[f"mean_{name}"] = v
            peak = run.maxima()[-1]
            out["min_free_blocks"] = int(self.pool - peak)
            out["peak_kv_bytes_used"] = float(peak) * self.unit_bytes
            return out
        t, used, hist = self._t, self._used, self._hist
        if not t.size:
            out.update({f"mean_{n}": _NAN for n in _MEANS}, min_free_blocks=_NAN, peak_kv_bytes_used=_NAN)
            return out
        cols = np.column_stack([self.pool - used, used * self.unit_bytes, hist])
        w = np.maximum(np.diff(np.append(t, max(end_s, t[-1]))), 0.0)  # each sample holds until the next
        means = (cols * w[:, None]).sum(axis=0) / w.sum() if w.sum() > 0 else cols[-1]
        for name, v in zip(_MEANS, means.tolist(), strict=True):
            out[f"mean_{name}"] = v
        out["min_free_blocks"] = int(self.pool - used.max())
        out["peak_kv_bytes_used"] = float(used.max()) * self.unit_bytes
        return out
