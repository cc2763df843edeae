"""PagedKVCache: admission with watermark, allocate/append/fork/free/rollback, copy-on-write,
prefix caching, sliding-window release, the op sink, and misuse errors."""

from __future__ import annotations

import json
from typing import Any

import pytest

from sim.memory.paged_cache import AllocStatus, AppendResult, CacheError, PagedKVCache
from sim.memory.prefix import token_block_hashes
from sim.memory.replay import replay


def cache(num_blocks: int = 10, block_size: int = 4, **kw: Any) -> PagedKVCache:
    kw.setdefault("watermark", 0.0)
    return PagedKVCache(num_blocks, block_size, **kw)


# ---- admission --------------------------------------------------------------------------------
def test_can_allocate_watermark_like_vllm_v0() -> None:
    c = PagedKVCache(100, 16)  # watermark 1% -> 1 block
    assert c.watermark_blocks == 1
    assert c.can_allocate(99 * 16) is AllocStatus.OK  # 100 - 99 >= 1
    assert c.can_allocate(99 * 16 + 1) is AllocStatus.NEVER  # needs 100 blocks
    assert c.allocate("a", 50 * 16)
    assert c.can_allocate(49 * 16) is AllocStatus.OK  # 50 free - 49 = 1 >= 1
    assert c.can_allocate(50 * 16) is AllocStatus.LATER  # would leave 0 < watermark
    assert c.allocate("b", 50 * 16)  # allocate itself applies no watermark
    assert c.num_free_blocks == 0
    c.check_invariants()


def test_watermark_applies_to_admission_only() -> None:
    c = PagedKVCache(10, 4, watermark=0.2)  # 2 blocks
    assert c.can_allocate(4 * 8) is AllocStatus.OK
    assert c.can_allocate(4 * 9) is AllocStatus.NEVER
    assert c.allocate("a", 32)
    assert c.can_append("a", 8)  # appends may use the last 2 blocks
    assert c.append("a", 8).ok and c.num_free_blocks == 0


@pytest.mark.parametrize("bad", [-0.1, 1.0, "x"])
def test_bad_watermark(bad: Any) -> None:
    with pytest.raises(CacheError, match="watermark"):
        PagedKVCache(10, 4, watermark=bad)


def test_bad_sizes() -> None:
    with pytest.raises(CacheError, match="num_blocks"):
        PagedKVCache(0, 4)
    with pytest.raises(CacheError, match="block_size"):
        PagedKVCache(4, 0)


# ---- allocate / append / free -------------------------------------------------------------------
def test_allocate_rounds_up_and_fails_without_change() -> None:
    c = cache(4)
    assert c.allocate("a", 9)  # 3 blocks
    assert c.block_table("a") == (0, 1, 2) and c.num_tokens("a") == 9
    assert c.num_free_blocks == 1
    assert not c.allocate("b", 5)  # needs 2
    assert not c.has_seq("b") and c.num_free_blocks == 1
    assert c.allocate("z", 0) and c.block_table("z") == ()
    c.check_invariants()


def test_append_fills_last_block_then_spans_blocks() -> None:
    c = cache(10)
    c.allocate("a", 3)
    assert c.num_new_blocks_for_append("a", 1) == 0
    assert c.append("a") == AppendResult(True, [])
    assert c.num_new_blocks_for_append("a", 9) == 3  # 4 -> 13 tokens: 1 -> 4 blocks
    assert c.append("a", 9).ok
    assert c.num_tokens("a") == 13 and len(c.block_table("a")) == 4
    c.check_invariants()


def test_append_out_of_blocks_changes_nothing() -> None:
    c = cache(2)
    c.allocate("a", 7)
    before = (c.block_table("a"), c.num_tokens("a"), c.num_free_blocks)
    assert not c.can_append("a", 2)
    assert c.append("a", 2) == AppendResult(False, [])
    assert (c.block_table("a"), c.num_tokens("a"), c.num_free_blocks) == before
    c.check_invariants()


def test_free_returns_blocks() -> None:
    c = cache(4)
    c.allocate("a", 16)
    c.free("a")
    assert c.num_free_blocks == 4 and not c.has_seq("a") and c.num_logical_blocks() == 0
    c.check_invariants()


