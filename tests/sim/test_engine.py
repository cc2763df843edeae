"""Engine tests: each lifecycle feature through SimPy on small deterministic workloads.

A constant 0.1 s step (a test stand-in for the latency model) makes every time hand-computable;
block counts and memory samples are worked out in the comments. Block size 4 unless stated.
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pytest
from enginekit import cfg, run, sample_at
from paths import DOCS

from sim.config import ContiguousCacheSpec, SchedulerConfig, SimConfig
from sim.engine import simulate
from sim.memory.replay import replay
from sim.records.results import SUMMARY_KEYS
from sim.request import RequestSpec


def test_single_request_times_blocks_and_memory() -> None:
    res = run([RequestSpec("A", 0.0, 10, 5)], cfg())
    (r,) = res.requests
    # Prefill step [0, 0.1) gives the first token; 4 decode steps; done at 0.5.
    assert (r.status, r.first_token_s, r.finish_s) == ("finished", pytest.approx(0.1), pytest.approx(0.5))
    assert r.ttft_s == pytest.approx(0.1) and r.tpot_s == pytest.approx(0.1)
    assert r.e2e_s == pytest.approx(0.5) and r.normalized_latency_s_per_token == pytest.approx(0.1)
    # ctx 10, 11, 12, 13, 14 -> 3, 3, 3, 4, 4 blocks; at most 10 + 5 - 1 = 14 tokens stored.
    assert [s.blocks_used for s in res.steps] == [3, 3, 3, 4, 4] and r.peak_blocks == 4
    assert [s.start_s for s in res.steps] == pytest.approx([0.0, 0.1, 0.2, 0.3, 0.4])
    m0 = sample_at(res, 0.0)  # 10 tokens in 12 slots; 2 of them will be used (final 14)
    assert (m0.token_states, m0.reserved, m0.internal_frag, m0.free) == (10, 2, 0, 52)
    m3 = sample_at(res, 0.3)  # 13 tokens in 16 slots: 1 more will be used, 2 never
    assert (m3.token_states, m3.reserved, m3.internal_frag, m3.free) == (13, 1, 2, 48)
    s = res.summary
    assert list(s)[: len(SUMMARY_KEYS)] == list(SUMMARY_KEYS)
    assert s["num_requests"] == 1 and s["throughput_rps"] == pytest.approx(2.0)  # 1 request in 0.5 s
    assert s["throughput_tps"] == pytest.approx(10.0) and s["mean_batch_size"] == 1.0
    assert s["latency_model"] == "const" and s["system"] == "paged-4"


def test_idle_time_counts_as_free_memory_and_arrivals_wake_the_engine() -> None:
    res = run([RequestSpec("A", 0.0, 4, 1), RequestSpec("B", 5.0, 4, 1)], cfg())
    assert [s.start_s for s in res.steps] == pytest.approx([0.0, 5.0])
    idle = sample_at(res, 0.1)
    assert idle.free == 64 and idle.token_states == 0
    # 4 tokens in one block (no waste) for 0.1 s of each 5.1 s run: 4/64 * 0.2/5.1 of the pool.
    assert res.summary["token_states_pct"] == pytest.approx(100 * 4 / 64 * 0.2 / 5.1)
    assert res.summary["duration_s"] == pytest.approx(5.1)


def test_parallel_sampling_shares_the_prompt() -> None:
    res = run([RequestSpec("A", 0.0, 6, 3, n=3)], cfg())
    m = sample_at(res, 0.1)  # first decode: 3 samples x 7 tokens
    # Physical: the full prompt block (4 tokens) once + 3 private blocks of 3 tokens = 13 of 16 slots.
    assert (m.token_states, m.logical_token_states, m.reserved, m.internal_frag) == (13, 21, 3, 0)
    assert res.steps[1].num_cows == 2 and res.steps[1].blocks_used == 4  # 2 copies of the shared block
    assert res.summary["num_cows"] == 2 and res.requests[0].peak_blocks == 4
    assert res.summary["sharing_savings_pct"] > 0


def test_beam_search_is_reproducible_from_the_seed_and_saves_blocks() -> None:
    reqs = [RequestSpec(i, 0.1 * i, 40, 60, beam_width=4) for i in range(6)]
    a = run(reqs, cfg(capacity=4096, block_size=8), rng=7)
    b = run(reqs, cfg(capacity=4096, block_size=8), rng=7)
    assert json.dumps(a.summary) == json.dumps(b.summary)  # NaN-safe equality
    assert [m.token_states for m in a.memory] == [m.token_states for m in b.memory]
    assert a.summary["num_finished"] == 6 and a.summary["sharing_savings_blocks_pct"] > 30
    keep = run(reqs, cfg(capacity=4096, block_size=8, scheduler=SchedulerConfig(beam_switch_prob=0.0)), rng=7)
    # Beams that always continue themselves share only the prompt: less saving than reshuffling ones.
    assert keep.summary["sharing_savings_blocks_pct"] < a.summary["sharing_savings_blocks_pct"]


def test_speculative_slots_are_their_own_category() -> None:
    res = run([RequestSpec("A", 0.0, 4, 10, spec_k=4, spec_accept=0.0)], cfg())
    m = sample_at(res, 0.1)  # ctx 4 + 5 = 9 slots in 3 blocks, 4 of them drafts to roll back
    assert (m.token_states, m.speculative, m.reserved, m.internal_frag) == (5, 4, 3, 0)
    assert res.steps[1].num_decode_tokens == 5 and res.summary["speculative_pct"] > 0
    assert len(res.steps) == 10  # p = 0: one token per step, as without speculation


def test_prefix_caching_skips_cached_prompt_tokens() -> None:
    reqs = [RequestSpec("A", 0.0, 8, 5, prefix_hashes=(1, 2), prefix_unit=4),
            RequestSpec("B", 0.05, 8, 2, prefix_hashes=(1, 2), prefix_unit=4)]
    res = run(reqs, cfg(prefix=True))
    assert [s.num_prefill_tokens for s in res.steps[:2]] == [8, 1]
    assert res.steps[1].blocks_used == 3  # B reuses A's two blocks; A's decode took a third
    assert res.summary["prefix_cache_hit_rate"] == pytest.approx(0.5)  # 2 hits of 4 hashed blocks


def test_recompute_preemption_through_the_engine() -> None:
    reqs = [RequestSpec("A", 0.0, 4, 6), RequestSpec("B", 0.01, 4, 6)]
    res = run(reqs, cfg(capacity=16))  # 4 blocks
    a, b = res.requests
    assert (a.num_preemptions, b.num_preemptions) == (0, 1) and res.summary["num_preemptions"] == 1
    # B prefills at 0.1 (it arrived during A's prefill); at step 5 A needs a 3rd block and none is
    # free: B is preempted after 4 tokens and recomputes prompt + 4 generated tokens at step 6.
    assert res.steps[5].num_preempted == 1 and res.steps[6].num_prefill_tokens == 8
    assert b.ttft_s == pytest.approx(0.2 - 0.01)  # still its first prefill (step 1), not the recompute
    assert a.status == b.status == "finished"


def test_swap_transfer_time_is_added_to_the_step() -> None:
    reqs = [RequestSpec("A", 0.0, 4, 6), RequestSpec("B", 0.01, 4, 6)]
    config = cfg(capacity=16, model="opt-13b", gpu="a100-40gb",
                 scheduler=SchedulerConfig(preemption_mode="swap", cpu_swap_space_gb=1.0))
    res = run(reqs, config)
    swap_s = 2 * 4 * 819200 / 25e9  # 2 blocks of 4 OPT-13B tokens (800 KiB each) over 25 GB/s PCIe
    out_step = next(s for s in res.steps if s.num_swaps_out)
    in_step = next(s for s in res.steps if s.num_swaps_in)
    assert out_step.num_swaps_out == 2 and out_step.duration_s == pytest.approx(0.1 + swap_s)
    assert in_step.num_swaps_in == 2 and in_step.duration_s == pytest.approx(swap_s)
    assert in_step.batch_size == 0  # a step with only the transfer
    assert [r.status for r in res.requests] == ["finished", "finished"]


def test_cancel_time_aborts_and_frees_at_once() -> None:
    reqs = [RequestSpec("A", 0.0, 8, 20, cancel_time=0.25), RequestSpec("B", 0.0, 4, 5)]
    res = run(reqs, cfg())
    a, b = res.requests
    assert a.status == "aborted" and a.finish_s == pytest.approx(0.25) and math.isnan(a.e2e_s)
    assert a.ttft_s == pytest.approx(0.1) and "cancelled" in a.reason
    # Step at 0.2: A 10 tokens (3 blocks) + B 6 tokens (2 blocks); from 0.3 only B's 2 blocks.
    assert [s.blocks_used for s in res.steps[2:4]] == [5, 2]
    assert b.status == "finished" and res.summary["num_aborted"] == 1


def test_waiting_request_can_be_cancelled() -> None:
    reqs = [RequestSpec("A", 0.0, 60, 3), RequestSpec("B", 0.0, 8, 2, cancel_time=0.05)]
    res = run(reqs, cfg())  # A takes 15 of 16 blocks; B waits and is cancelled at 0.05
    assert res.requests[1].status == "aborted" and math.isnan(res.requests[1].first_token_s)


def test_rejected_requests_are_recorded_not_lost() -> None:
    reqs = [RequestSpec("A", 0.0, 4, 4), RequestSpec("big", 0.0, 100, 10), RequestSpec("long", 0.0, 2040, 20)]
    res = run(reqs, cfg())
    st = {r.req_id: (r.status, r.reason) for r in res.requests}
    assert st["A"][0] == "finished"
    assert st["big"][0] == "rejected" and "can never fit" in st["big"][1]
    assert st["long"][0] == "rejected" and "max_model_len = 2048" in st["long"][1]
    assert res.summary["num_rejected"] == 2 and res.summary["num_requests"] == 3


def test_op_log_replays_through_the_allocator() -> None:
    rng = np.random.default_rng(3)
    reqs = [RequestSpec(i, float(i) * 0.05, int(rng.integers(1, 40)), int(rng.integers(1, 30)),
                        n=2 if i % 5 == 1 else 1, beam_width=3 if i % 5 == 2 else 1,
                        spec_k=3 if i % 5 == 3 else 0, spec_accept=0.5,
                        prefix_hashes=(1, 2, 3) if i % 5 == 4 else (), prefix_unit=8) for i in range(40)]
    ops: list[dict[str, Any]] = []
    res = run(reqs, cfg(capacity=256, prefix=True), rng=1, op_sink=ops.append)
    assert ops[0]["op"] == "config" and res.summary["num_preemptions"] > 0
    results = list(replay(json.dumps(o) for o in ops))
    assert len(results) == len(ops) - 1 and all(r["ok"] for r in results)
    assert results[-1]["num_free_blocks"] == 64  # everything freed at the end


def test_contiguous_run_reserves_per_policy() -> None:
    reqs = [RequestSpec("A", 0.0, 10, 5), RequestSpec("B", 0.0, 3, 2, n=2)]
    res = run(reqs, cfg(capacity=100, cache=ContiguousCacheSpec(policy="pow2")))
    # pow2 of the final length: A 15 -> 16 slots; B 2 samples x (5 -> 8) = 16 slots.
    assert [r.peak_blocks for r in res.requests] == [16, 16]
    assert res.system == "contig-pow2" and res.summary["block_size"] == 0
    # A: 10 of 16 slots hold tokens, 4 more will (it stores at most 14), 2 never will. B: before the
    # fork its one sequence stands for both samples: 3 tokens, 2 x 4 final slots, 16 reserved.
    m = sample_at(res, 0.0)
    assert (m.token_states, m.reserved, m.internal_frag) == (13, 4 + 5, 2 + 8)


def test_roofline_default_and_sampling_interval() -> None:
    reqs = [RequestSpec(i, 0.02 * i, 50, 40) for i in range(20)]
    full = simulate(reqs, SimConfig(kv_capacity_tokens=4096), rng=0)
    sparse = simulate(reqs, SimConfig(kv_capacity_tokens=4096, memory_sample_interval_s=0.5,
                                      record_steps=False), rng=0)
    assert full.summary["latency_model"] == "roofline" and full.summary["num_finished"] == 20
    assert len(sparse.memory) < len(full.memory) / 5 and sparse.steps == []
    assert sparse.summary["mean_batch_size"] == full.summary["mean_batch_size"]  # from running sums
    assert sparse.summary["token_states_pct"] == pytest.approx(full.summary["token_states_pct"], rel=0.2)


def test_docs_examples_run() -> None:
    """The Python examples in docs/simulator.md run as written (and their asserts hold)."""
    import re

    doc = (DOCS / "simulator.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", doc, flags=re.S)
    assert len(blocks) == 7  # overview, lifecycle, latency stand-in, window, KV dtype, swap, monitor
    for code in blocks:
        exec(compile(code, "docs/simulator.md", "exec"), {})
