"""BlockPool: ref counts, the prefix-cache map, and eviction order (uncached first, then LRU)."""

from __future__ import annotations

import pytest

from sim.memory.block_pool import BlockPool


def test_get_incref_decref() -> None:
    p = BlockPool(3)
    b = p.get_new_block()
    assert b == 0 and p.ref_cnt[0] == 1 and p.num_free == 2 and p.num_used == 1
    p.incref(b)
    assert p.decref(b) is False and p.ref_cnt[0] == 1
    assert p.decref(b) is True and p.num_free == 3
    with pytest.raises(ValueError, match="block 0"):
        p.decref(b)
    p.check_invariants()


def test_rejects_bad_size() -> None:
    with pytest.raises(ValueError, match="num_blocks"):
        BlockPool(0)


def test_caching_disabled_records_nothing() -> None:
    p = BlockPool(2)
    b = p.get_new_block()
    assert p.cache_block(b, 123) is False
    assert p.lookup(123) is None and p.block_hash[b] is None


def test_cache_hit_revives_free_block() -> None:
    p = BlockPool(3, enable_caching=True)
    b = p.get_new_block()
    assert p.cache_block(b, 11)
    assert p.decref(b) and p.num_free == 3 and p.num_cached_free == 1
    assert p.lookup(11) == b
    p.incref(b)  # cache hit: leaves the free queue
    assert p.num_free == 2 and b not in p.free_queue and p.ref_cnt[b] == 1
    p.check_invariants()


def test_duplicate_hash_not_recorded() -> None:
    p = BlockPool(3, enable_caching=True)
    a, b = p.get_new_block(), p.get_new_block()
    assert p.cache_block(a, 5)
    assert not p.cache_block(b, 5)  # another block already caches this content
    assert not p.cache_block(a, 6)  # a block holds one hash
    assert p.lookup(5) == a and p.block_hash[b] is None
    p.uncache_block(a)
    assert p.lookup(5) is None and p.block_hash[a] is None
    p.check_invariants()


def test_eviction_order_uncached_first_then_lru() -> None:
    p = BlockPool(4, enable_caching=True)
    blocks = [p.get_new_block() for _ in range(4)]
    p.cache_block(blocks[0], 100)
    p.cache_block(blocks[1], 101)
    # release: cached 1, uncached 2, cached 0, uncached 3
    for b in (1, 2, 0, 3):
        p.decref(b)
    assert p.num_free == 4
    # uncached blocks are reused first (most recently released uncached at the head) ...
    assert p.get_new_block() == 3
    assert p.get_new_block() == 2
    assert p.num_evictions == 0
    # ... then cached ones, least recently released first, losing their hash
    assert p.get_new_block() == 1
    assert p.lookup(101) is None and p.num_evictions == 1
    assert p.lookup(100) == 0
    p.check_invariants()


def test_check_invariants_detects_ref_mismatch() -> None:
    p = BlockPool(2)
    p.get_new_block()
    p.ref_cnt[1] = 1  # in the free queue but referenced
    with pytest.raises(AssertionError, match="block 1"):
        p.check_invariants()


def test_bulk_ops_match_single_ops() -> None:
    """get_new_blocks / decref_all leave the same state as repeated get_new_block / decref."""
    pools = [BlockPool(8, enable_caching=True) for _ in range(2)]
    for p in pools:
        for _ in range(4):
            p.get_new_block()
        p.cache_block(1, 41)
        p.cache_block(3, 43)
        for blk in (3, 0, 1, 2):
            p.decref(blk)  # queue: 2 0 4 5 6 7 3 1 (uncached at the head, cached at the tail)
    bulk, single = pools
    assert bulk.get_new_blocks(7) == [single.get_new_block() for _ in range(7)]
    assert bulk.num_evictions == single.num_evictions == 1 and bulk.cached == single.cached == {41: 1}
    bulk.cache_block(0, 40)
    single.cache_block(0, 40)
    blocks = [6, 0, 2, 5]
    assert bulk.decref_all(blocks) == 4
    for x in blocks:
        single.decref(x)
    assert list(bulk.free_queue) == list(single.free_queue) and bulk.ref_cnt == single.ref_cnt
    with pytest.raises(IndexError):
        bulk.get_new_blocks(99)
    bulk.check_invariants()
