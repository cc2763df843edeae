"""Block-manager semantics by name (sim.memory.semantics): the hand-checked cases where pagesim,
vLLM v0 and vLLM v1 differ, and the cache invariants under random operations for each."""

from __future__ import annotations

import numpy as np
import pytest

from sim.memory.outcomes import AllocStatus, CacheError
from sim.memory.paged_cache import PagedKVCache
from sim.memory.semantics import DEFAULT_SEMANTICS, SEMANTICS, make_paged_cache


def cache(sem: str, n: int = 8, bs: int = 4, pc: bool = True, wm: float = 0.0) -> PagedKVCache:
    return make_paged_cache(sem, n, bs, watermark=wm, enable_prefix_caching=pc)


def test_names_and_default() -> None:
    assert set(SEMANTICS) == {"pagesim", "vllm-v0", "vllm-v1"} and DEFAULT_SEMANTICS == "pagesim"
    for name in SEMANTICS:
        assert cache(name).semantics == name
    with pytest.raises(ValueError, match="valid: pagesim, vllm-v0, vllm-v1"):
        cache("vllm-v2")


@pytest.mark.parametrize("sem, want", [("pagesim", AllocStatus.OK), ("vllm-v0", AllocStatus.LATER)])
def test_v0_admission_does_not_subtract_hits(sem: str, want: AllocStatus) -> None:
    c = cache(sem, n=4)
    assert c.allocate("a", 8, [11, 12]) and c.allocate("x", 4)
    assert c.num_free_blocks == 1
    # The same prompt would only reference a's two blocks, but v0 counts them as needed.
    assert c.can_allocate(8, [11, 12]) is want


@pytest.mark.parametrize("sem, want", [("pagesim", True), ("vllm-v0", False), ("vllm-v1", True)])
def test_v0_append_asks_for_the_worst_case(sem: str, want: bool) -> None:
    c = cache(sem, n=3 + (sem == "vllm-v1"), pc=False)  # v1: one more for its null block
    assert c.allocate("a", 5)  # two blocks, the last one partial
    assert c.allocate("b", 4)
    assert c.num_free_blocks == 0
    assert c.can_append("a", 1) is want  # the token lands in a's own partial block


def test_v0_promotion_deduplicates_a_filled_block() -> None:
    c = cache("vllm-v0", n=8)
    assert c.allocate("a", 7, [11])
    c.fork("a", "b")
    ra = c.append("a", 1, [11, 12])  # a copies the shared partial block, fills it, caches hash 12
    assert ra.ok and len(ra.cows) == 1
    free = c.num_free_blocks
    rb = c.append("b", 1, [11, 12])  # b fills its own block: hash 12 is cached, b takes a's block
    assert rb.ok and not rb.cows
    assert c.block_table("b") == c.block_table("a") and c.num_free_blocks == free + 1
    c.check_invariants()


@pytest.mark.parametrize("sem, shared", [("pagesim", False), ("vllm-v0", True)])
def test_v0_hits_need_not_be_leading(sem: str, shared: bool) -> None:
    c = cache(sem)
    assert c.allocate("a", 8, [10, 20]) and c.allocate("b", 8, [11, 20])
    assert (c.block_table("a")[1] == c.block_table("b")[1]) is shared


def test_v1_null_block_hit_cap_and_duplicates() -> None:
    c = cache("vllm-v1", n=8)
    assert c.num_free_blocks == 7
    assert c.allocate("a", 8, [11, 12]) and 0 not in c.block_table("a")
    assert c.allocate("b", 8, [11, 12])  # hit capped at 7 tokens: only block 0 is shared
    ta, tb = c.block_table("a"), c.block_table("b")
    assert ta[0] == tb[0] and ta[1] != tb[1] and c.num_cached_tokens("b") == 4
    assert c.num_cached_blocks == 2  # a duplicate is cached too, but the map names one block per hash
    c.free("a")  # a's blocks are free but stay cached; a's block 1 was the first to hold hash 12
    assert c.allocate("c", 9, [11, 12])
    assert c.block_table("c")[1] == ta[1]
    c.check_invariants()


@pytest.mark.parametrize("sem, first", [("pagesim", 0), ("vllm-v0", 2), ("vllm-v1", 3)])
def test_release_order_of_uncached_blocks(sem: str, first: int) -> None:
    c = cache(sem, pc=False)
    assert c.allocate("a", 12)
    c.free("a")
    assert c.allocate("b", 1) and c.block_table("b") == (first,)


def test_v1_fork_is_a_new_request() -> None:
    c = cache("vllm-v1", n=5)
    assert c.allocate("a", 6, [11])
    c.fork("a", "b")
    assert c.block_table("b")[0] == c.block_table("a")[0] and c.block_table("b")[1] != c.block_table("a")[1]
    assert c.append("b", 1, [11]).cows == []
    c.fork("a", "d")
    with pytest.raises(CacheError, match="out of blocks"):
        c.fork("a", "e")


@pytest.mark.parametrize("sem", sorted(SEMANTICS))
@pytest.mark.parametrize("pc", [False, True])
def test_invariants_under_random_ops(sem: str, pc: bool) -> None:
    rng = np.random.default_rng(7)
    c = make_paged_cache(sem, 24, 4, watermark=0.05, enable_prefix_caching=pc)
    toks: dict[int, list[int]] = {}
    nxt = 0
    for i in range(1500):
        r = rng.random()
        live = list(toks)
        if not live or r < 0.25:
            t = [int(x) for x in rng.integers(0, 3, int(rng.integers(1, 14)))]
            h = [hash(tuple(t[:4 * (k + 1)])) for k in range(len(t) // 4)]
            if c.can_allocate(len(t), h) is AllocStatus.OK:
                assert c.allocate(nxt, len(t), h)
                toks[nxt] = t
            nxt += 1
        elif r < 0.7:
            s = live[int(rng.integers(len(live)))]
            t = toks[s] + [int(rng.integers(0, 3))]
            h = [hash(tuple(t[:4 * (k + 1)])) for k in range(len(t) // 4)]
            if c.can_append(s, 1) and c.append(s, 1, h).ok:
                toks[s] = t
        elif r < 0.8:
            s = live[int(rng.integers(len(live)))]
            try:
                c.fork(s, nxt)
                toks[nxt] = list(toks[s])
            except CacheError:
                assert sem == "vllm-v1"
            nxt += 1
        else:
            s = live[int(rng.integers(len(live)))]
            c.free(s, now=float(i))
            del toks[s]
        c.check_invariants()
        for s, t in toks.items():
            assert c.num_tokens(s) == len(t)
