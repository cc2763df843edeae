"""Where the KV memory goes, in hindsight: the six categories of DESIGN.md at one instant.

Per live sequence with A slots allocated (paged: its blocks x block size; contiguous: its share of
the group's extent), ctx slots written (this step's tokens included), spec of them drafts to be
rolled back, and F the most slots it will ever hold:
  token states = ctx - spec (physical: a block shared by several sequences counts once),
  speculative = spec, reserved = min(A, F) - ctx, internal fragmentation = A - min(A, F),
  external fragmentation = free slots the next waiting request cannot use (given by the caller),
  free = the rest of the pool. The six always sum to the pool capacity.
With a sliding window, held slots before a sequence's last W tokens are stale (sim.sched.window): they
move from token states to internal fragmentation.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sim.records.results import MemorySample


@dataclass(slots=True)
class Breakdown(MemorySample):
    """A memory sample (categories in token slots, summing to capacity) plus the paged block counts;
    `time_s` is 0 until `sample(t)` stamps it."""

    logical_blocks: int = 0  # paged: blocks referenced per sequence (shared ones once per user)
    physical_blocks: int = 0  # paged: blocks in use

    def sample(self, time_s: float) -> MemorySample:
        """This breakdown as a MemorySample at `time_s`."""
        return MemorySample(time_s, self.token_states, self.reserved, self.internal_frag, self.speculative,
                            self.external_frag, self.free, self.logical_token_states, self.capacity)


def breakdown(ctx: np.ndarray, spec: np.ndarray, alloc: np.ndarray, final: np.ndarray, *,
              used_slots: int, capacity: int, external_frag: int) -> Breakdown:
    """Vectorized categories over the live sequences (arrays aligned per sequence, int64).

    used_slots: physical slots held (paged: used blocks x block size, so shared blocks count once);
    the physical token states are used_slots minus every sequence's non-token slots. Blocks shared
    between sequences are full blocks counted in each sharer's ctx (forks share the prompt, prefix
    caching shares full blocks; a shared partial block is copied on the first append).
    Requires spec <= ctx <= min(alloc, final) per sequence; external_frag <= the free slots.
    """
    return from_sums(int(ctx.sum()), int(spec.sum()), int(alloc.sum()), int(np.minimum(alloc, final).sum()),
                     used_slots=used_slots, capacity=capacity, external_frag=external_frag)


def from_sums(sum_ctx: int, sum_spec: int, sum_alloc: int, sum_alloc_within_final: int, *,
              used_slots: int, capacity: int, external_frag: int, stale_logical: int = 0,
              stale_physical: int = 0) -> Breakdown:
    """The categories from per-batch sums (sum of min(alloc, final) is the used-or-will-be part).

    stale_logical / stale_physical: sliding-window stale slots counted per sequence / once per pool
    slot (sim.sched.window.stale_sums); they are internal fragmentation, not token states.
    """
    logical = sum_ctx - sum_spec
    reserved = sum_alloc_within_final - sum_ctx
    internal = sum_alloc - sum_alloc_within_final + stale_physical
    physical = used_slots - (sum_alloc - logical) - stale_physical
    logical -= stale_logical
    free = capacity - used_slots
    if not 0 <= external_frag <= free:
        raise ValueError(f"external_frag = {external_frag} out of range (valid: 0..{free} free slots)")
    return Breakdown(0.0, float(physical), float(reserved), float(internal), float(sum_spec), float(external_frag),
                     float(free - external_frag), float(logical), float(capacity))
