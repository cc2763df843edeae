"""The block pool: physical KV blocks with reference counts and an optional prefix-cache index.

It hands out free blocks (O(1), from the free queue), counts references, and maps the hash of a
full block's content to the block holding it. A block whose count drops to 0 is free; if it holds
a hash it stays cached (a later allocation may revive it) until the pool takes it for new content,
which evicts the least recently released cached block first.
"""

from __future__ import annotations

from sim.checks import MAX_NUM_BLOCKS, NUM_BLOCKS_RANGE
from sim.memory.free_queue import FreeBlockQueue


class BlockPool:
    """Physical blocks 0..num_blocks-1: ref counts, per-block content hash, hash -> block map.

    Free blocks sit in a FreeBlockQueue. Released blocks without a hash go to the head (reused
    first); released blocks with a hash go to the tail, so cached content is evicted only when no
    uncached free block is left, least recently released first (vLLM v0's split between a free list
    and an LRU evictor, done with one O(1) queue).

    Invariants (check_invariants):
      - a block is in the free queue iff its ref count is 0; ref counts are >= 0;
      - num_free + num_used == num_blocks; the queue lists no block twice;
      - cached[h] == b  iff  block_hash[b] == h (each hash names at most one block and vice versa);
      - with caching disabled no block holds a hash.
    """

    # decref_all: False puts the last freed uncached block at the queue's head (pagesim, vLLM v0's
    # order); a subclass sets True to keep the given order from the head (vLLM v1).
    uncached_first_at_head = False

    __slots__ = ("num_blocks", "enable_caching", "ref_cnt", "block_hash", "cached", "free_queue",
                 "num_evictions")

    def __init__(self, num_blocks: int, *, enable_caching: bool = False) -> None:
        if not isinstance(num_blocks, int) or isinstance(num_blocks, bool) or not 1 <= num_blocks <= MAX_NUM_BLOCKS:
            raise ValueError(f"num_blocks = {num_blocks!r} out of range ({NUM_BLOCKS_RANGE})")
        self.num_blocks = num_blocks
        self.enable_caching = enable_caching
        self.ref_cnt: list[int] = [0] * num_blocks
        self.block_hash: list[int | None] = [None] * num_blocks
        self.cached: dict[int, int] = {}
        self.free_queue = FreeBlockQueue(num_blocks)
        self.num_evictions = 0

    @property
    def num_free(self) -> int:
        """Blocks at ref count 0, cached ones included."""
        return len(self.free_queue)

    @property
    def num_used(self) -> int:
        """Blocks with ref count >= 1."""
        return self.num_blocks - len(self.free_queue)

    @property
    def num_cached_free(self) -> int:
        """Free blocks that still hold cached content (evictable)."""
        return sum(1 for b in self.cached.values() if self.ref_cnt[b] == 0)

    def get_new_block(self) -> int:
        """Take the head of the free queue, evicting its cached hash if any; ref count becomes 1.

        The caller checks num_free first; IndexError if the pool is empty.
        """
        b = self.free_queue.popleft()
        h = self.block_hash[b]
        if h is not None:
            del self.cached[h]
            self.block_hash[b] = None
            self.num_evictions += 1
        self.ref_cnt[b] = 1
        return b

    def get_new_blocks(self, n: int) -> list[int]:
        """n blocks from get_new_block (same order and eviction), with the loop kept local for speed."""
        if n > len(self.free_queue):
            raise IndexError(f"{n} blocks requested, {len(self.free_queue)} free")
        bh, ref = self.block_hash, self.ref_cnt
        out = self.free_queue.popleft_n(n)
        for b in out:
            ref[b] = 1
            h = bh[b]
            if h is not None:
                del self.cached[h]
                bh[b] = None
                self.num_evictions += 1
        return out

    def decref_all(self, blocks: list[int]) -> int:
        """decref each block in the given order (same queue order as repeated decref); returns
        how many became free."""
        ref, bh = self.ref_cnt, self.block_hash
        to_head: list[int] = []
        to_tail: list[int] = []
        for b in blocks:
            c = ref[b] - 1
            if c < 0:
                raise ValueError(f"block {b}: reference count would go below 0")
            ref[b] = c
            if not c:
                (to_head if bh[b] is None else to_tail).append(b)
        if self.uncached_first_at_head:
            to_head.reverse()
        self.free_queue.extendleft(to_head)
        self.free_queue.extend(to_tail)
        return len(to_head) + len(to_tail)

    def lookup(self, block_hash: int) -> int | None:
        """The block caching this content hash, or None."""
        return self.cached.get(block_hash)

    def incref(self, block_id: int) -> None:
        """Add a reference; a free (cached) block leaves the free queue (a cache hit revives it)."""
        if self.ref_cnt[block_id] == 0:
            self.free_queue.remove(block_id)
        self.ref_cnt[block_id] += 1

    def decref(self, block_id: int) -> bool:
        """Drop a reference; returns True if the block became free."""
        c = self.ref_cnt[block_id] - 1
        if c < 0:
            raise ValueError(f"block {block_id}: reference count would go below 0")
        self.ref_cnt[block_id] = c
        if c:
            return False
        if self.block_hash[block_id] is None:
            self.free_queue.appendleft(block_id)
        else:
            self.free_queue.append(block_id)
        return True

    def cache_block(self, block_id: int, block_hash: int) -> bool:
        """Record that block_id holds the full block with this content hash.

        Returns False (and records nothing) when caching is off, the block already has a hash, or
        another block already caches this hash (duplicates are not merged; see docs/memory.md).
        """
        if not self.enable_caching or block_hash in self.cached or self.block_hash[block_id] is not None:
            return False
        self.cached[block_hash] = block_id
        self.block_hash[block_id] = block_hash
        return True

    def uncache_block(self, block_id: int) -> None:
        """Forget the block's hash (its content is about to change)."""
        h = self.block_hash[block_id]
        if h is not None:
            del self.cached[h]
            self.block_hash[block_id] = None

    def check_invariants(self) -> None:
        """Raise AssertionError naming the block if a pool invariant is broken."""
        self.free_queue.check_invariants()
        fq = self.free_queue
        for b, c in enumerate(self.ref_cnt):
            assert c >= 0, f"block {b}: negative ref count {c}"
            assert (c == 0) == (b in fq), f"block {b}: ref count {c} but in free queue = {b in fq}"
        assert self.num_free + self.num_used == self.num_blocks
        for h, b in self.cached.items():
            assert self.block_hash[b] == h, f"block {b}: cached under {h} but holds {self.block_hash[b]}"
        n_hashed = sum(h is not None for h in self.block_hash)
        assert n_hashed == len(self.cached), f"{n_hashed} blocks hold a hash but {len(self.cached)} cached"
        if not self.enable_caching:
            assert not self.cached, "caching disabled but blocks are cached"
