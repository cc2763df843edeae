"""Sliding-window attention in the memory breakdown: which held KV slots are stale.

A query at position q attends to the keys at [q - W + 1, q]. The paged cache releases a sequence's
leading blocks once they lie entirely before its next query's window (KVOps.release_window, driven
by the scheduler); contiguous caches keep their whole reservation. A held slot before a sequence's
last W tokens (draft tokens aside) is *stale*: stored KV that no query reads again. The breakdown
counts stale slots as internal fragmentation (allocated, of no further use), not as token states.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from sim.sched.scheduler import Scheduler


def stale_slots(ctx: np.ndarray, spec: np.ndarray | int, drop_tokens: np.ndarray | int, window: int) -> np.ndarray:
    """Per sequence: held slots before its last `window` tokens (ctx counts drafts, spec of them are
    drafts; drop_tokens: tokens of the blocks it already released)."""
    return np.maximum(ctx - spec - window - drop_tokens, 0)


def stale_sums(s: Scheduler, window: int) -> tuple[int, int]:
    """(logical, physical) stale slots over the running sequences.

    Logical counts each sequence's own stale slots. Physical counts pool slots: a slot of a block that
    several sequences share (a fork, a prefix-cache hit) is stale only if it is stale for every one of
    them. Sharing is looked up only where it can exist (groups of several sequences, prefix caching),
    so the common case is a few vector operations over the running batch.
    """
    ops, t = s.ops, s.table
    b = ops.block_size  # 0 for a contiguous cache: nothing is released, nothing is shared
    pc = ops.paged and ops.cache.enable_prefix_caching
    logical = physical = 0
    check: list[tuple[int, int]] = []  # (slot, stale) of sequences whose stale blocks may be shared
    d = s.dset
    if len(d):
        sl = d.slots()
        st = stale_slots(d.true_ctx(), 0, t.drop[sl] * b, window)
        n = int(st.sum())
        logical += n
        if pc and n:
            nz = np.flatnonzero(st)
            check.extend(zip(sl[nz].tolist(), st[nz].tolist(), strict=True))
        else:
            physical += n
    o = s.other_slots()
    if o.size:
        st = stale_slots(t.ctx[o], t.spec[o], t.drop[o] * b, window)
        n = int(st.sum())
        logical += n
        if ops.paged and n:
            nz = np.flatnonzero(st)
            for slot, v in zip(o[nz].tolist(), st[nz].tolist(), strict=True):
                if pc or len(s.slot_group[slot].slots) > 1:
                    check.append((slot, v))
                else:
                    physical += v
        else:
            physical += n
    if check:
        physical += _shared_stale(s, check)
    return logical, physical


def _shared_stale(s: Scheduler, check: list[tuple[int, int]]) -> int:
    """Physical stale slots of the held blocks of `check`'s sequences, each block once.

    A sequence's stale slots are its tokens [drop * B, drop * B + stale): a prefix of each block they
    touch. A block is shared at the same logical index by all its holders (forks copy tables, prefix
    hits are leading blocks), so its physical stale slots are the smallest such prefix over its
    holders, and 0 when a holder is not listed (it has no stale slot there).
    """
    cache, t, b = s.ops.cache, s.table, s.ops.block_size
    by_block: dict[int, list[int]] = {}
    for slot, v in check:
        g = s.slot_group[slot]
        sid = g.seq_ids[g.slots.index(slot)]
        d = int(t.drop[slot])
        end = d * b + v
        for k, blk in enumerate(cache.held_blocks(sid, d, -(-end // b)), start=d):
            by_block.setdefault(blk, []).append(min(b, end - k * b))
    return sum(min(v) for blk, v in by_block.items() if len(v) == cache.ref_count(blk))
