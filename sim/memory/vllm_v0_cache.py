"""The paged cache with vLLM v0's block-manager semantics (vLLM 0.7.3's SelfAttnBlockSpaceManager).

What differs from pagesim's own semantics (PagedKVCache), each as vLLM 0.7.3 does it:
- can_allocate counts every block of the prompt (prefix-cache hits are not subtracted);
- allocate walks the full blocks in order: a cached hash is a hit (any block, not only a leading
  run), a miss takes a new block at once (which may evict a block a later position would have hit);
- can_append is the worst case: one free block per block the append touches, even its own partial one;
- append takes its new blocks first, then copies a shared partial block (copy-on-write), then
  promotes a block it filled: a hash already cached elsewhere replaces the block (deduplication);
- free releases blocks first to last; free uncached blocks are reused last-released first, cached
  ones wait in vLLM's LRU evictor (sim.memory.v0_pool).
Rollback and free_before (speculative decoding, sliding window) are pagesim operations vLLM v0 has
not got in this form; they keep PagedKVCache's behaviour.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sim.memory.outcomes import AllocStatus, AppendResult, CacheError, check_count
from sim.memory.paged_cache import PagedKVCache, SeqId
from sim.memory.v0_pool import V0BlockPool


class VllmV0Cache(PagedKVCache):
    """PagedKVCache with vLLM 0.7.3's block-manager behaviour (module doc); same API and invariants."""

    semantics = "vllm-v0"
    # vLLM v0 checks can_append_slots group by group against the blocks left: every decoding sequence
    # needs one free block at its turn, so the step needs one block beyond the ones it takes.
    append_headroom = 1
    _pool: V0BlockPool

    def _new_pool(self) -> V0BlockPool:
        return V0BlockPool(self.num_blocks, enable_caching=self.enable_prefix_caching)

    # ---- admission ---------------------------------------------------------------------------
    def can_allocate(self, num_tokens: int, block_hashes: Sequence[int] = ()) -> AllocStatus:
        """vLLM v0: NEVER if the prompt's blocks exceed num_blocks - watermark; OK if the free blocks
        (evictable cached ones included) minus the prompt's blocks stay at or above the watermark."""
        check_count("num_tokens", num_tokens, 0)
        need = -(-num_tokens // self.block_size)
        if self.num_blocks - need < self.watermark_blocks:
            return AllocStatus.NEVER
        if len(self._pool.free_queue) - need >= self.watermark_blocks:
            return AllocStatus.OK
        return AllocStatus.LATER

    def allocate(self, seq_id: SeqId, num_tokens: int, block_hashes: Sequence[int] = ()) -> bool:
        """Create the table block by block as vLLM v0 does (module doc). Returns False, changing
        nothing, if the free blocks cannot cover it (hits on blocks in use need none)."""
        if seq_id in self._tables:
            raise CacheError(f"sequence {seq_id!r} already allocated")
        check_count("num_tokens", num_tokens, 0, seq_id)
        bs, pool = self.block_size, self._pool
        need = -(-num_tokens // bs)
        full = num_tokens // bs
        hashes = block_hashes if self.enable_prefix_caching else ()
        n_hashed = min(full, len(hashes))
        cached, ref = pool.cached, pool.ref_cnt
        # A hit on a block in use takes no free block; eviction during the walk only turns a hit on a
        # free cached block into a miss, and both take one, so the need is known before any change.
        in_use = sum(1 for k in range(n_hashed) if (b := cached.get(hashes[k])) is not None and ref[b])
        if need - in_use > len(pool.free_queue):
            return False
        blocks: list[int] = []
        hits = leading = 0
        for k in range(need):
            h = hashes[k] if k < n_hashed else None
            b = cached.get(h) if h is not None else None
            if b is not None:
                self._reref(ref[b], ref[b] + 1)
                pool.incref(b)
                hits += 1
                leading += leading == k
            else:
                b = pool.get_new_block()
                if h is not None:
                    pool.cache_block(b, h, (k + 1) * bs)
            blocks.append(b)
        self.num_blocks_allocated += need - hits
        self.num_blocks_reused += hits
        self.num_cache_queries += n_hashed
        self.num_cache_hits += hits
        return self._install(seq_id, blocks, num_tokens, leading * bs, need, block_hashes[:n_hashed])

    # ---- growth ------------------------------------------------------------------------------
    def num_new_blocks_for_append(self, seq_id: SeqId, n: int = 1) -> int:
        """vLLM v0's get_num_blocks_touched_by_append_slots: every block the n tokens land in counts
        as needing a free block (the worst case: a new block or a copy)."""
        t = self._table(seq_id)
        check_count("n", n, 1, seq_id)
        bs = self.block_size
        first = bs - t.num_tokens % bs  # room in the block the first token lands in
        return 1 + max(0, -(-(n - first) // bs))

    def can_append(self, seq_id: SeqId, n: int = 1) -> bool:
        """vLLM v0's can_append_slots for one sequence: touched blocks <= free blocks."""
        return self.num_new_blocks_for_append(seq_id, n) <= len(self._pool.free_queue)

    def append(self, seq_id: SeqId, n: int = 1, block_hashes: Sequence[int] = ()) -> AppendResult:
        """Add n token slots as vLLM v0's append_slots does (module doc); block_hashes (from logical
        block 0) lets blocks the append fills be promoted. ok=False, no change, if out of blocks.

        The worst-case gate is can_append's; this fails only when the blocks actually taken (new
        blocks plus one copy) exceed the free ones, as the scheduler's aggregate check expects.
        """
        t = self._table(seq_id)
        check_count("n", n, 1, seq_id)
        pool, bs, blocks, old = self._pool, self.block_size, t.blocks, t.num_tokens
        ref = pool.ref_cnt
        new = -(-(old + n) // bs) - len(blocks)
        partial = old % bs
        shared = bool(partial) and ref[blocks[-1]] > 1
        if new + shared > len(pool.free_queue):
            return AppendResult(False, [])
        for _ in range(new):  # ensure_num_empty_slots: the new blocks come first
            blocks.append(pool.get_new_block())
        self._num_refs += new
        self.num_blocks_allocated += new
        cows: list[tuple[int, int]] = []
        if shared:  # then the tokens go in: the shared partial block is copied
            k, src = len(blocks) - 1 - new, blocks[-1 - new]
            self._reref(ref[src], ref[src] - 1)
            pool.decref(src)
            dst = pool.get_new_block()
            blocks[k] = dst
            cows.append((src, dst))
            self._total_cows += 1
            self.num_blocks_allocated += 1
        elif partial and pool.block_hash[blocks[-1 - new]] is not None:
            pool.uncache_block(blocks[-1 - new])  # a rolled-back full block is about to be overwritten
        t.num_tokens = old + n
        hi = 0
        if self.enable_prefix_caching and block_hashes:
            hi = min((old + n) // bs, len(block_hashes))
            for k in range(old // bs, hi):
                self._promote(blocks, k, block_hashes[k])
        if self._sink is not None:
            op: dict[str, Any] = {"op": "append", "seq": seq_id, "n": n}
            if hi > old // bs:
                op["block_hashes"] = list(block_hashes[:hi])
            self._sink(op)
        return AppendResult(True, cows)

    def _promote(self, blocks: list[int], k: int, h: int) -> None:
        """vLLM v0's promote_to_immutable_block for the just-filled logical block k."""
        pool = self._pool
        b = blocks[k]
        c = pool.cached.get(h)
        if c is None:
            pool.cache_block(b, h, (k + 1) * self.block_size)
            return
        if c == b:
            return
        ref = pool.ref_cnt
        self._reref(ref[b], ref[b] - 1)  # the filled block goes back; the cached copy serves instead
        pool.decref(b)
        self._reref(ref[c], ref[c] + 1)
        pool.incref(c)
        blocks[k] = c
        self.num_blocks_reused += 1

    # ---- release -----------------------------------------------------------------------------
    def free(self, seq_id: SeqId, *, now: float | None = None) -> None:
        """Drop the sequence, releasing its blocks first to last (vLLM v0's BlockTable.free).

        now: the time the scheduler last ran the sequence (vLLM's access_all_blocks_in_seq): its
        blocks take it as their last access, which orders the evictor; None keeps theirs.
        """
        t = self._table(seq_id)
        del self._tables[seq_id]
        self._cached_tokens.pop(seq_id, None)
        live = t.blocks[t.num_dropped:]
        pool = self._pool
        if now is not None:
            for b in live:
                pool.last_accessed[b] = float(now)
        ref = pool.ref_cnt
        for b in live:
            if ref[b] >= 2:
                self._reref(ref[b], ref[b] - 1)
            pool.decref(b)
        self._num_refs -= len(live)
        if self._sink is not None:
            self._sink({"op": "free", "seq": seq_id})
