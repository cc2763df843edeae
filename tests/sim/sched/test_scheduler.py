"""Scheduler tests without SimPy: tiny hand-worked cases, each step's decisions logged and the whole
log asserted. Block size 4 throughout unless stated; 'used' is blocks in use during the step's
forward pass (after scheduling, before the step's results free anything)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from sim.config import SchedulerConfig
from sim.memory.contiguous_cache import ContiguousKVCache
from sim.memory.paged_cache import PagedKVCache
from sim.request import RequestSpec, SpecError
from sim.sched.kv_ops import KVOps
from sim.sched.lifecycle import abort_group, admit_request, complete_step
from sim.sched.scheduler import Scheduler
from sim.sched.sequence import ABORTED, FINISHED, REJECTED, SWAPPED, WAITING, SeqGroup, SeqTable
from sim.sched.swap import SwapSpace

MML = 1000


class FakeRng:
    """Scripted stand-in for np.random.Generator's random() / integers() (beam selection)."""

    def __init__(self, randoms: list[list[float]], ints: list[list[int]]) -> None:
        self.randoms, self.ints = list(randoms), list(ints)

    def random(self, k: int) -> np.ndarray:
        return np.array(self.randoms.pop(0)[:k])

    def integers(self, lo: int, hi: int, size: int) -> np.ndarray:
        return np.array(self.ints.pop(0)[:size])


def make(num_blocks: int = 16, block_size: int = 4, *, watermark: float = 0.0, prefix: bool = False,
         swap_blocks: int = 0, rng: Any = None, **cfg: Any) -> Scheduler:
    cache = PagedKVCache(num_blocks, block_size, watermark=watermark, enable_prefix_caching=prefix)
    ops = KVOps(cache, SeqTable(16), max_model_len=MML)
    conf = SchedulerConfig(**cfg)
    swap = SwapSpace(swap_blocks, block_bytes=400.0, pcie_bandwidth_Bps=1e4)
    return Scheduler(ops, conf, token_budget=conf.token_budget(MML), swap=swap,
                     rng=rng if rng is not None else np.random.default_rng(0))


def make_contig(capacity: int, policy: str = "oracle", placement: str = "first_fit", **cfg: Any) -> Scheduler:
    cache = ContiguousKVCache(capacity, policy=policy, placement=placement, max_model_len=MML)
    conf = SchedulerConfig(**cfg)
    return Scheduler(KVOps(cache, SeqTable(16), max_model_len=MML), conf, token_budget=conf.token_budget(MML))


def add(s: Scheduler, rid: str, p: int, o: int, t: float = 0.0, **kw: Any) -> SeqGroup:
    return admit_request(s, RequestSpec(rid, t, p, o, **kw), max_model_len=MML)


def used(s: Scheduler) -> int:
    c = s.ops.cache
    return c.num_used_blocks if isinstance(c, PagedKVCache) else c.used_slots


def step(s: Scheduler, now: float = 0.0, extra: tuple[str, ...] = ()) -> dict[str, Any]:
    """Schedule, log, complete; checks every invariant after the step."""
    out = s.schedule()
    s.in_flight = True
    rid = s.slot_group
    e: dict[str, Any] = {
        "prefill": [(g.spec.req_id, c) for g, c, _ in out.prefills],
        "decode": sorted([rid[x].spec.req_id for x in out.simple_slots.tolist()]
                         + [g.spec.req_id for g in out.decode_groups]),
        "used": used(s),
    }
    if out.preempted:
        e["preempted"] = [g.spec.req_id for g in out.preempted]
    for key in extra:
        e[key] = getattr(out, key)
    done = complete_step(s, out, now)
    e["finished"] = sorted(g.spec.req_id for g in done)
    s.check_invariants()
    s.ops.cache.check_invariants()
    return e


