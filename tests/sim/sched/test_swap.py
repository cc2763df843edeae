"""CPU offload: the host swap pool (size limit, PCIe time, bytes each way) and the swap-in prefetch
that overlaps a forward pass, through the engine on a hand-worked workload.

OPT-13B (800 KiB of KV per token), blocks of 4 tokens (3,276,800 bytes), a 5-block GPU pool, a
constant 0.1 s forward pass. A (prompt 4, output 6), B (0.01 s, 4, 6), C (0.02 s, 2, 12):
step 0 prefills A; step 1 decodes A and prefills B and C (4 blocks); step 2 B opens a block (5);
step 4 C needs a 2nd block with none free: C (latest arrival) is swapped out (1 block); step 5 A
takes the freed block and finishes; step 6 B decodes (a 3rd block) and C is swapped back in (1
block), then C decodes from step 7 to its end.
"""

from __future__ import annotations

from typing import Any

import pytest
from enginekit import cfg, run

from sim.config import SchedulerConfig, SimConfig, resolve
from sim.records.results import SimResult
from sim.request import RequestSpec, SpecError
from sim.sched.swap import SwapSpace, SwapSpaceError, overlap_swap_in

BLOCK_BYTES = 4 * 819200
REQS = [RequestSpec("A", 0.0, 4, 6), RequestSpec("B", 0.01, 4, 6), RequestSpec("C", 0.02, 2, 12)]


def swap_run(**sched: Any) -> SimResult:
    return run(REQS, cfg(capacity=20, model="opt-13b", scheduler=SchedulerConfig(preemption_mode="swap", **sched)))


def test_transfer_time_is_on_the_critical_path_without_prefetch() -> None:
    res = swap_run()
    t = BLOCK_BYTES / 25e9  # A100 PCIe: 25 GB/s one way
    out, back = res.steps[4], res.steps[6]
    assert (out.num_swaps_out, out.swap_out_bytes, out.duration_s, out.swap_s) == (1, BLOCK_BYTES, pytest.approx(0.1 + t), t)
    assert (back.num_swaps_in, back.swap_in_bytes, back.batch_size) == (1, BLOCK_BYTES, 1)
    assert back.duration_s == pytest.approx(0.1 + t) and back.swap_hidden_s == 0 and back.num_prefetch_hidden == 0
    s = res.summary
    assert (s["swap_out_bytes"], s["swap_in_bytes"]) == (BLOCK_BYTES, BLOCK_BYTES)
    assert (s["swap_out_s"], s["swap_in_s"]) == (pytest.approx(t), pytest.approx(t))
    assert s["swap_exposed_s"] == pytest.approx(2 * t) and s["num_prefetches"] == 0
    assert [r.finish_s for r in res.requests] == pytest.approx([0.6 + t, 0.7 + 2 * t, 1.6 + 2 * t])


def test_prefetch_hides_a_swap_in_shorter_than_the_forward_pass() -> None:
    base, pre = swap_run(), swap_run(swap_prefetch=True)
    t = BLOCK_BYTES / 25e9
    back = pre.steps[6]  # the copy overlaps B's decode: the step lasts max(0.1, t) = 0.1
    assert back.duration_s == pytest.approx(0.1) and back.swap_s == 0 and back.swap_hidden_s == pytest.approx(t)
    assert back.num_prefetch_hidden == 1
    s = pre.summary
    assert (s["num_prefetches"], s["num_prefetch_hidden"], s["prefetch_hidden_pct"]) == (1, 1, 100.0)
    assert s["swap_exposed_s"] == pytest.approx(t) and s["swap_hidden_s"] == pytest.approx(t)  # the swap-out stays
    # Same schedule, each later event earlier by the hidden transfer.
    assert [r.finish_s for r in pre.requests] == pytest.approx([r.finish_s - d for r, d in
                                                                zip(base.requests, (0, t, t), strict=True)])


def test_a_swap_in_longer_than_the_forward_pass_is_partly_exposed() -> None:
    res = swap_run(swap_prefetch=True, pcie_bandwidth_gbps=0.02)
    t = BLOCK_BYTES / 0.02e9  # 0.16384 s: longer than the 0.1 s forward pass it overlaps
    back = res.steps[6]
    assert back.duration_s == pytest.approx(t)
    assert (back.swap_s, back.swap_hidden_s, back.num_prefetch_hidden) == (pytest.approx(t - 0.1), pytest.approx(0.1), 0)
    s = res.summary
    assert (s["num_prefetches"], s["num_prefetch_hidden"], s["prefetch_hidden_pct"]) == (1, 0, 0.0)
    assert s["swap_exposed_s"] == pytest.approx(t + t - 0.1)  # the whole swap-out plus the swap-in's overhang


def test_a_full_host_pool_falls_back_to_recompute() -> None:
    res = swap_run(cpu_swap_space_gb=0.0)
    s = res.summary
    assert (s["num_swap_fallbacks"], s["swap_out_blocks"], s["swap_out_bytes"], s["num_preemptions"]) == (1, 0, 0, 1)
    # C is recomputed: its prompt and the 3 tokens it had generated are prefilled again (5 tokens).
    assert any(st.num_prefill_tokens == 5 for st in res.steps[5:])
    assert [r.status for r in res.requests] == ["finished"] * 3


def test_host_pool_size_in_blocks() -> None:
    r = resolve(SimConfig(scheduler=SchedulerConfig(cpu_swap_space_gb=1.0)))  # OPT-13B fp16, blocks of 16
    assert r.cpu_swap_blocks == (1 << 30) // (16 * 819200) == 81
    assert r.pcie_bandwidth_Bps == 25e9
    assert resolve(SimConfig(scheduler=SchedulerConfig(pcie_bandwidth_gbps=64.0))).pcie_bandwidth_Bps == 64e9
    with pytest.raises(SpecError, match="pcie_bandwidth_gbps"):
        SchedulerConfig(pcie_bandwidth_gbps=0)
    with pytest.raises(SpecError, match="swap_prefetch"):
        SchedulerConfig(swap_prefetch="yes")  # type: ignore[arg-type]


def test_swap_space_counts_bytes_and_rejects_misuse() -> None:
    sw = SwapSpace(3, block_bytes=100.0, pcie_bandwidth_Bps=1000.0)
    assert sw.swap_out("g", 2) == pytest.approx(0.2) and not sw.can_swap_out(2)
    assert sw.swap_in("g", 1) == pytest.approx(0.1)  # one block rebuilt (the rest shared)
    assert (sw.bytes_out, sw.bytes_in, sw.used_blocks) == (200.0, 100.0, 0)
    with pytest.raises(SwapSpaceError, match="'h'"):
        sw.swap_in("h")
    sw.check_invariants()


def test_overlap_of_consecutive_swap_ins() -> None:
    # Copies of 0.03, 0.05, 0.04 s one after another beside a 0.1 s forward pass: the first two end
    # by 0.08 s (hidden), the third at 0.12 s (0.02 s beyond the pass).
    exposed, hidden = overlap_swap_in([0.03, 0.05, 0.04], 0.1)
    assert exposed == pytest.approx(0.02) and hidden == 2
    assert overlap_swap_in([0.05], 0.0) == (0.05, 0)  # nothing to overlap with
    assert overlap_swap_in([], 0.1) == (0.0, 0)
