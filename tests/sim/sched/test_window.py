"""Sliding-window attention through the engine: hand-worked block counts and memory categories.

A constant 0.1 s step, blocks of 4 token slots and a 64-slot pool unless stated. A query at position
q attends to [q - W + 1, q]; before each step the paged cache releases a sequence's leading blocks
that lie entirely before the first key its query attends. Worked out in the comments: c is a
sequence's context in a step, its newest token included (the step's query sits at c - 1).
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
from enginekit import ConstLatency, cfg, run, sample_at

from sim.config import ContiguousCacheSpec, PagedCacheSpec, SchedulerConfig, SimConfig, resolve
from sim.engine import Engine
from sim.memory.replay import replay
from sim.records.results import SimResult
from sim.request import RequestSpec, SpecError


def test_paged_cache_releases_blocks_outside_the_window() -> None:
    ops: list[dict[str, Any]] = []
    res = run([RequestSpec("A", 0.0, 6, 20)], cfg(sliding_window=8), op_sink=ops.append)
    # Step k has c = 6 + k and needs tokens from c - 8; blocks wholly before that go:
    # c = 12 frees block 0, c = 16 block 1, c = 20 block 2, c = 24 block 3. Held = ceil(c/4) - released.
    assert [s.blocks_used for s in res.steps] == [2, 2, 2, 3, 3, 3, 2, 3, 3, 3, 2, 3, 3, 3, 2, 3, 3, 3, 2, 3]
    assert res.requests[0].peak_blocks == 3  # without the window: ceil(25 / 4) = 7
    m = sample_at(res, 0.7)  # c = 13: block 0 released, tokens 4..12 held in 3 blocks (12 slots)
    # window = tokens 5..12 (8 token states); token 4 is stale (internal fragmentation); 3 slots reserved.
    assert (m.token_states, m.reserved, m.internal_frag, m.free, m.logical_token_states) == (8, 3, 1, 52, 8)
    s = res.summary
    assert s["sliding_window"] == 8 and s["window_released_blocks"] == 4 and s["blocks_allocated"] == 7
    # One release at each of steps 6, 10, 14 and 18 (monitor samples: one per step, cumulative counters).
    rel = [m.window_released_total for m in res.monitor]
    assert [i for i in range(1, len(rel)) if rel[i] > rel[i - 1]] == [6, 10, 14, 18] and rel[-1] == 4
    # The op log replays (free_before ops) to the same block counts.
    lines = [json.dumps(op) for op in ops]
    assert sum(op["op"] == "free_before" for op in ops) == 4
    out = list(replay(lines))
    assert all(o["ok"] for o in out) and out[-1]["num_free_blocks"] == 16


def test_contiguous_cache_keeps_its_reservation() -> None:
    paged = run([RequestSpec("A", 0.0, 6, 20)], cfg(sliding_window=8))
    oracle = run([RequestSpec("A", 0.0, 6, 20)], cfg(sliding_window=8, cache=ContiguousCacheSpec(policy="oracle")))
    m = sample_at(oracle, 0.7)  # c = 13 in a 26-slot reservation (final length 25)
    # Window tokens 5..12 are token states; tokens 0..4 are stale, plus the never-used last slot: 6
    # internal; 25 - 13 = 12 reserved. The paged cache holds 12 slots at that moment, this one 26.
    assert (m.token_states, m.reserved, m.internal_frag, m.free) == (8, 12, 6, 38)
    assert sample_at(paged, 0.7).token_states == m.token_states
    assert oracle.summary["free_pct"] < paged.summary["free_pct"]
    assert oracle.summary["internal_frag_pct"] > paged.summary["internal_frag_pct"]
    assert oracle.summary["window_released_blocks"] == 0
    # Without a window every stored token is a token state.
    full = run([RequestSpec("A", 0.0, 6, 20)], cfg(sliding_window=0, cache=ContiguousCacheSpec(policy="oracle")))
    assert sample_at(full, 0.7).token_states == 13 and full.summary["sliding_window"] == 0


def test_released_blocks_let_more_requests_run() -> None:
    reqs = [RequestSpec("A", 0.0, 4, 30), RequestSpec("B", 0.0, 4, 30)]
    # A 10-block pool; each sequence reaches 33 tokens = 9 blocks without a window. With W = 8 a
    # sequence holds at most ceil((3 + 8) / 4) = 3 blocks, so both run side by side to the end.
    win = run(reqs, cfg(capacity=40, sliding_window=8))
    assert win.summary["num_preemptions"] == 0
    assert [r.finish_s for r in win.requests] == pytest.approx([3.0, 3.0])  # 1 prefill + 29 decode steps
    assert max(s.blocks_used for s in win.steps) == 6
    full = run(reqs, cfg(capacity=40, sliding_window=0))
    assert full.summary["num_preemptions"] == 1 and full.requests[1].finish_s > 4.0


def test_parallel_samples_release_a_shared_block_when_both_leave_it() -> None:
    res = run([RequestSpec("A", 0.0, 8, 10, n=2)], cfg(sliding_window=4))
    # The two samples share the prompt's blocks 0, 1 and decode in lockstep. Step 1 (c = 9, first key
    # 5): both drop block 0 (freed) and write into a new private block each. Step 4 (first key 8):
    # block 1 goes; step 8 (first key 12): the private blocks 2. Steps 5 and 9 open new blocks.
    assert [s.blocks_used for s in res.steps] == [2, 3, 3, 3, 2, 4, 4, 4, 2, 4]
    m = sample_at(res, 0.1)
    # Held: block 1 (tokens 4..7, shared) + one private block each (token 8). Each sample's window is
    # 5..8, so token 4 is stale for both: 1 stale slot in the pool, 2 logically. Physical token states
    # 4 + 2 - 1 = 5; reserved 3 + 3.
    assert (m.token_states, m.logical_token_states, m.reserved, m.internal_frag, m.free) == (5, 8, 6, 1, 52)
    mon = res.monitor[1]
    assert (mon.used_blocks, mon.refs_1, mon.refs_2, mon.window_released_total) == (3, 2, 1, 2)


def test_chunked_prefill_releases_blocks_behind_the_chunks() -> None:
    sched = SchedulerConfig(chunked_prefill=True, max_num_seqs=4, max_num_batched_tokens=8)
    res = run([RequestSpec("A", 0.0, 20, 3)], cfg(sliding_window=4, scheduler=sched))
    # Admission allocates the 20-token prompt (5 blocks); chunks of 8, 8, 4. The chunk starting at
    # token 8 needs keys from 5 (block 0 goes), the one at 16 from 13 (blocks 1, 2 go). The decode at
    # c = 21 needs keys from 17: block 3 goes, token 20 opens block 5.
    assert [s.num_prefill_tokens for s in res.steps] == [8, 8, 4, 0, 0]
    assert [s.blocks_used for s in res.steps] == [5, 4, 2, 2, 2]
    assert res.requests[0].peak_blocks == 5


def test_blocks_out_of_the_window_return_to_the_prefix_cache() -> None:
    ids: dict[str, Any] = {"prefix_hashes": (1, 2), "prefix_unit": 4}
    reqs = [RequestSpec("A", 0.0, 8, 10, **ids), RequestSpec("B", 0.05, 8, 10, **ids), RequestSpec("C", 5.0, 8, 3, **ids)]
    res = run(reqs, cfg(sliding_window=4, prefix=True))
    # B finds A's two prompt blocks (computes 1 token); both later leave them behind (window 4), the
    # blocks become free but stay cached, so C, arriving after both finished, hits them again.
    assert [s.num_prefill_tokens for s in res.steps if s.num_prefill_tokens] == [8, 1, 1]
    assert res.summary["prefix_cache_hit_rate"] == pytest.approx(4 / 6)  # A: 2 misses, B and C: 2 hits each
    assert res.summary["blocks_reused"] == 4
    assert [(m.refs_1, m.refs_2) for m in res.monitor[:5]] == [(2, 0), (2, 1), (2, 1), (2, 1), (3, 0)]


def test_swap_moves_only_the_blocks_in_the_window() -> None:
    reqs = [RequestSpec(i, 0.01 * i, 4, 40) for i in range(5)]
    res = run(reqs, cfg(capacity=48, sliding_window=8, scheduler=SchedulerConfig(preemption_mode="swap")))
    # Each sequence holds at most ceil((3 + 8) / 4) = 3 blocks whatever its length (43 tokens = 11
    # blocks without the window), so a preempted sequence moves at most 3 blocks each way.
    outs = [s for s in res.steps if s.num_swaps_out]
    assert outs and all(s.num_swaps_out <= 3 * s.num_preempted for s in outs)
    assert sum(s.num_swaps_out for s in outs) == sum(s.num_swaps_in for s in res.steps) == res.summary["swap_in_blocks"]
    assert res.summary["swap_out_bytes"] == res.summary["swap_out_blocks"] * 4 * 819200  # OPT-13B, fp16
    assert [r.status for r in res.requests] == ["finished"] * 5


def test_window_settings_and_the_mistral_preset() -> None:
    assert resolve(SimConfig(model="mistral-7b")).window == 4096
    assert resolve(SimConfig(model="mistral-7b", sliding_window=0)).window is None
    assert resolve(SimConfig(model="opt-13b", sliding_window=100)).window == 100
    assert resolve(SimConfig(model="opt-13b", sliding_window=4096)).window is None  # >= max_model_len 2048
    with pytest.raises(SpecError, match="sliding_window"):
        SimConfig(sliding_window=-1)
    # Mistral-7B, one 4000-token prompt and 300 output tokens in 16-token blocks: 269 blocks at the
    # end without the window; with it at most ceil((15 + 4096) / 16) = 257 once decoding passes 4096.
    req = [RequestSpec("A", 0.0, 4000, 300)]
    kw: dict[str, Any] = {"model": "mistral-7b", "gpu": "a100-80gb", "kv_capacity_tokens": 8192, "latency": ConstLatency()}
    win = Engine(req, SimConfig(**kw)).run()
    full = Engine(req, SimConfig(sliding_window=0, **kw)).run()
    assert full.requests[0].peak_blocks == 269 and full.steps[-1].blocks_used == 269
    assert win.requests[0].peak_blocks == 257 and win.steps[-1].blocks_used <= 257
    assert win.summary["window_released_blocks"] == 269 - win.steps[-1].blocks_used


def _mixed(window: int, seed: int) -> SimResult:
    rng = np.random.default_rng(seed)
    reqs = []
    for i in range(30):
        kw: dict[str, Any] = {}
        kind = i % 4
        if kind == 1:
            kw["n"] = 3
        elif kind == 2:
            kw["beam_width"] = 3
        elif kind == 3:
            kw = {"spec_k": 3, "spec_accept": 0.6}
        if i % 3 == 0:
            kw.update(prefix_hashes=(7, 8, 9), prefix_unit=4)
        reqs.append(RequestSpec(i, float(rng.uniform(0, 3)), int(rng.integers(1, 40)), int(rng.integers(1, 50)), **kw))
    sched = SchedulerConfig(preemption_mode="swap", chunked_prefill=bool(seed % 2), max_num_seqs=16,
                            max_num_batched_tokens=64, cpu_swap_space_gb=0.05)
    cache = PagedCacheSpec(block_size=int(rng.choice([2, 4, 8])), watermark=0.0, prefix_caching=True)
    config = SimConfig(cache=cache, kv_capacity_tokens=400, latency=ConstLatency(), sliding_window=window,
                       scheduler=sched, max_model_len=128)
    return Engine(reqs, config, check_invariants=True, rng=seed).run()


@pytest.mark.parametrize(("window", "seed"), [(1, 0), (5, 1), (12, 2), (30, 3)])
def test_mixed_workloads_keep_every_invariant(window: int, seed: int) -> None:
    # check_invariants: block tables vs counters (drop = released entries), ref counts and the
    # shared-block histogram, and at every memory sample the six categories sum to the pool and none
    # is negative (stale slots of shared blocks counted once).
    res = _mixed(window, seed)
    assert res.summary["window_released_blocks"] > 0
    assert all(r.status == "finished" for r in res.requests)
    for m in res.memory:
        assert m.token_states <= m.logical_token_states + 1e-9