def test_continuous_batching_prefill_decode_finish() -> None:
    s = make()
    add(s, "A", 5, 3)
    add(s, "B", 3, 2)
    log = [step(s, 1.0)]
    add(s, "C", 4, 1)  # arrives between steps: joins the running batch at the next step
    log += [step(s, 2.0), step(s, 3.0)]
    assert log == [
        # A: 5 tokens = 2 blocks, B: 3 tokens = 1 block; each prefill yields its first token.
        {"prefill": [("A", 5), ("B", 3)], "decode": [], "used": 3, "finished": []},
        # Decodes first (A ctx 6, B ctx 4: no new block), then C's prefill (1 block); B and C done.
        {"prefill": [("C", 4)], "decode": ["A", "B"], "used": 4, "finished": ["B", "C"]},
        {"prefill": [], "decode": ["A"], "used": 2, "finished": ["A"]},
    ]
    assert not s.has_work() and s.ops.cache.num_used_blocks == 0


def test_decode_takes_a_block_only_at_block_boundaries() -> None:
    s = make()
    add(s, "A", 4, 6)  # stores at most 4 + 6 - 1 = 9 tokens = 3 blocks
    log = [step(s) for _ in range(6)]
    assert [e["used"] for e in log] == [1, 2, 2, 2, 2, 3]  # ctx 4, 5, 6, 7, 8, 9
    assert log[-1]["finished"] == ["A"]


def test_lazy_decode_counters_are_exact_when_read() -> None:
    s = make()
    g = add(s, "A", 3, 20)
    for _ in range(7):  # prefill + 6 decodes: 3 + 6 = 9 tokens stored, 7 generated
        step(s)
    s.dset.materialize()
    slot = g.slots[0]
    assert (s.table.ctx[slot], s.table.gen[slot], s.table.nblk[slot]) == (9, 7, 3)
    # The cache was told about tokens lazily but always before it needed a block:
    assert s.ops.cache.num_tokens("A/0") == 9 and len(s.ops.cache.block_table("A/0")) == 3


def test_max_num_seqs_limits_the_batch() -> None:
    s = make(max_num_seqs=2)
    for r in "ABC":
        add(s, r, 4, 2)
    log = [step(s) for _ in range(4)]
    assert [(e["prefill"], e["decode"], e["finished"]) for e in log] == [
        ([("A", 4), ("B", 4)], [], []),
        ([], ["A", "B"], ["A", "B"]),  # C still waits: A and B leave only when the step completes
        ([("C", 4)], [], []),
        ([], ["C"], ["C"]),
    ]


def test_token_budget_defers_a_prefill() -> None:
    s = make(max_num_seqs=4, max_num_batched_tokens=8)
    add(s, "A", 5, 3)
    add(s, "B", 5, 2)
    log = [step(s, extra=("num_prefill_tokens", "num_decode_tokens")) for _ in range(3)]
    assert [(e["prefill"], e["decode"], e["num_prefill_tokens"], e["num_decode_tokens"]) for e in log] == [
        ([("A", 5)], [], 5, 0),  # B's 5 tokens do not fit in the 3 left
        ([("B", 5)], ["A"], 5, 1),  # 1 decode token + 5 <= 8
        ([], ["A", "B"], 0, 2),
    ]


def test_admission_watermark() -> None:
    s = make(num_blocks=10, watermark=0.2)  # int(0.2 * 10) = 2 blocks kept free at admission
    add(s, "A", 28, 2)  # 7 blocks: 10 - 7 = 3 >= 2
    add(s, "B", 8, 1)  # 2 blocks: 3 - 2 = 1 < 2 -> waits
    log = [step(s, extra=("blocked",)) for _ in range(3)]
    assert log == [
        {"prefill": [("A", 28)], "decode": [], "used": 7, "blocked": "later", "finished": []},
        # A's decode needs an 8th block (appends ignore the watermark); B still below it.
        {"prefill": [], "decode": ["A"], "used": 8, "blocked": "later", "finished": ["A"]},
        {"prefill": [("B", 8)], "decode": [], "used": 2, "blocked": "", "finished": ["B"]},
    ]