# ---- fork and copy-on-write ---------------------------------------------------------------------
def test_fork_shares_everything_and_allocates_nothing() -> None:
    c = cache(10)
    c.allocate("p", 6)
    free = c.num_free_blocks
    c.fork("p", "c1")
    c.fork("p", "c2")
    assert c.num_free_blocks == free
    assert c.block_table("c1") == c.block_table("p") == c.block_table("c2")
    assert [c.ref_count(b) for b in c.block_table("p")] == [3, 3]
    assert c.num_logical_blocks() == 6 and c.unique_blocks(["p", "c1", "c2"]) == 2
    c.check_invariants()


def test_cow_copies_shared_partial_block_once() -> None:
    c = cache(10)
    c.allocate("p", 6)  # blocks 0, 1 (1 partial)
    c.fork("p", "c")
    assert c.num_new_blocks_for_append("c", 1) == 1
    r = c.append("c", 1)
    assert r.ok and r.cows == [(1, 2)] and c.total_cows == 1
    assert c.block_table("c") == (0, 2) and c.block_table("p") == (0, 1)
    assert c.ref_count(1) == 1 and c.ref_count(0) == 2
    # the parent now owns block 1 alone: no copy
    assert c.num_new_blocks_for_append("p", 1) == 0
    assert c.append("p", 1).cows == [] and c.total_cows == 1
    c.check_invariants()


def test_cow_and_new_blocks_in_one_append() -> None:
    c = cache(10)
    c.allocate("p", 6)
    c.fork("p", "c")
    # 6 -> 15 tokens: copy block 1 and add 2 blocks
    assert c.num_new_blocks_for_append("c", 9) == 3
    r = c.append("c", 9)
    assert r.cows == [(1, 2)] and c.block_table("c") == (0, 2, 3, 4)
    c.check_invariants()


def test_no_cow_when_last_block_full() -> None:
    c = cache(10)
    c.allocate("p", 8)
    c.fork("p", "c")
    r = c.append("c", 1)
    assert r.cows == [] and c.block_table("c") == (0, 1, 2)
    c.check_invariants()


def test_cow_out_of_blocks_fails_cleanly() -> None:
    c = cache(2)
    c.allocate("p", 6)
    c.fork("p", "c")
    assert c.num_free_blocks == 0
    assert c.append("c", 1) == AppendResult(False, [])
    assert c.total_cows == 0 and c.block_table("c") == (0, 1)
    c.check_invariants()


def test_free_parent_keeps_child_blocks() -> None:
    c = cache(10)
    c.allocate("p", 6)
    c.fork("p", "c")
    c.free("p")
    assert c.num_free_blocks == 8 and [c.ref_count(b) for b in c.block_table("c")] == [1, 1]
    assert c.append("c").cows == []  # sole owner again
    c.check_invariants()


# ---- rollback -----------------------------------------------------------------------------------
def test_rollback_frees_emptied_blocks() -> None:
    c = cache(10)
    c.allocate("a", 5)
    c.append("a", 6)  # 11 tokens, 3 blocks (speculative: 1 real + 5 drafts ...)
    assert c.rollback("a", 4) == 1  # 7 tokens -> 2 blocks
    assert c.num_tokens("a") == 7 and len(c.block_table("a")) == 2
    assert c.rollback("a", 0) == 0
    assert c.rollback("a", 7) == 2 and c.block_table("a") == ()
    with pytest.raises(CacheError, match="only 0 stored"):
        c.rollback("a", 1)
    c.check_invariants()


def test_rollback_shared_block_only_dereferences() -> None:
    c = cache(10)
    c.allocate("p", 8)
    c.fork("p", "c")
    assert c.rollback("c", 4) == 0  # block 1 still held by p
    assert c.ref_count(1) == 1 and c.block_table("c") == (0,)
    c.check_invariants()


def test_rollback_into_shared_full_block_then_append_copies() -> None:
    c = cache(10)
    c.allocate("p", 8)
    c.fork("p", "c")
    c.rollback("c", 2)  # c's last block (shared with p) is now partial for c
    r = c.append("c", 1)
    assert r.cows == [(1, 2)] and c.block_table("p") == (0, 1)
    c.check_invariants()


