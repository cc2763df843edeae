"""Allocator monitoring: the paged cache's counters and incremental ref-count histogram, the
MonitorSample series and the run totals, on hand-worked cases (blocks of 4 unless stated)."""

from __future__ import annotations

import math

import pytest
from enginekit import cfg, run

from sim.config import ContiguousCacheSpec
from sim.memory.paged_cache import PagedKVCache
from sim.request import RequestSpec


def test_counters_and_histogram_follow_each_operation() -> None:
    c = PagedKVCache(16, 4, watermark=0.0, enable_prefix_caching=True)
    c.allocate("a", 8, block_hashes=(11, 12))  # 2 fresh blocks
    assert (c.num_blocks_allocated, c.num_blocks_reused, c.ref_count_histogram()) == (2, 0, (2, 0, 0, 0, 0))
    c.fork("a", "b")  # b shares both: 2 reuses, both blocks at ref 2
    assert (c.num_blocks_reused, c.ref_count_histogram()) == (2, (0, 2, 0, 0, 0))
    c.fork("a", "c")  # ref 3: the 3-4 bucket
    assert c.ref_count_histogram() == (0, 0, 2, 0, 0)
    c.allocate("d", 9, block_hashes=(11, 12))  # 2 prefix-cache hits (ref 4) + 1 fresh block
    assert (c.num_blocks_allocated, c.num_blocks_reused, c.ref_count_histogram()) == (3, 6, (1, 0, 2, 0, 0))
    c.append("d", 4)  # fills its block 2 and opens block 3
    c.fork("d", "e")
    for i in range(5):  # forks of e: blocks 0, 1 at ref 10 (> 8); blocks 2, 3 at ref 7 (5-8)
        c.fork("e", f"e{i}")
    assert c.ref_count_histogram() == (0, 0, 0, 2, 2)
    c.free("a")
    for i in range(5):
        c.free(f"e{i}")
    c.free("e")  # blocks 0, 1 back to ref 3 (b, c, d); d's blocks 2, 3 to ref 1
    assert c.ref_count_histogram() == (2, 0, 2, 0, 0)
    assert c.free_blocks_before("d", 8) == 0  # d drops blocks 0, 1 (still held by b and c)
    assert (c.num_window_released, c.ref_count_histogram()) == (2, (2, 2, 0, 0, 0))
    assert c.append("b", 1).cows == []  # b's last block is full: a new block, no copy
    c.check_invariants()  # recounts the histogram from the block tables
    assert c.num_blocks_allocated == 5 and c.total_cows == 0


def test_copy_on_write_counts_as_a_fresh_allocation() -> None:
    c = PagedKVCache(8, 4, watermark=0.0)
    c.allocate("a", 6)
    c.fork("a", "b")
    assert c.append("b").cows == [(1, 2)]  # b copies the shared partial block 1
    assert (c.num_blocks_allocated, c.num_blocks_reused, c.total_cows) == (3, 2, 1)
    assert c.ref_count_histogram() == (2, 1, 0, 0, 0)  # block 0 shared; blocks 1 and 2 private
    c.rollback("b", 3)  # b back to 4 tokens: its copy is freed
    assert c.ref_count_histogram() == (1, 1, 0, 0, 0)
    c.check_invariants()


def test_monitor_samples_of_parallel_sampling() -> None:
    res = run([RequestSpec("A", 0.0, 6, 3, n=3)], cfg())
    # Step 0 allocates the 6-token prompt (2 blocks). After it two forks share both blocks (4 reuses);
    # in step 1 the first two samples copy the shared partial block 1 (2 fresh blocks) and the third
    # writes into it. Held in step 1: block 0 (ref 3), block 1 and the 2 copies (ref 1 each).
    assert [(m.blocks_allocated_total, m.blocks_reused_total) for m in res.monitor[:3]] == [(2, 0), (4, 4), (4, 4)]
    m = res.monitor[1]
    assert (m.time_s, m.used_blocks, m.free_blocks) == (pytest.approx(0.1), 4, 12)
    assert (m.refs_1, m.refs_2, m.refs_3_4, m.refs_5_8, m.refs_gt8) == (3, 0, 1, 0, 0)
    assert m.kv_bytes_used == 4 * 4 * 819200  # OPT-13B, fp16
    assert m.alloc_rate_blocks_per_s == pytest.approx(2 / 0.1) and m.reuse_rate == pytest.approx(4 / 6)
    assert (m.blocks_allocated_total, m.blocks_reused_total, m.cows_total) == (4, 4, 2)
    assert math.isnan(res.monitor[0].alloc_rate_blocks_per_s)  # no interval before the first sample
    s = res.summary
    assert (s["blocks_allocated"], s["blocks_reused"], s["reuse_rate"]) == (4, 4, 0.5)
    assert s["alloc_rate_blocks_per_s"] == pytest.approx(4 / 0.3)  # the run lasts 3 steps
    assert (s["min_free_blocks"], s["peak_kv_bytes_used"]) == (12, 4 * 4 * 819200)
    # Time-weighted over 0.3 s: 2 blocks for 0.1 s, 4 for 0.1 s, 4 for 0.1 s (3 copies at ref 1 + block 0 at ref 3
    # in both decode steps), nothing after the end.
    assert s["mean_free_blocks"] == pytest.approx((14 + 12 + 12) / 3)
    assert s["mean_refs_3_4"] == pytest.approx(2 / 3) and s["mean_refs_1"] == pytest.approx((2 + 3 + 3) / 3)
    for a, b in zip(res.monitor, res.monitor[1:], strict=False):
        assert a.time_s < b.time_s and a.blocks_allocated_total <= b.blocks_allocated_total
    assert all(sum((x.refs_1, x.refs_2, x.refs_3_4, x.refs_5_8, x.refs_gt8)) == x.used_blocks for x in res.monitor)


def test_monitor_of_beam_search_and_a_contiguous_cache() -> None:
    reqs = [RequestSpec(i, 0.1 * i, 40, 60, beam_width=4) for i in range(4)]
    paged = run(reqs, cfg(capacity=4096, block_size=8), rng=3)
    assert paged.summary["reuse_rate"] > 0.5  # beams fork far more block references than they allocate
    assert max(m.refs_3_4 + m.refs_5_8 + m.refs_gt8 for m in paged.monitor) > 0
    assert paged.summary["num_cows"] == paged.monitor[-1].cows_total
    contig = run(reqs, cfg(capacity=4096, cache=ContiguousCacheSpec(policy="oracle")))
    s = contig.summary
    # Contiguous caches count 1-slot units: allocations are reserved slots, never reused or shared.
    assert (s["monitor_unit"], s["pool_blocks"], s["blocks_reused"]) == ("slot", 4096, 0)
    assert s["blocks_allocated"] == 4 * (40 + 60) * 4  # oracle reservation x beams, per request
    assert all(m.refs_1 == m.used_blocks and m.refs_2 == 0 for m in contig.monitor)


def test_sampling_interval_thins_the_monitor_too() -> None:
    reqs = [RequestSpec(i, 0.05 * i, 20, 30) for i in range(10)]
    every = run(reqs, cfg(capacity=1024))
    thin = run(reqs, cfg(capacity=1024, memory_sample_interval_s=0.5))
    assert len(thin.monitor) == len(thin.memory) < len(every.monitor) == len(every.memory)
    # Counters are exact whatever the sampling; the time-weighted means are sampled.
    assert thin.summary["blocks_allocated"] == every.summary["blocks_allocated"]
    assert thin.monitor[-1].blocks_allocated_total == every.monitor[-1].blocks_allocated_total