def test_preemption_recompute_victim_is_latest_arrival_and_requeued_first() -> None:
    s = make(num_blocks=4)
    add(s, "A", 4, 6, t=0.0)
    add(s, "B", 4, 6, t=1.0)
    log = [step(s)]
    c = add(s, "C", 4, 1, t=2.0)
    log += [step(s, extra=("blocked",)) for _ in range(6)]
    assert log[0] == {"prefill": [("A", 4), ("B", 4)], "decode": [], "used": 2, "finished": []}
    # Step 2: both cross into a second block (4 used); C waits for memory until step 7.
    assert [e["used"] for e in log[1:5]] == [4, 4, 4, 4]
    assert all(e["blocked"] == "later" for e in log[1:5])
    # Step 6: A and B both need a third block but none is free: B (latest arrival) is preempted,
    # freeing 2 blocks; A takes one and finishes (6 tokens out). No admission in a preempting step.
    assert log[5] == {"prefill": [], "decode": ["A"], "used": 3, "preempted": ["B"], "blocked": "",
                      "finished": ["A"]}
    # Step 7: B is ahead of C in the queue; its recompute prefills prompt + 5 generated = 9 tokens
    # (3 blocks), which yields its 6th and last token; C takes the 4th block.
    assert log[6] == {"prefill": [("B", 9), ("C", 4)], "decode": [], "used": 4, "blocked": "",
                      "finished": ["B", "C"]}
    assert [g.num_preemptions for g in (c,)] == [0]


def test_preemption_swap_moves_blocks_to_cpu_and_back() -> None:
    s = make(num_blocks=4, swap_blocks=10, preemption_mode="swap")
    add(s, "A", 4, 6, t=0.0)
    gb = add(s, "B", 4, 6, t=1.0)
    keys = ("swap_out_blocks", "swap_in_blocks", "swap_time_s")
    log = [step(s, extra=keys) for _ in range(8)]
    # Step 6: B (2 blocks, 8 tokens) goes to the CPU pool: 2 blocks * 400 B / 1e4 B/s = 0.08 s.
    assert log[5]["preempted"] == ["B"] and log[5]["swap_out_blocks"] == 2
    assert log[5]["swap_time_s"] == pytest.approx(0.08)
    assert log[5]["finished"] == ["A"]
    # Step 7: only the swap-in (2 blocks back, 0.08 s); B decodes again from step 8 (a 3rd block).
    assert log[6] == {"prefill": [], "decode": [], "used": 2, "swap_out_blocks": 0, "swap_in_blocks": 2,
                      "swap_time_s": pytest.approx(0.08), "finished": []}
    assert log[7]["decode"] == ["B"] and log[7]["used"] == 3 and log[7]["finished"] == ["B"]
    assert gb.num_preemptions == 1 and s.swap is not None and s.swap.used_blocks == 0


def test_swap_falls_back_to_recompute_when_the_cpu_pool_is_full() -> None:
    s = make(num_blocks=4, swap_blocks=1, preemption_mode="swap")
    add(s, "A", 4, 6, t=0.0)
    add(s, "B", 4, 6, t=1.0)
    log = [step(s) for _ in range(7)]
    assert log[5]["preempted"] == ["B"] and s.num_swap_fallbacks == 1
    assert log[6]["prefill"] == [("B", 9)]


def test_chunked_prefill_fills_the_budget_left_after_decodes() -> None:
    s = make(max_num_seqs=4, max_num_batched_tokens=4, chunked_prefill=True)
    add(s, "A", 10, 2)
    add(s, "B", 3, 1)
    log = [step(s) for _ in range(4)]
    assert log == [
        {"prefill": [("A", 4)], "decode": [], "used": 3, "finished": []},  # all 10 prompt slots allocated
        {"prefill": [("A", 4)], "decode": [], "used": 3, "finished": []},
        {"prefill": [("A", 2), ("B", 2)], "decode": [], "used": 4, "finished": []},
        {"prefill": [("B", 1)], "decode": ["A"], "used": 4, "finished": ["A", "B"]},
    ]


def test_parallel_sampling_forks_after_prefill_and_copies_on_write() -> None:
    s = make()
    g = add(s, "A", 6, 3, n=2)
    log = [step(s, extra=("num_cows", "num_decode_tokens")) for _ in range(3)]
    assert log == [
        {"prefill": [("A", 6)], "decode": [], "used": 2, "num_cows": 0, "num_decode_tokens": 0, "finished": []},
        # Both samples write into the shared half-full block: the first copies it (1 CoW).
        {"prefill": [], "decode": ["A"], "used": 3, "num_cows": 1, "num_decode_tokens": 2, "finished": []},
        {"prefill": [], "decode": ["A"], "used": 3, "num_cows": 0, "num_decode_tokens": 2, "finished": ["A"]},
    ]
    assert g.status == FINISHED and g.peak_blocks == 3


