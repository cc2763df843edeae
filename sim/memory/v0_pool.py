"""vLLM v0's block pool: a LIFO free list of blocks without a hash plus an LRU evictor of cached ones.

vLLM 0.7.3's PrefixCachingBlockAllocator keeps two places for a free block: blocks without a content
hash go to the front of a deque (reused first, last released first), cached blocks (full, hashed) go
to an evictor, a heap ordered by (last access time, -tokens up to the block's end, block id). A new
block comes from the deque first, from the evictor only when the deque is empty. The evictor keeps
stale heap entries (a cache hit removes a block from its table, not from the heap) and skips them
when it pops; both are mirrored here so the eviction order is the real one.
"""

from __future__ import annotations

import heapq

from sim.memory.block_pool import BlockPool
from sim.memory.free_queue import FreeBlockQueue

NEVER_ACCESSED = -1.0
"""vLLM v0's _DEFAULT_LAST_ACCESSED_TIME: a block no scheduler step has marked as accessed."""


class LRUEvictor:
    """vLLM v0's LRUEvictor: free cached blocks, evicted oldest access first, then deepest first.

    `table` maps block -> (last access, depth, hash) of the blocks in the evictor; the heap holds
    (last access, -depth, block, hash) and may hold stale entries, filtered at eviction and dropped
    when the heap outgrows 50x the table (vLLM's CLEANUP_THRESHOLD).
    """

    __slots__ = ("table", "heap")
    CLEANUP_THRESHOLD = 50

    def __init__(self) -> None:
        self.table: dict[int, tuple[float, int, int]] = {}
        self.heap: list[tuple[float, int, int, int]] = []

    def __len__(self) -> int:
        return len(self.table)

    def __contains__(self, block_id: int) -> bool:
        return block_id in self.table

    def add(self, block_id: int, block_hash: int, depth: int, last_accessed: float) -> None:
        """A cached block reached ref count 0."""
        self.table[block_id] = (last_accessed, depth, block_hash)
        heapq.heappush(self.heap, (last_accessed, -depth, block_id, block_hash))
        if len(self.heap) > self.CLEANUP_THRESHOLD * len(self.table):
            self.heap = [(t, -d, b, h) for b, (t, d, h) in self.table.items()]
            heapq.heapify(self.heap)

    def remove(self, block_id: int) -> None:
        """A cached block was hit: it leaves the table (its heap entry goes stale)."""
        del self.table[block_id]

    def evict(self) -> tuple[int, int]:
        """(block, hash) of the block to reuse. vLLM accepts a heap entry whose block is in the table
        with the same access time; an entry whose hash is no longer the block's is stale as well here
        (vLLM would return the old hash and fail its own assertion; see docs/memory.md)."""
        while self.heap:
            t, _, b, h = heapq.heappop(self.heap)
            e = self.table.get(b)
            if e is not None and e[0] == t and e[2] == h:
                del self.table[b]
                return b, h
        raise IndexError("evict from an empty evictor")


class _FreeView:
    """len() and `in` over both free places, so PagedKVCache's free-block reads stay one call."""

    __slots__ = ("hashless", "evictor")

    def __init__(self, hashless: FreeBlockQueue, evictor: LRUEvictor) -> None:
        self.hashless = hashless
        self.evictor = evictor

    def __len__(self) -> int:
        return len(self.hashless) + len(self.evictor.table)

    def __contains__(self, block_id: int) -> bool:
        return block_id in self.hashless or block_id in self.evictor.table

    def check_invariants(self) -> None:
        self.hashless.check_invariants()


class V0BlockPool(BlockPool):
    """BlockPool with vLLM v0's two free places (see the module doc) and per-block access times.

    last_accessed[b]: the access time vLLM's block tracker holds for a block in use (reset to
    NEVER_ACCESSED whenever the block starts or stops being used); depth[b]: tokens from the start of
    the sequence to the end of a cached block (the evictor's tie-break).
    """

    __slots__ = ("hashless", "evictor", "last_accessed", "depth")

    def __init__(self, num_blocks: int, *, enable_caching: bool = False) -> None:
        super().__init__(num_blocks, enable_caching=enable_caching)
        self.hashless = self.free_queue
        self.evictor = LRUEvictor()
        self.free_queue = _FreeView(self.hashless, self.evictor)  # type: ignore[assignment]
        self.last_accessed = [NEVER_ACCESSED] * num_blocks
        self.depth = [0] * num_blocks

    @property
    def num_cached_free(self) -> int:
        """Free blocks that still hold cached content (the evictor's)."""
        return len(self.evictor)

    def get_new_block(self) -> int:
        """A block from the hashless list, else the evictor's choice (its hash is dropped)."""
        if len(self.hashless):
            b = self.hashless.popleft()
        else:
            b, h = self.evictor.evict()
            del self.cached[h]
            self.block_hash[b] = None
            self.num_evictions += 1
        self.ref_cnt[b] = 1
        self.last_accessed[b] = NEVER_ACCESSED
        return b

    def get_new_blocks(self, n: int) -> list[int]:
        """n blocks, one get_new_block at a time (vLLM allocates block by block)."""
        if n > len(self.free_queue):
            raise IndexError(f"{n} blocks requested, {len(self.free_queue)} free")
        return [self.get_new_block() for _ in range(n)]

    def incref(self, block_id: int) -> None:
        """A reference more; a free cached block leaves the evictor (a hit revives it)."""
        if self.ref_cnt[block_id] == 0:
            if block_id in self.evictor.table:
                self.evictor.remove(block_id)
            else:
                self.hashless.remove(block_id)
            self.last_accessed[block_id] = NEVER_ACCESSED
        self.ref_cnt[block_id] += 1

    def decref(self, block_id: int) -> bool:
        """A reference less; at 0 a cached block goes to the evictor, any other to the list's front."""
        c = self.ref_cnt[block_id] - 1
        if c < 0:
            raise ValueError(f"block {block_id}: reference count would go below 0")
        self.ref_cnt[block_id] = c
        if c:
            return False
        h = self.block_hash[block_id]
        if h is None:
            self.hashless.appendleft(block_id)
        else:
            self.evictor.add(block_id, h, self.depth[block_id], self.last_accessed[block_id])
        self.last_accessed[block_id] = NEVER_ACCESSED
        return True

    def decref_all(self, blocks: list[int]) -> int:
        """decref each block in the given order; returns how many became free."""
        return sum(self.decref(b) for b in blocks)

    def cache_block(self, block_id: int, block_hash: int, depth: int = 0) -> bool:
        """Record the block's hash (as BlockPool.cache_block) and its depth for the evictor."""
        if not super().cache_block(block_id, block_hash):
            return False
        self.depth[block_id] = depth
        return True

    def check_invariants(self) -> None:
        """BlockPool's invariants, with the hashless list holding exactly the free uncached blocks."""
        super().check_invariants()
        for b in self.hashless:
            assert self.block_hash[b] is None, f"block {b}: cached but on the hashless free list"
        for b in self.evictor.table:
            assert self.block_hash[b] is not None, f"block {b}: in the evictor without a hash"
