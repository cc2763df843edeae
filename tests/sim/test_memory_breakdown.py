"""Memory breakdown: hand-computed cases, and the six categories summing to the pool at every sample
of real runs (paged, contiguous with each placement, every lifecycle feature mixed in)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sim.config import ContiguousCacheSpec, PagedCacheSpec, SchedulerConfig, SimConfig
from sim.engine import Engine
from sim.records.breakdown import breakdown, from_sums
from sim.records.results import MEMORY_CATEGORIES
from sim.request import RequestSpec


def arr(*v: int) -> np.ndarray:
    return np.array(v, dtype=np.int64)


def test_hand_computed_paged_case() -> None:
    # A: 5 tokens in 2 blocks of 4 (8 slots), will reach 10 -> 3 reserved, 0 internal.
    # B: 9 slots written, 2 of them drafts; 12 slots, stores at most 10 -> 1 reserved, 2 internal.
    bd = breakdown(arr(5, 9), arr(0, 2), arr(8, 12), arr(10, 10), used_slots=20, capacity=40, external_frag=4)
    assert (bd.token_states, bd.speculative, bd.reserved, bd.internal_frag) == (12, 2, 4, 2)
    assert (bd.external_frag, bd.free, bd.logical_token_states) == (4, 16, 12)
    bd.check_invariants()


def test_shared_blocks_count_once() -> None:
    # Two samples of a 4-token prompt (one full shared block) with 3 private tokens each.
    bd = breakdown(arr(7, 7), arr(0, 0), arr(8, 8), arr(8, 8), used_slots=12, capacity=16, external_frag=0)
    assert (bd.token_states, bd.logical_token_states, bd.reserved, bd.internal_frag, bd.free) == (10, 14, 2, 0, 4)
    bd.check_invariants()


def test_hand_computed_contiguous_case() -> None:
    # An oracle-style 16-slot reservation for 10 prompt tokens that will store at most 14.
    bd = breakdown(arr(10), arr(0), arr(16), arr(14), used_slots=16, capacity=30, external_frag=9)
    assert (bd.token_states, bd.reserved, bd.internal_frag, bd.external_frag, bd.free) == (10, 4, 2, 9, 5)


def test_external_fragmentation_cannot_exceed_free() -> None:
    with pytest.raises(ValueError, match="external_frag"):
        breakdown(arr(4), arr(0), arr(4), arr(4), used_slots=4, capacity=8, external_frag=5)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 50), st.integers(0, 50), st.integers(0, 50), st.integers(0, 8)),
                max_size=20), st.integers(0, 100))
def test_categories_always_sum_to_capacity(rows: list[tuple[int, int, int, int]], spare: int) -> None:
    # Valid states only: spec <= ctx <= min(alloc, final).
    ctx = np.array([min(a, b) for a, b, _, _ in rows], dtype=np.int64)
    alloc = np.array([a + c for a, _, c, _ in rows], dtype=np.int64)
    final = np.array([b for _, b, _, _ in rows], dtype=np.int64)
    ctx = np.minimum(ctx, np.minimum(alloc, final))
    spec = np.minimum(np.array([d for *_, d in rows], dtype=np.int64), ctx)
    used = int(alloc.sum())
    bd = breakdown(ctx, spec, alloc, final, used_slots=used, capacity=used + spare, external_frag=spare // 2)
    bd.check_invariants()
    same = from_sums(int(ctx.sum()), int(spec.sum()), int(alloc.sum()), int(np.minimum(alloc, final).sum()),
                     used_slots=used, capacity=used + spare, external_frag=spare // 2)
    assert same == bd


def _mixed(seed: int, n: int = 60) -> list[RequestSpec]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        kind = i % 6
        kw: dict = {}
        if kind == 1:
            kw = {"n": 3}
        elif kind == 2:
            kw = {"beam_width": 3}
        elif kind == 3:
            kw = {"spec_k": 3, "spec_accept": 0.6}
        elif kind == 4:
            kw = {"prefix_hashes": (1, 2, 3), "prefix_unit": 16}
        if i % 7 == 0:
            kw["cancel_time"] = 0.3
        out.append(RequestSpec(i, 0.03 * i, int(rng.integers(20, 120)), int(rng.integers(1, 80)), **kw))
    return out


CASES = [  # (cache, preemption mode, chunked prefill)
    (PagedCacheSpec(block_size=16, prefix_caching=True, watermark=0.01), "recompute", False),
    (PagedCacheSpec(block_size=16, prefix_caching=True, watermark=0.01), "swap", True),
    (PagedCacheSpec(block_size=1), "swap", False),
    (ContiguousCacheSpec(policy="max", placement="first_fit"), "recompute", False),
    (ContiguousCacheSpec(policy="pow2", placement="buddy"), "recompute", True),
    (ContiguousCacheSpec(policy="oracle", placement="best_fit"), "recompute", False),
]


@pytest.mark.parametrize(("cache", "mode", "chunked"), CASES,
                         ids=["paged16-prefix", "paged16-swap-chunked", "paged1-swap", "contig-max",
                              "contig-pow2-buddy-chunked", "contig-oracle-best_fit"])
def test_every_sample_of_a_run_sums_to_the_pool(cache: PagedCacheSpec | ContiguousCacheSpec, mode: str,
                                                chunked: bool) -> None:
    config = SimConfig(cache=cache, kv_capacity_tokens=2400, max_model_len=256,
                       scheduler=SchedulerConfig(preemption_mode=mode, chunked_prefill=chunked,
                                                 max_num_batched_tokens=256 if chunked else None))
    eng = Engine(_mixed(1), config, rng=3, check_invariants=True)  # also checks after every step
    res = eng.run()
    assert len(res.memory) > 50
    for m in res.memory:
        parts = [getattr(m, c) for c in MEMORY_CATEGORIES]
        assert min(parts) >= 0 and sum(parts) == pytest.approx(m.capacity)
        assert m.token_states <= m.logical_token_states
    s = res.summary
    assert sum(s[f"{c}_pct"] for c in MEMORY_CATEGORIES) == pytest.approx(100.0)
    assert s["token_states_pct"] > 0 and s["num_finished"] + s["num_aborted"] + s["num_rejected"] == 60