def test_beam_search_prunes_forks_and_copies_on_write() -> None:
    # Switch probability 1.0 * h / (h + gen): 1/3 after step 2 (gen 2), 1/4 after step 3 (gen 3).
    # Step 2 selection: every beam switches (randoms < 1/3); parents drawn [0, 0, 1] -> beam 0 gets two
    # children, beam 1 one, beam 2 none (pruned). Step 3 selection: no beam switches (randoms >= 1/4).
    rng = FakeRng(randoms=[[0.3, 0.3, 0.3], [0.3, 0.3, 0.3]], ints=[[0, 0, 1], [2, 2, 2]])
    s = make(rng=rng, beam_switch_prob=1.0, beam_switch_halflife=1.0)
    add(s, "A", 4, 4, beam_width=3)
    log = [step(s, extra=("num_cows",))]
    assert log[0]["used"] == 1  # the prompt's one full block, shared by the 3 beams after prefill
    log.append(step(s, extra=("num_cows",)))
    # Each beam appended into a new private block (the prompt block was full): 1 + 3 = 4 used;
    # then beam 2 was pruned (its block freed) and beam 0 forked: 3 blocks remain.
    assert log[1]["used"] == 4 and log[1]["num_cows"] == 0
    assert s.ops.cache.num_used_blocks == 3
    log.append(step(s, extra=("num_cows",)))
    # Beam 0 and its fork share a half-full block: the first append copies it.
    assert log[2]["used"] == 4 and log[2]["num_cows"] == 1
    log.append(step(s))
    assert log[3]["finished"] == ["A"] and s.ops.cache.num_used_blocks == 0


def test_speculative_decoding_rolls_back_rejected_drafts() -> None:
    s = make()
    add(s, "A", 4, 10, spec_k=4, spec_accept=0.0)  # every draft rejected
    step(s)
    out = s.schedule()
    s.in_flight = True
    # 1 input + 4 drafts: ctx 4 -> 9 needs 3 blocks; the 4 drafts are the speculative slots.
    assert out.num_decode_tokens == 5 and out.decode_q is not None and out.decode_q.tolist() == [5]
    assert s.ops.cache.num_used_blocks == 3 and int(s.table.spec.sum()) == 4
    complete_step(s, out, 0.0)
    # Rolled back to 5 tokens: the third block emptied and was freed; 2 tokens generated so far.
    assert s.ops.cache.num_used_blocks == 2 and s.ops.cache.num_tokens("A/0") == 5
    s.check_invariants()


def test_speculative_decoding_all_accepted_finishes_in_fewer_steps() -> None:
    s = make()
    add(s, "A", 4, 10, spec_k=4, spec_accept=1.0)
    log = [step(s, extra=("num_decode_tokens",)) for _ in range(3)]
    # Step 2: 4 drafts accepted + 1 -> 6 tokens; step 3: only 3 drafts (10 - 6 - 1) -> 10 tokens.
    assert [e["num_decode_tokens"] for e in log] == [0, 5, 4]
    assert log[-1]["finished"] == ["A"] and [e["used"] for e in log] == [1, 3, 4]


def test_prefix_cache_hits_skip_memory_and_compute() -> None:
    s = make(prefix=True)
    add(s, "A", 8, 5, prefix_hashes=(1, 2), prefix_unit=4)
    step(s)
    add(s, "B", 8, 2, prefix_hashes=(1, 2), prefix_unit=4)
    e = step(s)
    # B's two prompt blocks are A's: no new block; only its last prompt token is computed.
    assert e["prefill"] == [("B", 1)] and e["used"] == 3  # A took a 3rd block for its decode


def test_contiguous_wait_for_external_fragmentation_is_reported() -> None:
    s = make_contig(20)
    add(s, "A", 3, 5)  # oracle: 8 slots at [0, 8)
    add(s, "B", 1, 8)  # 9 slots at [8, 17), the longest-lived
    add(s, "C", 1, 2)  # 3 slots at [17, 20)
    add(s, "D", 9, 1)  # 10 slots: waits
    log = [step(s, extra=("blocked", "head_need")) for _ in range(9)]
    assert [e["blocked"] for e in log] == ["later"] * 5 + ["later_fragmented"] * 3 + [""]
    assert all(e["head_need"] == 10 for e in log[:8])
    assert [e["finished"] for e in log] == [[], ["C"], [], [], ["A"], [], [], ["B"], ["D"]]
    assert log[8]["prefill"] == [("D", 9)] and log[0]["used"] == 20


