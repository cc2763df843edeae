"""The paged cache with vLLM v1's semantics (BlockPool + KVCacheManager, full attention, vLLM 0.34.0).

What differs from pagesim's own semantics (PagedKVCache), each as vLLM v1 does it:
- block 0 is the null block: never handed out, never counted free (num_blocks - 1 usable);
- a prefix-cache hit is the leading run of cached full blocks, capped at num_tokens - 1 tokens
  (the last prompt token is always computed); hits on free cached blocks count against the free blocks;
- a block that fills is cached even if another block holds the same hash (no deduplication: block
  tables are append-only); a lookup returns the earliest cached of the duplicates;
- free releases blocks last to first; uncached ones go to the queue's front in that order (the last
  block is reused first), cached ones to its back (evicted least recently freed first, tail first);
- there is no fork and no copy-on-write: a forked sequence is a new request with its parent's tokens
  (prefix-cache hits on the parent's full blocks, fresh blocks for the rest, the watermark applies).
The watermark (vLLM 0.34's SchedulerConfig.watermark, default 0) applies to new requests only.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sim.memory.block_pool import BlockPool
from sim.memory.outcomes import AllocStatus, AppendResult, CacheError, check_count
from sim.memory.paged_cache import PagedKVCache, SeqId

NULL_BLOCK = 0
"""vLLM v1's placeholder block id, taken out of the pool at start."""


class V1BlockPool(BlockPool):
    """BlockPool with vLLM v1's null block and duplicate-tolerant hash map.

    cached[h] is the earliest-cached block still holding h; dups[h] lists every holder in caching
    order when more than one block holds h (vLLM's BlockHashToBlockMap).
    """

    # vLLM v1's free_blocks: the order given is the eviction order, so freed uncached blocks are
    # prepended keeping it (the first given ends at the head); cached ones are appended.
    uncached_first_at_head = True

    __slots__ = ("dups",)

    def __init__(self, num_blocks: int, *, enable_caching: bool = False) -> None:
        if num_blocks < 2:
            raise ValueError(f"num_blocks = {num_blocks} out of range (valid: >= 2 with vLLM v1's null block)")
        super().__init__(num_blocks, enable_caching=enable_caching)
        self.dups: dict[int, dict[int, None]] = {}
        self.free_queue.remove(NULL_BLOCK)
        self.ref_cnt[NULL_BLOCK] = 1  # pinned: never free, never in a table

    def _drop_hash(self, b: int) -> None:
        h = self.block_hash[b]
        if h is None:
            return
        self.block_hash[b] = None
        d = self.dups.get(h)
        if d is None:
            del self.cached[h]
            return
        del d[b]
        self.cached[h] = next(iter(d))
        if len(d) == 1:
            del self.dups[h]

    def get_new_block(self) -> int:
        """The queue's head; its hash (if any) is evicted."""
        b = self.free_queue.popleft()
        if self.block_hash[b] is not None:
            self._drop_hash(b)
            self.num_evictions += 1
        self.ref_cnt[b] = 1
        return b

    def get_new_blocks(self, n: int) -> list[int]:
        """n blocks from the queue's head, in order."""
        if n > len(self.free_queue):
            raise IndexError(f"{n} blocks requested, {len(self.free_queue)} free")
        out = self.free_queue.popleft_n(n)
        bh = self.block_hash
        for b in out:
            self.ref_cnt[b] = 1
            if bh[b] is not None:
                self._drop_hash(b)
                self.num_evictions += 1
        return out

    def cache_block(self, block_id: int, block_hash: int) -> bool:
        """Record the block's hash even if another block holds it (no deduplication in v1)."""
        if not self.enable_caching or self.block_hash[block_id] is not None:
            return False
        b0 = self.cached.setdefault(block_hash, block_id)
        if b0 != block_id:
            self.dups.setdefault(block_hash, {b0: None})[block_id] = None
        self.block_hash[block_id] = block_hash
        return True

    def uncache_block(self, block_id: int) -> None:
        """Forget the block's hash (its content is about to change)."""
        self._drop_hash(block_id)

    def check_invariants(self) -> None:
        """BlockPool's invariants with the null block pinned and duplicate holders listed."""
        assert NULL_BLOCK not in self.free_queue and self.block_hash[NULL_BLOCK] is None, "null block misused"
        self.free_queue.check_invariants()
        for b, c in enumerate(self.ref_cnt):
            if b == NULL_BLOCK:
                continue
            assert c >= 0 and (c == 0) == (b in self.free_queue), f"block {b}: ref count {c} vs free queue"
        holders: dict[int, list[int]] = {}
        for b, h in enumerate(self.block_hash):
            if h is not None:
                holders.setdefault(h, []).append(b)
        assert set(holders) == set(self.cached), "hash map and block hashes disagree"
        for h, bs in holders.items():
            d = self.dups.get(h)
            assert (sorted(d) if d else [self.cached[h]]) == sorted(bs), f"hash {h}: holders {bs}"
            assert d is None or next(iter(d)) == self.cached[h], f"hash {h}: lookup is not the earliest"


