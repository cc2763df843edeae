"""ContiguousKVCache: reservation policies, admission verdicts incl. external fragmentation."""

from __future__ import annotations

import pytest

from sim.memory.contiguous_cache import RESERVATION_POLICIES, ContigStatus, ContiguousKVCache
from sim.memory.outcomes import CacheError


def test_reservation_policies() -> None:
    mx, p2, orc = (RESERVATION_POLICIES[k] for k in ("max", "pow2", "oracle"))
    assert mx(10, 30, 2048) == 2048
    assert p2(10, 30, 2048) == 32 and p2(10, 32, 2048) == 32 and p2(10, 33, 2048) == 64
    assert p2(10, 1500, 2000) == 2000  # capped at max_model_len
    assert orc(10, 30, 2048) == 30
    for final in range(1, 300):  # pow2 over-reserves by less than 2x
        assert final <= p2(1, final, 4096) < 2 * final


def test_pow2_output_reserves_prompt_plus_rounded_output() -> None:
    """The vLLM paper's Orca (Pow2): an output of 25 tokens reserves 32 slots for it."""
    po = RESERVATION_POLICIES["pow2-output"]
    assert po(100, 125, 2048) == 132 and po(100, 132, 2048) == 132 and po(100, 133, 2048) == 164
    assert po(1000, 1600, 2048) == 2024 and po(1100, 1700, 2048) == 2048  # 1100 + 1024, capped
    assert po(7, 7, 64) == 7  # no output: the prompt alone
    for prompt in (1, 5, 161):
        for out in range(1, 400):  # the output part is over-reserved by less than 2x
            r = po(prompt, prompt + out, 8192)
            assert prompt + out <= r < prompt + 2 * out


def test_pow2_output_through_the_engine() -> None:
    from sim.config import ContiguousCacheSpec, SimConfig, system_label
    from sim.engine import simulate
    from sim.request import RequestSpec

    cache = ContiguousCacheSpec(policy="pow2-output")
    assert system_label(cache) == "contig-pow2-output"
    res = simulate([RequestSpec("a", 0.0, 100, 25), RequestSpec("b", 0.0, 30, 40, n=2)],
                   SimConfig(kv_capacity_tokens=4096, cache=cache))
    assert res.system == "contig-pow2-output"
    # One extent per request: (prompt + next power of two of the output) per sequence, first fit exact.
    assert [r.peak_blocks for r in res.requests] == [100 + 32, 2 * (30 + 64)]
    assert all(r.status == "finished" for r in res.requests)


def test_reservation_rejects_impossible_lengths() -> None:
    c = ContiguousKVCache(100, policy="oracle", max_model_len=64)
    with pytest.raises(ValueError, match="max_model_len"):
        c.reservation_size(10, 65)
    with pytest.raises(ValueError, match="prompt_len"):
        c.reservation_size(20, 10)


@pytest.mark.parametrize(("kw", "match"), [
    ({"policy": "huge"}, "policy = 'huge' is not valid.*max, oracle, pow2"),
    ({"placement": "worst_fit"}, "placement = 'worst_fit' is not valid.*best_fit, buddy, first_fit"),
    ({"max_model_len": 0}, "max_model_len"),
])
def test_bad_options(kw: dict[str, object], match: str) -> None:
    args: dict[str, object] = {"max_model_len": 16} | kw
    with pytest.raises(ValueError, match=match):
        ContiguousKVCache(100, **args)  # type: ignore[arg-type]


def test_admission_verdicts_and_external_fragmentation() -> None:
    c = ContiguousKVCache(100, policy="oracle", placement="first_fit", max_model_len=200)
    for i in range(5):
        assert c.allocate(i, 20)
    c.free(1)
    c.free(3)
    assert c.holes() == [(20, 20), (60, 20)] and c.free_slots == 40 and c.largest_free_extent == 20
    assert c.can_allocate(20) is ContigStatus.OK
    assert c.can_allocate(30) is ContigStatus.LATER_FRAGMENTED
    assert c.can_allocate(50) is ContigStatus.LATER
    assert c.can_allocate(101) is ContigStatus.NEVER
    assert c.external_fragmentation(30) == 40 and c.external_fragmentation(20) == 0
    assert not c.allocate("x", 30) and not c.has_seq("x")
    assert c.allocated(2) == (40, 20) and c.used_slots == 60 and c.num_seqs == 3
    c.check_invariants()


def test_buddy_placement_rounds_and_reports_footprint() -> None:
    c = ContiguousKVCache(64, placement="buddy", max_model_len=64)
    assert c.footprint(20) == 32
    assert c.allocate("a", 20)
    assert c.allocated("a") == (0, 32) and c.used_slots == 32 and c.free_slots == 32
    assert c.can_allocate(33) is ContigStatus.LATER
    assert c.can_allocate(65) is ContigStatus.NEVER
    c.free("a")
    assert c.holes() == [(0, 64)]
    c.check_invariants()


def test_misuse() -> None:
    c = ContiguousKVCache(10, max_model_len=10)
    c.allocate("a", 5)
    with pytest.raises(CacheError, match="'a' already allocated"):
        c.allocate("a", 1)
    with pytest.raises(CacheError, match="unknown sequence 'b'"):
        c.free("b")
    with pytest.raises(CacheError, match="unknown sequence 'b'"):
        c.allocated("b")
    with pytest.raises(ValueError, match="size = 0"):
        c.allocate("z", 0)


def test_op_sink() -> None:
    ops: list[dict[str, object]] = []
    c = ContiguousKVCache(10, placement="best_fit", max_model_len=10, op_sink=ops.append)
    c.allocate(1, 4)
    c.allocate(2, 20)  # fails: not logged
    c.free(1)
    assert [o["op"] for o in ops] == ["config", "allocate", "free"]
    assert ops[0]["kind"] == "contiguous" and ops[1] == {"op": "allocate", "seq": 1, "n": 4}