def test_contiguous_external_fragmentation_is_measured_from_holes() -> None:
    s = make_contig(20)
    for rid, p, o in (("A", 3, 5), ("B", 1, 8), ("C", 1, 2), ("D", 9, 1)):
        add(s, rid, p, o)
    for _ in range(5):
        step(s)
    # Holes [0, 8) and [17, 20) hold 11 free slots, none large enough for D's 10.
    c = s.ops.cache
    assert c.free_slots == 11 and c.external_fragmentation(10) == 11


def test_rejection_rules_at_arrival() -> None:
    s = make(num_blocks=10, max_num_seqs=4, max_num_batched_tokens=64)
    too_long = add(s, "L", 900, 200)
    assert too_long.status == REJECTED and "max_model_len" in too_long.reason
    many = add(s, "N", 4, 4, n=5)
    assert many.status == REJECTED and "max_num_seqs" in many.reason
    big_prompt = add(s, "P", 65, 1)
    assert big_prompt.status == REJECTED and "max_num_batched_tokens" in big_prompt.reason
    huge = add(s, "H", 40, 8)  # 47 tokens = 12 blocks > 10
    assert huge.status == REJECTED and "can never fit" in huge.reason
    ok = add(s, "K", 4, 4)
    assert ok.status == WAITING and list(s.waiting) == [ok]


def test_too_long_rule_truncate_and_error() -> None:
    s = make(num_blocks=400, too_long="truncate")
    g = add(s, "L", 900, 200)
    assert g.status == WAITING and g.output_len == 100 and "truncated" in g.reason
    s2 = make(num_blocks=400, too_long="error")
    with pytest.raises(SpecError, match="max_model_len"):
        add(s2, "L", 900, 200)


def test_contiguous_request_larger_than_pool_is_rejected() -> None:
    s = make_contig(10)
    g = add(s, "A", 8, 8)
    assert g.status == REJECTED and "can never fit" in g.reason


def test_abort_frees_memory_at_once_even_mid_step() -> None:
    s = make(num_blocks=8, swap_blocks=8)
    a = add(s, "A", 8, 10)
    b = add(s, "B", 4, 10)
    step(s)
    out = s.schedule()
    s.in_flight = True
    assert s.ops.cache.num_used_blocks == 5  # A: 9 tokens = 3 blocks, B: 5 tokens = 2 blocks
    assert abort_group(s, a, 0.5)  # cancelled while the step is in flight
    assert s.ops.cache.num_used_blocks == 2 and a.status == ABORTED and a.finish_s == 0.5
    complete_step(s, out, 1.0)
    s.check_invariants()
    assert not abort_group(s, a, 1.0)  # already ended
    w = add(s, "W", 4, 1)
    assert abort_group(s, w, 1.0) and not s.waiting
    assert b.status != ABORTED and step(s)["decode"] == ["B"]


def test_abort_of_a_swapped_group_releases_its_cpu_blocks() -> None:
    s = make(num_blocks=4, swap_blocks=10, preemption_mode="swap")
    add(s, "A", 4, 8, t=0.0)
    b = add(s, "B", 4, 8, t=1.0)
    for _ in range(6):
        step(s)
    assert b.status == SWAPPED and s.swap is not None and s.swap.used_blocks == 2
    assert abort_group(s, b, 9.0) and s.swap.used_blocks == 0
    s.check_invariants()


def test_beam_with_speculation_is_refused_by_the_engine() -> None:
    from sim.engine import check_workload

    with pytest.raises(SpecError, match="beam_width"):
        check_workload([RequestSpec("x", 0.0, 4, 4, beam_width=2, spec_k=2)])
    with pytest.raises(SpecError, match="duplicate"):
        check_workload([RequestSpec("x", 0.0, 4, 4), RequestSpec("x", 1.0, 4, 4)])