class VllmV1Cache(PagedKVCache):
    """PagedKVCache with vLLM v1's semantics (module doc); same API and invariants (null block aside)."""

    semantics = "vllm-v1"
    num_reserved_blocks = 1  # the null block
    _pool: V1BlockPool

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self._hashes: dict[SeqId, list[int]] = {}  # known full-block hashes per sequence (for fork)

    def _new_pool(self) -> V1BlockPool:
        return V1BlockPool(self.num_blocks, enable_caching=self.enable_prefix_caching)

    @property
    def num_used_blocks(self) -> int:
        """Blocks referenced by at least one block table (the null block is not counted)."""
        return self.num_blocks - 1 - len(self._pool.free_queue)

    def ref_count_histogram(self) -> tuple[int, int, int, int, int]:
        """As PagedKVCache's, without the null block."""
        h = super().ref_count_histogram()
        return h[0] - 1, h[1], h[2], h[3], h[4]

    def _leading_hits(self, num_tokens: int, block_hashes: Sequence[int]) -> list[int]:
        """The leading run of cached full blocks, capped at num_tokens - 1 tokens (v1's max hit)."""
        return super()._leading_hits(max(num_tokens - 1, 0), block_hashes)

    def _need(self, num_tokens: int, hits: list[int]) -> int:
        ref = self._pool.ref_cnt
        return -(-num_tokens // self.block_size) - len(hits) + sum(1 for b in hits if ref[b] == 0)

    def can_allocate(self, num_tokens: int, block_hashes: Sequence[int] = ()) -> AllocStatus:
        """OK if the new blocks plus the revived cached ones plus the watermark fit the free blocks
        (v1's allocate_slots for a waiting request); NEVER (pagesim's label: v1 rejects such requests
        up front) if the prompt alone exceeds the usable pool minus the watermark."""
        check_count("num_tokens", num_tokens, 0)
        if -(-num_tokens // self.block_size) + self.watermark_blocks > self.num_blocks - 1:
            return AllocStatus.NEVER
        need = self._need(num_tokens, self._leading_hits(num_tokens, block_hashes))
        if need + self.watermark_blocks <= len(self._pool.free_queue):
            return AllocStatus.OK
        return AllocStatus.LATER

    def allocate(self, seq_id: SeqId, num_tokens: int, block_hashes: Sequence[int] = ()) -> bool:
        """As PagedKVCache.allocate with v1's capped hits and duplicate caching; remembers the hashes."""
        ok = super().allocate(seq_id, num_tokens, block_hashes)
        if ok:
            self._hashes[seq_id] = list(block_hashes[:num_tokens // self.block_size])
        return ok

    def append(self, seq_id: SeqId, n: int = 1, block_hashes: Sequence[int] = ()) -> AppendResult:
        """As PagedKVCache.append (no copy-on-write arises: v1 shares only full blocks)."""
        res = super().append(seq_id, n, block_hashes)
        if res.ok and block_hashes:
            self._hashes[seq_id] = list(block_hashes[:self._tables[seq_id].num_tokens // self.block_size])
        return res

    def fork(self, parent_id: SeqId, child_id: SeqId) -> None:
        """v1 has no fork: the child is a new request with the parent's tokens (module doc).
        CacheError if it cannot be allocated now (out of blocks, watermark included)."""
        t = self._table(parent_id)
        if child_id in self._tables:
            raise CacheError(f"fork {parent_id!r} -> {child_id!r}: sequence {child_id!r} already allocated")
        hashes = self._hashes.get(parent_id, [])
        n = t.num_tokens
        need = self._need(n, self._leading_hits(n, hashes))
        if need + self.watermark_blocks > len(self._pool.free_queue):
            raise CacheError(f"fork {parent_id!r} -> {child_id!r}: out of blocks (v1 allocates the child: "
                             f"{need} blocks + watermark {self.watermark_blocks}, {self.num_free_blocks} free)")
        sink, self._sink = self._sink, None
        try:
            self.allocate(child_id, n, hashes)
        finally:
            self._sink = sink
        if sink is not None:
            sink({"op": "fork", "parent": parent_id, "child": child_id})

    def free(self, seq_id: SeqId, *, now: float | None = None) -> None:
        """Drop the sequence, releasing blocks last to first (v1's order, see V1BlockPool.decref_all)."""
        self._hashes.pop(seq_id, None)
        super().free(seq_id)

    def rollback(self, seq_id: SeqId, n: int) -> int:
        """PagedKVCache.rollback, forgetting hashes of blocks no longer full."""
        freed = super().rollback(seq_id, n)
        h = self._hashes.get(seq_id)
        if h is not None:
            del h[self._tables[seq_id].num_tokens // self.block_size:]
        return freed

    def check_invariants(self) -> None:
        """PagedKVCache's invariants, counting the null block's pin as a reference."""
        pool = self._pool
        pool.ref_cnt[NULL_BLOCK] -= 1
        try:
            super().check_invariants()
        finally:
            pool.ref_cnt[NULL_BLOCK] += 1