# ---- prefix caching -----------------------------------------------------------------------------
def test_prefix_cache_hit_on_live_blocks() -> None:
    c = cache(10, enable_prefix_caching=True)
    toks = list(range(10))
    h = token_block_hashes(toks, 4)
    assert c.allocate("a", 10, h)  # blocks 0,1 hashed, 2 partial
    assert c.num_prefix_hits(10, h) == 2
    free = c.num_free_blocks
    # 2 hits on blocks in use: only the partial third block is new
    assert c.allocate("b", 10, h)
    assert c.num_free_blocks == free - 1 and c.num_cached_tokens("b") == 8
    assert c.block_table("b")[:2] == c.block_table("a")[:2]
    assert c.block_table("b")[2] != c.block_table("a")[2]
    assert c.num_cache_hits == 2 and c.num_cache_queries == 4
    c.check_invariants()


def test_prefix_cache_hits_count_in_can_allocate() -> None:
    c = cache(6, enable_prefix_caching=True)
    h = token_block_hashes(list(range(16)), 4)
    c.allocate("a", 16, h)  # 4 blocks, 2 free
    assert c.can_allocate(16) is AllocStatus.LATER
    assert c.can_allocate(16, h) is AllocStatus.OK  # all 4 blocks are hits on blocks in use
    assert c.can_allocate(28, h) is AllocStatus.NEVER  # NEVER uses the full count (7 > 6 blocks)
    c.check_invariants()


def test_cached_blocks_survive_free_and_are_evicted_lru() -> None:
    c = cache(4, enable_prefix_caching=True)
    ha = token_block_hashes([1] * 8, 4)
    hb = token_block_hashes([2] * 8, 4)
    c.allocate("a", 8, ha)
    c.allocate("b", 8, hb)
    c.free("a")
    c.free("b")
    assert c.num_free_blocks == 4 and c.num_cached_blocks == 4
    # a's blocks were released first: the next two new blocks evict them
    assert c.allocate("x", 8)
    assert c.num_evictions == 2
    assert c.num_prefix_hits(8, ha) == 0 and c.num_prefix_hits(8, hb) == 2
    assert c.allocate("b2", 8, hb) and c.num_cached_tokens("b2") == 8 and c.num_free_blocks == 0
    c.check_invariants()


def test_revived_cached_block_counts_as_free_block() -> None:
    c = cache(3, enable_prefix_caching=True)
    h = token_block_hashes([5] * 8, 4)
    c.allocate("a", 8, h)
    c.free("a")
    c.allocate("y", 4)  # takes the one uncached free block
    assert c.num_free_blocks == 2
    assert c.can_allocate(8, h) is AllocStatus.OK
    assert c.allocate("b", 8, h) and c.num_free_blocks == 0 and c.num_evictions == 0
    c.check_invariants()


def test_eviction_cannot_take_a_hit_of_the_same_allocation() -> None:
    c = cache(3, enable_prefix_caching=True)
    h = token_block_hashes([7] * 4, 4)
    c.allocate("a", 4, h)
    c.free("a")  # block 0 cached, free; blocks 1, 2 uncached free
    assert c.allocate("b", 12, h)  # 1 hit (revived) + 2 new
    assert c.num_cached_tokens("b") == 4 and c.num_evictions == 0
    c.check_invariants()


def test_partial_blocks_are_never_shared() -> None:
    c = cache(10, enable_prefix_caching=True)
    h = token_block_hashes(list(range(6)), 4)
    c.allocate("a", 6, h)
    c.allocate("b", 6, h)
    assert c.block_table("a")[1] != c.block_table("b")[1]


def test_append_registers_filled_blocks() -> None:
    c = cache(10, enable_prefix_caching=True)
    toks = list(range(12))
    h = token_block_hashes(toks, 4)
    c.allocate("a", 3, h)  # chunked prefill: first chunk
    assert c.num_cached_blocks == 0
    c.append("a", 9, h)
    assert c.num_cached_blocks == 3 and c.num_prefix_hits(12, h) == 3


def test_rolled_back_hashed_block_is_uncached_before_rewrite() -> None:
    c = cache(10, enable_prefix_caching=True)
    toks = list(range(8))
    h = token_block_hashes(toks, 4)
    c.allocate("a", 8, h)
    c.rollback("a", 2)
    c.append("a", 1)  # overwrites token 6 of block 1: its cached content is gone
    assert c.num_prefix_hits(8, h) == 1
    c.check_invariants()


