"""Where the memory is now: the per-step sums over the running sequences and the cache that the memory
breakdown (sim.records.breakdown) and the engine's memory samples are built from, and the external
fragmentation seen by the head waiting request. Reads the scheduler and cache; changes nothing.
"""

from __future__ import annotations

import numpy as np

from sim.memory.paged_cache import PagedKVCache
from sim.records.breakdown import Breakdown, from_sums
from sim.sched.scheduler import Scheduler
from sim.sched.sequence import CTX, DROP, FINAL, NBLK, SHARE, SPEC
from sim.sched.window import stale_sums


class MemoryProbe:
    """Memory sums of one engine's scheduler and cache (`capacity` slots, optional sliding `window`)."""

    def __init__(self, sched: Scheduler, capacity: int, window: int | None) -> None:
        self.sched = sched
        self.ops = sched.ops
        self.cache = sched.ops.cache
        self.paged = isinstance(self.cache, PagedKVCache)
        self.capacity = capacity
        self.window = window

    def external_frag(self, waiting_need: int) -> int:
        """Free slots the head waiting request cannot use (0 if nothing waits).

        Paged: the free blocks held back by the admission watermark (any free block can hold any
        request's tokens, so only the reserve is unusable to it). Contiguous: the holes smaller than
        its reservation.
        """
        if not waiting_need:
            return 0
        c = self.cache
        if isinstance(c, PagedKVCache):
            return min(c.num_free_blocks, c.watermark_blocks) * c.block_size
        return c.external_fragmentation(waiting_need)

    def sums(self) -> tuple[int, int, int, int, int, int, int, int, int]:
        """(sum ctx, sum drafts, sum allocated, sum min(allocated, final), used slots, external
        fragmentation, used blocks, stale slots logical, stale slots physical) over the running
        sequences, for the memory breakdown. With a sliding window the per-sequence sums count only
        held blocks (tokens from drop * block_size on)."""
        s = self.sched
        need = 0
        if s.waiting:
            h = s.waiting[0]
            need = h.prefill_target if self.paged else self.ops.reservation(h)
        ext = self.external_frag(need) if need else 0
        d = s.dset  # single decoding sequences: sums kept incrementally
        b = self.ops.block_size
        dropped = d.sum_drop * b
        sum_ctx, sum_spec, sum_alloc, sum_capf = d.true_sum_ctx() - dropped, 0, d.sum_alloc - dropped, \
            d.sum_capf - dropped
        if s._others:
            t = self.ops.table
            m = t.data[:, s.other_slots()]
            sums = m.sum(axis=1).tolist()
            dt = sums[DROP] * b
            sum_ctx += sums[CTX] - dt
            sum_spec += sums[SPEC]
            if self.paged:
                alloc = (m[NBLK] - m[DROP]) * b
                sum_alloc += (sums[NBLK] - sums[DROP]) * b
                sum_capf += int(np.minimum(alloc, m[FINAL] - m[DROP] * b).sum())
            else:
                sum_alloc += sums[SHARE]
                sum_capf += int(np.minimum(m[SHARE], m[FINAL]).sum())
        stl = stp = 0
        if self.window is not None and (s.running or d.members):
            stl, stp = stale_sums(s, self.window)
        c = self.cache
        if isinstance(c, PagedKVCache):
            used_blocks = c.num_blocks - c.num_free_blocks - c.num_reserved_blocks  # v1's null block: free
            return sum_ctx, sum_spec, sum_alloc, sum_capf, used_blocks * b, ext, used_blocks, stl, stp
        return sum_ctx, sum_spec, sum_alloc, sum_capf, c.used_slots, ext, 0, stl, stp

    def measure(self) -> Breakdown:
        """The memory breakdown now (running sequences, cache occupancy, the head waiting request)."""
        sc, ss, sa, sf, used, ext, used_blocks, stl, stp = self.sums()
        bd = from_sums(sc, ss, sa, sf, used_slots=used, capacity=self.capacity, external_frag=ext,
                       stale_logical=stl, stale_physical=stp)
        if self.paged:
            bd.logical_blocks, bd.physical_blocks = sa // self.ops.block_size, used_blocks
        return bd
