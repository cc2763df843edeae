"""Sequence-group operations on the KV cache, for both cache kinds (paged and contiguous).

The scheduler decides *what* happens; these functions do it on the cache and keep the SeqTable
counters in step with it: admit (allocate a prompt), fork children, grow for decode steps,
free, rebuild after a swap-in, and the sizes admission and preemption need.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from sim.memory.contiguous_cache import ContigStatus, ContiguousKVCache
from sim.memory.outcomes import AllocStatus, CacheError
from sim.memory.paged_cache import PagedKVCache
from sim.sched.sequence import SeqGroup, SeqTable

# Admission verdicts shared by both cache kinds.
OK, LATER, LATER_FRAGMENTED, NEVER = "ok", "later", "later_fragmented", "never"


def cdiv(a: int, b: int) -> int:
    """Ceiling division for non-negative ints."""
    return -(-a // b)


class KVOps:
    """Binds a cache and the SeqTable; `paged` tells which cache kind is behind it.

    window: the attention window in tokens (None: full attention). The paged cache then releases a
    sequence's leading blocks once no query of it attends them any more (release_window).
    """

    def __init__(self, cache: Any, table: SeqTable, *, max_model_len: int, window: int | None = None) -> None:
        self.cache = cache
        self.table = table
        self.paged = isinstance(cache, PagedKVCache)
        if not self.paged and not isinstance(cache, ContiguousKVCache):
            raise TypeError(f"unsupported cache type {type(cache).__name__}")
        self.block_size = cache.block_size if self.paged else 0
        self.max_model_len = max_model_len
        self.window = window
        self.cows_ignored = 0  # copies made while rebuilding a swapped-in group (not real CoW)
        self.slots_allocated = 0  # contiguous: slots reserved so far (the allocator monitor's allocations)

    # ---- sizes --------------------------------------------------------------------------------
    def reservation(self, g: SeqGroup) -> int:
        """Contiguous: slots the group's one extent reserves (policy size x sequences)."""
        p = g.spec.prompt_len
        return self.cache.reservation_size(p, p + g.output_len) * g.num_seqs

    def worst_case_blocks(self, g: SeqGroup) -> int:
        """Paged: blocks the group needs alone at its final length (prompt shared, no other sharing)."""
        b, p = self.block_size, g.spec.prompt_len
        final = p + g.output_len - 1
        full = p // b if g.num_seqs > 1 else 0
        return g.num_seqs * (cdiv(final, b) - full) + full

    def never_fits(self, g: SeqGroup) -> str:
        """Why the group can never run in an empty cache ("" if it can)."""
        if self.paged:
            c: PagedKVCache = self.cache
            avail = c.num_blocks - c.num_reserved_blocks - c.watermark_blocks
            need = self.worst_case_blocks(g)
            if need > avail:
                held = f" minus {c.num_reserved_blocks} reserved" if c.num_reserved_blocks else ""
                return (f"needs {need} blocks at its final length but the pool has {c.num_blocks} blocks"
                        f"{held} minus a watermark of {c.watermark_blocks} (valid: <= {avail})")
            return ""
        size = self.reservation(g)
        if self.cache.can_allocate(size) is ContigStatus.NEVER:
            return (f"its reservation of {size} slots exceeds the largest extent of a "
                    f"{self.cache.capacity_tokens}-slot pool")
        return ""

    def prefix_hit_tokens(self, g: SeqGroup) -> int:
        """Prompt tokens an allocation would find in the prefix cache now (paged with hashes only)."""
        if not (self.paged and g.hashes):
            return 0
        return self.cache.num_prefix_hits(g.prefill_target, g.hashes) * self.block_size

    # ---- admission ----------------------------------------------------------------------------
    def can_admit(self, g: SeqGroup) -> str:
        """OK / LATER / LATER_FRAGMENTED / NEVER for the group's prefill allocation now."""
        if self.paged:
            st = self.cache.can_allocate(g.prefill_target, g.hashes)
            return {AllocStatus.OK: OK, AllocStatus.LATER: LATER, AllocStatus.NEVER: NEVER}[st]
        st = self.cache.can_allocate(self.reservation(g))
        return {ContigStatus.OK: OK, ContigStatus.LATER: LATER,
                ContigStatus.LATER_FRAGMENTED: LATER_FRAGMENTED, ContigStatus.NEVER: NEVER}[st]

    def admit(self, g: SeqGroup) -> int:
        """Allocate the group's first sequence for its prefill; returns prompt tokens found cached.

        The SeqTable slot (g.slots[0]) must exist. Raises CacheError if the allocation fails
        (callers check can_admit first).
        """
        t, s, sid = self.table, g.slots[0], g.seq_ids[0]
        if self.paged:
            if not self.cache.allocate(sid, g.prefill_target, g.hashes):
                raise CacheError(f"allocate of {sid!r} failed after can_allocate said OK")
            t.nblk[s] = cdiv(g.prefill_target, self.block_size)
            t.synced[s] = g.prefill_target
            return self.cache.num_cached_tokens(sid) if g.hashes else 0
        size = self.reservation(g)
        if not self.cache.allocate(sid, size):
            raise CacheError(f"allocate of {sid!r} ({size} slots) failed after can_allocate said OK")
        g.extent = self.cache.allocated(sid)[1]  # buddy placement may round up
        self.slots_allocated += g.extent
        # Until the other sequences fork off, the first one stands for the whole group.
        t.share[s] = g.extent
        t.final[s] *= g.num_seqs
        return 0

    # ---- per-sequence changes -----------------------------------------------------------------
    def fork(self, g: SeqGroup, parent_slot: int, parent_id: object) -> tuple[int, object]:
        """A new sequence of the group sharing everything with its parent; returns (slot, id)."""
        t = self.table
        s = t.alloc(int(t.final[parent_slot]), int(t.olen[parent_slot]))
        t.copy_row(parent_slot, s)
        cid = g.new_seq_id()
        if self.paged:
            self.cache.fork(parent_id, cid)
        else:
            m = g.num_seqs
            one = int(t.final[g.slots[0]]) // m if len(g.slots) == 1 else int(t.final[parent_slot])
            t.final[s] = one
            t.final[g.slots[0]] = one
            t.share[s] = g.extent // m
            t.share[g.slots[0]] = g.extent - (g.extent // m) * (len(g.slots))
        g.slots.append(s)
        g.seq_ids.append(cid)
        return s, cid

    def drop_seq(self, g: SeqGroup, i: int) -> None:
        """Free sequence i of the group (paged: its blocks; contiguous: nothing until the group ends)."""
        s, sid = g.slots.pop(i), g.seq_ids.pop(i)
        if self.paged:
            self.cache.free(sid)
        self.table.release(s)

    def append(self, s: int, sid: object, n: int) -> int:
        """Paged: add n slots to a synced sequence (ctx == synced); returns CoW copies made."""
        t = self.table
        res = self.cache.append(sid, n)
        if not res.ok:
            raise CacheError(f"append of {n} tokens to {sid!r} failed after the scheduler counted blocks")
        t.ctx[s] += n
        t.synced[s] = t.ctx[s]
        t.nblk[s] = cdiv(int(t.ctx[s]), self.block_size)
        return len(res.cows)

    def rollback(self, s: int, sid: object, n: int) -> None:
        """Remove the last n (rejected draft) slots."""
        t = self.table
        if n <= 0:
            return
        t.ctx[s] -= n
        if self.paged:
            self.cache.rollback(sid, n)
            t.synced[s] = t.ctx[s]
            t.nblk[s] = cdiv(int(t.ctx[s]), self.block_size)

    def sync(self, s: int, sid: object) -> None:
        """Paged: tell the cache about tokens a lazily reported sequence wrote (ctx - synced)."""
        t = self.table
        lag = int(t.ctx[s] - t.synced[s])
        if lag > 0:
            res = self.cache.append(sid, lag)
            if not res.ok:  # cannot happen: the lag never crosses a block boundary
                raise CacheError(f"sync of {lag} tokens to {sid!r} needed a block")
            t.synced[s] = t.ctx[s]

    def free_group(self, g: SeqGroup) -> None:
        """Release the group's memory (not its SeqTable slots)."""
        if self.paged:
            for sid in g.seq_ids:
                self.cache.free(sid)
        else:
            self.cache.free(g.seq_ids[0])

    def group_blocks(self, g: SeqGroup) -> int:
        """Paged: physical blocks the group holds (shared ones once)."""
        if len(g.slots) == 1:
            s = g.slots[0]
            return int(self.table.nblk[s] - self.table.drop[s])
        return self.cache.unique_blocks(g.seq_ids)

    # ---- sliding window -----------------------------------------------------------------------
    def release_window(self, s: int, sid: object, first_needed: int, stored: int) -> int:
        """Paged, sliding window: release the sequence's leading blocks that lie entirely before token
        `first_needed` (the first key its next query attends). `stored`: the tokens it holds now (its
        true count: a lazily reported sequence is synced first when a released block reaches beyond
        what the cache was told). Returns the blocks dropped from its table (shared ones included)."""
        b, t = self.block_size, self.table
        target = min(first_needed, stored) // b
        d = int(t.drop[s])
        if target <= d:
            return 0
        if target * b > t.synced[s]:  # only when the window is shorter than a block
            lag = stored - int(t.synced[s])
            if not self.cache.append(sid, lag).ok:  # cannot happen: the lag stays in the last block
                raise CacheError(f"sync of {lag} tokens to {sid!r} before a window release needed a block")
            t.synced[s] = stored
        self.cache.free_blocks_before(sid, target * b)
        t.drop[s] = target
        return target - d

    def release_group_window(self, g: SeqGroup) -> int:
        """Window release for every sequence of a group before a decode step (their next query sits at
        position ctx); returns table entries dropped."""
        w, t = self.window, self.table
        if w is None:
            return 0
        n = 0
        for s, sid in zip(g.slots, g.seq_ids, strict=True):
            c = int(t.ctx[s])
            if c - w + 1 >= (int(t.drop[s]) + 1) * self.block_size:
                n += self.release_window(s, sid, c - w + 1, c)
        return n

    # ---- decode steps of multi-sequence / speculative groups -----------------------------------
    def draft_len(self, g: SeqGroup, slot: int) -> int:
        """Draft tokens a speculative sequence verifies this step (fewer near its end; 0 if none)."""
        k = g.spec.spec_k
        if not k:
            return 0
        t = self.table
        return max(0, min(k, int(t.olen[slot] - t.gen[slot]) - 1))

    def decode_need(self, g: SeqGroup) -> int:
        """Paged: free blocks the group's decode step takes (new blocks and copy-on-write copies)."""
        final, cache = self.table.final, self.cache
        return sum(cache.num_new_blocks_for_append(sid, self.draft_len(g, s) + 1)
                   for s, sid in zip(g.slots, g.seq_ids, strict=True) if final[s])

    def decode_group(self, g: SeqGroup, rng: np.random.Generator, accepted: dict[int, int],
                     ctx_out: list[int], q_out: list[int]) -> int:
        """Give each live sequence of the group its slots for this step (1 + drafts), draw how many
        drafts will be accepted, and append (context, query tokens) per sequence to the outputs.
        Returns copy-on-write copies made."""
        t = self.table
        cows = 0
        for s, sid in zip(g.slots, g.seq_ids, strict=True):
            if t.final[s] == 0:
                continue  # contiguous: a finished sample's share waits for its siblings
            k = self.draft_len(g, s)
            if self.paged:
                cows += self.append(s, sid, k + 1)
            else:
                t.ctx[s] += k + 1
            if g.spec.spec_k:
                a = accepted_drafts(rng, k, g.spec.spec_accept)
                accepted[s] = a
                t.spec[s] = k - a
            ctx_out.append(int(t.ctx[s]))
            q_out.append(k + 1)
        return cows

    # ---- swap ---------------------------------------------------------------------------------
    def restore_blocks(self, g: SeqGroup) -> int:
        """Blocks a swapped-out group needs to be rebuilt (prompt's full blocks shared by its seqs).

        With a sliding window this is the rebuild's transient peak: the whole context is allocated
        before the blocks outside the window are released again (see restore)."""
        t, b = self.table, self.block_size
        need = sum(cdiv(int(t.ctx[s]), b) for s in g.slots)
        if len(g.slots) > 1:
            need -= (len(g.slots) - 1) * (g.spec.prompt_len // b)
        return need

    def restore(self, g: SeqGroup) -> int:
        """Rebuild a swapped-out group on the GPU: the prompt shared, the rest private; returns blocks."""
        t, c = self.table, self.cache
        before = c.num_used_blocks
        s0, id0 = g.slots[0], g.seq_ids[0]
        base = int(t.ctx[s0]) if len(g.slots) == 1 else g.spec.prompt_len
        if not c.allocate(id0, base, g.hashes):
            raise CacheError(f"swap-in allocate of {id0!r} failed after the scheduler counted blocks")
        for sid in g.seq_ids[1:]:
            c.fork(id0, sid)
        for s, sid in zip(g.slots, g.seq_ids, strict=True):
            extra = int(t.ctx[s]) - base
            if extra > 0:
                res = c.append(sid, extra)
                if not res.ok:
                    raise CacheError(f"swap-in append to {sid!r} failed after the scheduler counted blocks")
                self.cows_ignored += len(res.cows)
            t.synced[s] = t.ctx[s]
            t.nblk[s] = cdiv(int(t.ctx[s]), self.block_size)
            t.drop[s] = 0
        # Sliding window: the rebuild held the whole context for a moment (restore_blocks counts that);
        # the blocks outside the window go again at once and are not transferred.
        self.release_group_window(g)
        return c.num_used_blocks - before


def accepted_drafts(rng: np.random.Generator, k: int, p: float) -> int:
    """Draft tokens accepted: the leading successes of k Bernoulli(p) trials (verification stops at
    the first rejection)."""
    if k <= 0 or p <= 0.0:
        return 0
    if p >= 1.0:
        return k
    # Geometric number of trials to the first failure, capped at k.
    return int(min(rng.geometric(1.0 - p) - 1, k))