def test_hashes_ignored_without_prefix_caching() -> None:
    c = cache(10)
    h = token_block_hashes(list(range(8)), 4)
    c.allocate("a", 8, h)
    c.allocate("b", 8, h)
    assert c.num_free_blocks == 6 and c.num_cached_blocks == 0 and c.num_prefix_hits(8, h) == 0


# ---- sliding window -----------------------------------------------------------------------------
def test_free_blocks_before() -> None:
    c = cache(10)
    c.allocate("a", 14)  # 4 blocks
    assert c.free_blocks_before("a", 9) == 2  # blocks for tokens 0..7
    assert c.block_table("a")[:2] == (-1, -1) and c.num_free_blocks == 8
    assert c.free_blocks_before("a", 5) == 0  # already released
    assert c.append("a", 3).ok and len(c.block_table("a")) == 5
    c.fork("a", "b")
    assert c.block_table("b")[:2] == (-1, -1)
    assert c.unique_blocks(["a", "b"]) == 3
    with pytest.raises(CacheError, match="first_needed_token 99"):
        c.free_blocks_before("a", 99)
    with pytest.raises(CacheError, match="window-dropped"):
        c.rollback("a", 10)  # 7 tokens: last block (index 1) was dropped
    c.free("a")
    c.free("b")
    assert c.num_free_blocks == 10
    c.check_invariants()


# ---- misuse and op sink -------------------------------------------------------------------------
def test_misuse_names_ids() -> None:
    c = cache(10)
    c.allocate("a", 4)
    with pytest.raises(CacheError, match="'a' already allocated"):
        c.allocate("a", 4)
    with pytest.raises(CacheError, match="unknown sequence 'q'"):
        c.append("q")
    with pytest.raises(CacheError, match="unknown sequence 'q'"):
        c.fork("q", "r")
    with pytest.raises(CacheError, match="'a' already allocated"):
        c.fork("a", "a")
    with pytest.raises(CacheError, match="unknown sequence 7"):
        c.free(7)
    with pytest.raises(CacheError, match="seq 'a': n = 0"):
        c.append("a", 0)
    with pytest.raises(CacheError, match="num_tokens = -1"):
        c.allocate("b", -1)
    with pytest.raises(CacheError, match="unknown sequence 'q'"):
        c.unique_blocks(["a", "q"])
    c.check_invariants()


def test_check_invariants_detects_tampering() -> None:
    c = cache(10)
    c.allocate("a", 8)
    c._pool.ref_cnt[0] += 1  # noqa: SLF001 - deliberate corruption
    with pytest.raises(AssertionError, match="block 0"):
        c.check_invariants()


def test_op_sink_log_replays_to_the_same_state() -> None:
    ops: list[dict[str, Any]] = []
    c = PagedKVCache(12, 4, enable_prefix_caching=True, op_sink=ops.append)
    h = token_block_hashes(list(range(12)), 4)
    free_after: list[int] = []
    cows_after: list[int] = []
    steps = [
        lambda: c.allocate(1, 12, h), lambda: c.allocate(2, 10, h), lambda: c.fork(2, 3),
        lambda: c.append(3, 5), lambda: c.append(2, 1), lambda: c.rollback(3, 4),
        lambda: c.free_blocks_before(2, 4), lambda: c.allocate(4, 3), lambda: c.append(4, 9, h),
        lambda: c.free(1), lambda: c.append(4, 2),
    ]
    for step in steps:
        step()
        free_after.append(c.num_free_blocks)
        cows_after.append(c.total_cows)
    assert ops[0]["op"] == "config" and len(ops) == 1 + len(steps)
    assert c.num_cache_hits == 2  # seq 2 reuses seq 1's two full blocks; appends do not look up
    results = list(replay(json.dumps(o) for o in ops))
    assert all(r["ok"] for r in results), results
    assert [r["num_free_blocks"] for r in results] == free_after
    assert [r["total_cows"] for r in results] == cows_after
    assert results[-1]["seq_num_blocks"] == len(c.block_table(4))
