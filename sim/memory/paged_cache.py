"""The paged KV-cache manager (PagedAttention): per-sequence block tables over a shared block pool.

This is what the scheduler calls: admission check with a watermark, allocate, append (with lazy
copy-on-write of a shared partial last block), fork, free, rollback (speculative decoding) and
sliding-window release. Optional prefix caching reuses cached full blocks by content hash.
Semantics follow vLLM's v0 block manager; the differences are listed in docs/memory.md.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Sequence
from typing import Any

from sim.memory.block_pool import BlockPool
from sim.memory.block_table import DROPPED, BlockTable
from sim.memory.outcomes import AllocStatus, AppendResult, CacheError, check_count
from sim.memory.shared_refs import SharedRefs

SeqId = Hashable


class PagedKVCache:
    """Block tables of live sequences over a BlockPool of `num_blocks` blocks of `block_size` tokens.

    Invariants (check_invariants):
      - num_free_blocks + num_used_blocks == num_blocks (cached ref-0 blocks count as free);
      - a block is free (in the free queue) iff its ref count is 0; the queue lists no block twice;
      - every block's ref count == the number of block-table entries referencing it;
      - each table has ceil(num_tokens / block_size) entries, no physical block twice;
      - the prefix-cache map and the per-block hashes agree (pool invariants).
    Running out of blocks is a return value (False / ok=False / LATER) and leaves the state unchanged.

    This class is pagesim's own semantics ("pagesim"); sim.memory.semantics names the vLLM ones.
    """

    semantics = "pagesim"
    # Free blocks a decode step must leave beyond the blocks it takes (see VllmV0Cache).
    append_headroom = 0
    # Blocks the engine keeps out of use for good (vLLM v1's null block); neither free nor used.
    num_reserved_blocks = 0

    def __init__(self, num_blocks: int, block_size: int, *, watermark: float = 0.01,
                 enable_prefix_caching: bool = False,
                 op_sink: Callable[[dict[str, Any]], None] | None = None) -> None:
        check_count("num_blocks", num_blocks, 1)
        check_count("block_size", block_size, 1)
        if not (isinstance(watermark, (int, float)) and 0.0 <= watermark < 1.0):
            raise CacheError(f"watermark = {watermark!r} out of range (valid: fraction of blocks in [0, 1))")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.watermark = float(watermark)
        # Same rounding as vLLM v0: int(watermark * num_gpu_blocks).
        self.watermark_blocks = int(watermark * num_blocks)
        self.enable_prefix_caching = bool(enable_prefix_caching)
        self._pool = self._new_pool()
        self._tables: dict[SeqId, BlockTable] = {}
        self._cached_tokens: dict[SeqId, int] = {}
        self._num_refs = 0
        self._total_cows = 0
        self.num_cache_queries = 0  # hashed blocks looked up by allocate
        self.num_cache_hits = 0  # of those, found in the cache
        # Allocator monitoring (sim.records.monitor): block-table entries filled with a fresh block from the
        # pool (copy-on-write copies included) vs. served by an existing block (prefix-cache hit or fork),
        # and entries dropped by the sliding window.
        self.num_blocks_allocated = 0
        self.num_blocks_reused = 0
        self.num_window_released = 0
        self._shared = SharedRefs()  # ref count (>= 2) -> blocks at that count, kept incrementally
        self._sink = op_sink
        if op_sink is not None:
            op_sink({"op": "config", "block_size": block_size, "num_blocks": num_blocks,
                     "prefix_caching": self.enable_prefix_caching, "watermark": self.watermark,
                     "semantics": self.semantics})

    def _new_pool(self) -> BlockPool:
        """The block pool behind the tables (the semantics subclasses bring their own)."""
        return BlockPool(self.num_blocks, enable_caching=self.enable_prefix_caching)

    # ---- sizes -------------------------------------------------------------------------------
    @property
    def num_free_blocks(self) -> int:
        """Blocks at ref count 0 (cached ones included: they are evicted on demand)."""
        return len(self._pool.free_queue)  # read every step: one call, not pool.num_free's two

    @property
    def num_used_blocks(self) -> int:
        """Blocks referenced by at least one block table."""
        return self.num_blocks - len(self._pool.free_queue)

    @property
    def total_cows(self) -> int:
        """Copy-on-write block copies made so far."""
        return self._total_cows

    @property
    def num_evictions(self) -> int:
        """Cached blocks whose content was evicted to make room."""
        return self._pool.num_evictions

    @property
    def num_cached_blocks(self) -> int:
        """Blocks currently holding a prefix-cache hash (in use or free)."""
        return len(self._pool.cached)

    @property
    def num_seqs(self) -> int:
        """Live sequences."""
        return len(self._tables)

    def ref_count(self, block_id: int) -> int:
        """Current reference count of a physical block."""
        return self._pool.ref_cnt[block_id]

    def ref_count_histogram(self) -> tuple[int, int, int, int, int]:
        """Used blocks by reference count: (1, 2, 3-4, 5-8, > 8 block-table entries). O(distinct counts)."""
        if not self._shared:  # nothing shared (the common case; read every step by the monitor)
            return self.num_blocks - len(self._pool.free_queue), 0, 0, 0, 0
        return self._shared.histogram(self._pool.num_used)

    def _reref(self, old: int, new: int) -> None:
        """A block's ref count changes from old to new (keeps the shared-block histogram)."""
        self._shared.move(old, new)

    # ---- queries -----------------------------------------------------------------------------
    def _table(self, seq_id: SeqId) -> BlockTable:
        t = self._tables.get(seq_id)
        if t is None:
            raise CacheError(f"unknown sequence {seq_id!r}")
        return t

    def has_seq(self, seq_id: SeqId) -> bool:
        """True if the sequence is allocated."""
        return seq_id in self._tables

    def num_tokens(self, seq_id: SeqId) -> int:
        """Tokens stored for the sequence."""
        return self._table(seq_id).num_tokens

    def block_table(self, seq_id: SeqId) -> tuple[int, ...]:
        """Physical block ids in logical order (-1 for blocks released by free_blocks_before)."""
        return tuple(self._table(seq_id).blocks)

    def held_blocks(self, seq_id: SeqId, start: int, stop: int) -> list[int]:
        """Physical ids of the sequence's logical blocks start..stop-1 (-1 for released ones)."""
        return self._table(seq_id).blocks[start:stop]

    def num_cached_tokens(self, seq_id: SeqId) -> int:
        """Prompt tokens the sequence's allocate found in the prefix cache (whole blocks).

        May equal the prompt length; an engine that must compute at least one token caps it.
        """
        self._table(seq_id)
        return self._cached_tokens.get(seq_id, 0)

    def num_logical_blocks(self) -> int:
        """Sum over sequences of referenced block-table entries (== sum of ref counts)."""
        return self._num_refs

    def unique_blocks(self, seq_ids: Iterable[SeqId]) -> int:
        """Distinct physical blocks referenced by a group of sequences (e.g. swap size)."""
        seen: set[int] = set()
        for s in seq_ids:
            t = self._table(s)
            seen.update(t.blocks[t.num_dropped:])
        return len(seen)

    def _leading_hits(self, num_tokens: int, block_hashes: Sequence[int]) -> list[int]:
        """Blocks caching the leading full blocks of a prompt; stops at the first miss (chained hashes)."""
        if not (self.enable_prefix_caching and block_hashes):
            return []
        hits: list[int] = []
        lookup = self._pool.cached.get
        for k in range(min(num_tokens // self.block_size, len(block_hashes))):
            b = lookup(block_hashes[k])
            if b is None:
                break
            hits.append(b)
        return hits

    def num_prefix_hits(self, num_tokens: int, block_hashes: Sequence[int] = ()) -> int:
        """Leading full blocks of such a prompt that allocate would now take from the prefix cache."""
        return len(self._leading_hits(num_tokens, block_hashes))

    # ---- admission ---------------------------------------------------------------------------
    def can_allocate(self, num_tokens: int, block_hashes: Sequence[int] = ()) -> AllocStatus:
        """Admission check with the watermark (vLLM v0): NEVER if the prompt needs more than
        num_blocks - watermark_blocks blocks; OK if the free blocks left after it stay at or above the
        watermark; LATER otherwise. Prefix-cache hits on blocks in use need no free block.
        """
        check_count("num_tokens", num_tokens, 0)
        need = -(-num_tokens // self.block_size)
        if self.num_blocks - need < self.watermark_blocks:
            return AllocStatus.NEVER
        ref = self._pool.ref_cnt
        in_use = sum(1 for b in self._leading_hits(num_tokens, block_hashes) if ref[b] > 0)
        if self._pool.num_free - (need - in_use) >= self.watermark_blocks:
            return AllocStatus.OK
        return AllocStatus.LATER

    # ---- mutations ---------------------------------------------------------------------------
    def allocate(self, seq_id: SeqId, num_tokens: int, block_hashes: Sequence[int] = ()) -> bool:
        """Create the sequence's table for `num_tokens` tokens, reusing cached leading blocks.

        block_hashes[k] is the content hash of full block k (see sim.memory.prefix); ignored unless prefix
        caching is on. Applies no watermark (that is can_allocate's job). Returns False, changing
        nothing, if there are not enough free blocks. CacheError if seq_id exists.
        """
        if seq_id in self._tables:
            raise CacheError(f"sequence {seq_id!r} already allocated")
        check_count("num_tokens", num_tokens, 0, seq_id)
        bs, pool = self.block_size, self._pool
        need = -(-num_tokens // bs)
        hits = self._leading_hits(num_tokens, block_hashes)
        ref = pool.ref_cnt
        revived = sum(1 for b in hits if ref[b] == 0)  # free cached blocks leave the free queue
        if need - len(hits) + revived > pool.num_free:
            return False
        for b in hits:  # before taking new blocks, so eviction cannot take a hit
            if ref[b]:
                self._reref(ref[b], ref[b] + 1)
            pool.incref(b)
        blocks = hits + pool.get_new_blocks(need - len(hits))
        self.num_blocks_allocated += need - len(hits)
        self.num_blocks_reused += len(hits)
        n_hashed = 0
        if self.enable_prefix_caching and block_hashes:
            n_hashed = min(num_tokens // bs, len(block_hashes))
            for k in range(len(hits), n_hashed):
                pool.cache_block(blocks[k], block_hashes[k])
            self.num_cache_queries += n_hashed
            self.num_cache_hits += len(hits)
        return self._install(seq_id, blocks, num_tokens, len(hits) * bs, need, block_hashes[:n_hashed])

    def _install(self, seq_id: SeqId, blocks: list[int], num_tokens: int, cached_tokens: int, need: int,
                 hashed: Sequence[int]) -> bool:
        """Record an allocated sequence's table and prefix-cache hit, and log the allocate."""
        self._tables[seq_id] = BlockTable(blocks, num_tokens)
        if cached_tokens:
            self._cached_tokens[seq_id] = cached_tokens
        self._num_refs += need
        if self._sink is not None:
            op: dict[str, Any] = {"op": "allocate", "seq": seq_id, "n": num_tokens}
            if hashed:
                op["block_hashes"] = list(hashed)
            self._sink(op)
        return True

    def num_new_blocks_for_append(self, seq_id: SeqId, n: int = 1) -> int:
        """Free blocks an append of n tokens takes: new blocks plus one copy if the last block is shared."""
        t = self._table(seq_id)
        check_count("n", n, 1, seq_id)
        bs = self.block_size
        new = -(-(t.num_tokens + n) // bs) - len(t.blocks)
        cow = 1 if t.num_tokens % bs and self._pool.ref_cnt[t.blocks[-1]] > 1 else 0
        return new + cow

    def can_append(self, seq_id: SeqId, n: int = 1) -> bool:
        """True if append(seq_id, n) would succeed now (no watermark, as in vLLM v0)."""
        return self.num_new_blocks_for_append(seq_id, n) <= self._pool.num_free

    def append(self, seq_id: SeqId, n: int = 1, block_hashes: Sequence[int] = ()) -> AppendResult:
        """Add n token slots to the sequence (n may span several blocks).

        If the partially filled last block is shared (ref count > 1) the sequence first gets a private
        copy of it (copy-on-write, reported in cows). block_hashes, indexed from logical block 0 like
        allocate's, registers blocks this append fills. ok=False and no change if out of blocks.
        """
        # num_new_blocks_for_append, inlined: this is the engine's per-block-event hot path.
        t = self._tables.get(seq_id)
        if t is None:
            raise CacheError(f"unknown sequence {seq_id!r}")
        if type(n) is not int or n < 1:
            check_count("n", n, 1, seq_id)
        pool, bs, blocks, old = self._pool, self.block_size, t.blocks, t.num_tokens
        new = -(-(old + n) // bs) - len(blocks)
        partial = old % bs
        ref = pool.ref_cnt
        shared = partial and ref[blocks[-1]] > 1
        if new + (1 if shared else 0) > len(pool.free_queue):
            return AppendResult(False, [])
        cows: list[tuple[int, int]] = []
        if partial:
            last = blocks[-1]
            if shared:
                dst = pool.get_new_block()
                self._reref(ref[last], ref[last] - 1)
                pool.decref(last)  # still referenced by the other holders
                self.num_blocks_allocated += 1
                blocks[-1] = dst
                cows.append((last, dst))
                self._total_cows += 1
            elif pool.block_hash[last] is not None:
                pool.uncache_block(last)  # a rolled-back full block is about to be overwritten
        if new == 1:
            blocks.append(pool.get_new_block())
        elif new:
            blocks.extend(pool.get_new_blocks(new))
        self._num_refs += new
        self.num_blocks_allocated += new
        t.num_tokens = old + n
        hi = 0
        if self.enable_prefix_caching and block_hashes:
            hi = min((old + n) // bs, len(block_hashes))
            for k in range(old // bs, hi):
                pool.cache_block(blocks[k], block_hashes[k])
        if self._sink is not None:
            op: dict[str, Any] = {"op": "append", "seq": seq_id, "n": n}
            if hi > old // bs:
                op["block_hashes"] = list(block_hashes[:hi])
            self._sink(op)
        return AppendResult(True, cows)

    def fork(self, parent_id: SeqId, child_id: SeqId) -> None:
        """Child shares every block of the parent (the partial last block too); allocates nothing."""
        t = self._table(parent_id)
        if child_id in self._tables:
            raise CacheError(f"fork {parent_id!r} -> {child_id!r}: sequence {child_id!r} already allocated")
        child = t.copy()
        ref, h = self._pool.ref_cnt, self._shared
        for b in child.blocks[child.num_dropped:]:
            r = ref[b]  # >= 1: blocks in a table are never in the free queue
            ref[b] = r + 1
            if r >= 2:  # the histogram update of _reref, inlined (forks of long beams touch many blocks)
                c = h[r] - 1
                if c:
                    h[r] = c
                else:
                    del h[r]
            h[r + 1] = h.get(r + 1, 0) + 1
        self._num_refs += child.num_live_blocks
        self.num_blocks_reused += child.num_live_blocks
        self._tables[child_id] = child
        if self._sink is not None:
            self._sink({"op": "fork", "parent": parent_id, "child": child_id})

    def free(self, seq_id: SeqId, *, now: float | None = None) -> None:
        """Drop the sequence; blocks whose ref count reaches 0 become free (cached ones stay cached).

        Blocks are released last-first so a sequence's tail is evicted before its head (vLLM v1).
        now (the sequence's last access time) matters only to vLLM v0's evictor (VllmV0Cache).
        """
        t = self._table(seq_id)
        del self._tables[seq_id]
        self._cached_tokens.pop(seq_id, None)
        live = t.blocks[t.num_dropped:]
        live.reverse()
        if self._shared:
            ref = self._pool.ref_cnt
            for b in live:
                if ref[b] >= 2:
                    self._reref(ref[b], ref[b] - 1)
        self._pool.decref_all(live)
        self._num_refs -= len(live)
        if self._sink is not None:
            self._sink({"op": "free", "seq": seq_id})

    def rollback(self, seq_id: SeqId, n: int) -> int:
        """Remove the last n tokens (rejected draft tokens); returns blocks whose ref count reached 0.

        Blocks left empty are dropped from the table; a block shared with another sequence is only
        dereferenced. CacheError if n exceeds the tokens stored or would uncover a dropped block.
        """
        t = self._table(seq_id)
        check_count("n", n, 0, seq_id)
        if n > t.num_tokens:
            raise CacheError(f"seq {seq_id!r}: rollback of {n} tokens but only {t.num_tokens} stored")
        bs = self.block_size
        new_tokens = t.num_tokens - n
        keep = -(-new_tokens // bs)
        if keep and keep <= t.num_dropped and new_tokens % bs:
            raise CacheError(f"seq {seq_id!r}: rollback to {new_tokens} tokens would leave a partial "
                             f"window-dropped last block")
        freed = 0
        blocks = t.blocks
        while len(blocks) > keep:
            b = blocks.pop()
            if b == DROPPED:
                t.num_dropped -= 1
            else:
                self._num_refs -= 1
                if self._shared:
                    self._reref(self._pool.ref_cnt[b], self._pool.ref_cnt[b] - 1)
                freed += self._pool.decref(b)
        t.num_tokens = new_tokens
        if self._sink is not None:
            self._sink({"op": "rollback", "seq": seq_id, "n": n})
        return freed

    def free_blocks_before(self, seq_id: SeqId, first_needed_token: int) -> int:
        """Sliding window: release the leading blocks lying entirely before `first_needed_token`.

        Their table entries become -1 so logical indices stay valid. Returns blocks whose ref count
        reached 0. CacheError if first_needed_token is beyond the tokens stored.
        """
        t = self._table(seq_id)
        check_count("first_needed_token", first_needed_token, 0, seq_id)
        if first_needed_token > t.num_tokens:
            raise CacheError(f"seq {seq_id!r}: first_needed_token {first_needed_token} > "
                             f"{t.num_tokens} tokens stored")
        end = first_needed_token // self.block_size
        freed = 0
        for k in range(t.num_dropped, end):
            b = t.blocks[k]
            if self._shared:
                self._reref(self._pool.ref_cnt[b], self._pool.ref_cnt[b] - 1)
            freed += self._pool.decref(b)
            t.blocks[k] = DROPPED
        if end > t.num_dropped:
            self._num_refs -= end - t.num_dropped
            self.num_window_released += end - t.num_dropped
            t.num_dropped = end
        if self._sink is not None:
            self._sink({"op": "free_before", "seq": seq_id, "token": first_needed_token})
        return freed

    # ---- checking ----------------------------------------------------------------------------
    def check_invariants(self) -> None:
        """Raise AssertionError naming the block or sequence if an invariant (class doc) is broken."""
        pool = self._pool
        pool.check_invariants()
        refs = [0] * self.num_blocks
        for s, t in self._tables.items():
            t.check(self.block_size, s)
            for b in t.blocks[t.num_dropped:]:
                refs[b] += 1
        for b, (want, got) in enumerate(zip(refs, pool.ref_cnt, strict=True)):
            assert want == got, f"block {b}: ref count {got} but {want} block-table references"
        assert sum(refs) == self._num_refs, f"logical block count {self._num_refs} != {sum(refs)}"
        shared = SharedRefs.recount(refs)
        assert shared == self._shared, f"shared-block histogram {self._shared} != recount {shared}"
        assert self.num_free_blocks + self.num_used_blocks + self.num_reserved_blocks == self.num_blocks
