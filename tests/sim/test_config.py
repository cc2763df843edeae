"""Run configuration: impossible values are rejected naming the field and range; labels; sizing."""

from __future__ import annotations

from typing import Any

import pytest

from sim.config import (
    CACHE_SEMANTICS,
    CONTIG_PLACEMENTS,
    CONTIG_POLICIES,
    ContiguousCacheSpec,
    PagedCacheSpec,
    SchedulerConfig,
    SimConfig,
    resolve,
    system_label,
)
from sim.engine import simulate
from sim.memory.contiguous_cache import RESERVATION_POLICIES
from sim.memory.extent_allocator import PLACEMENTS
from sim.memory.semantics import SEMANTICS
from sim.request import RequestSpec, SpecError
from sim.sched.swap import SwapSpace, SwapSpaceError


def _any(v: object) -> Any:
    """A wrongly typed value, as a user's config file could give."""
    return v


@pytest.mark.parametrize(("make", "field", "valid"), [
    (lambda: PagedCacheSpec(block_size=0), "cache.block_size", "integer >= 1"),
    (lambda: PagedCacheSpec(block_size=_any(2.5)), "cache.block_size", "integer >= 1"),
    (lambda: PagedCacheSpec(watermark=1.0), "cache.watermark", "[0, 1)"),
    (lambda: PagedCacheSpec(watermark=-0.1), "cache.watermark", "[0, 1)"),
    (lambda: PagedCacheSpec(prefix_caching=_any("yes")), "cache.prefix_caching", "true or false"),
    (lambda: ContiguousCacheSpec(policy="exact"), "cache.policy", "max, pow2, pow2-output, oracle"),
    (lambda: ContiguousCacheSpec(placement="worst_fit"), "cache.placement", "first_fit, best_fit, buddy"),
    (lambda: SchedulerConfig(max_num_seqs=0), "scheduler.max_num_seqs", "integer >= 1"),
    (lambda: SchedulerConfig(max_num_seqs=8, max_num_batched_tokens=4), "scheduler.max_num_batched_tokens",
     ">= max_num_seqs = 8"),
    (lambda: SchedulerConfig(preemption_mode="kill"), "scheduler.preemption_mode", "recompute, swap"),
    (lambda: SchedulerConfig(cpu_swap_space_gb=-1), "scheduler.cpu_swap_space_gb", "GiB >= 0"),
    (lambda: SchedulerConfig(too_long="clip"), "scheduler.too_long", "reject, truncate, error"),
    (lambda: SchedulerConfig(beam_switch_prob=1.5), "scheduler.beam_switch_prob", "[0, 1]"),
    (lambda: SchedulerConfig(beam_switch_halflife=0), "scheduler.beam_switch_halflife", "tokens > 0"),
    (lambda: SimConfig(kv_capacity_tokens=0), "kv_capacity_tokens", "integer in [1, 4,294,967,296]"),
    (lambda: SimConfig(gpu_memory_utilization=0.0), "gpu_memory_utilization", "(0, 1]"),
    (lambda: SimConfig(max_model_len=1), "max_model_len", "integer >= 2"),
    (lambda: SimConfig(memory_sample_interval_s=0), "memory_sample_interval_s", "seconds > 0"),
    (lambda: SimConfig(cache=_any("paged")), "cache", "PagedCacheSpec"),
    (lambda: SimConfig(scheduler=_any({"max_num_seqs": 4})), "scheduler", "SchedulerConfig"),
])
def test_bad_values_name_the_field_and_range(make: Any, field: str, valid: str) -> None:
    with pytest.raises(SpecError) as ei:
        make()
    msg = str(ei.value)
    assert f"'{field}'" in msg and valid in msg and "\n" not in msg


def test_memory_smaller_than_one_block() -> None:
    with pytest.raises(SpecError, match=r"kv_capacity_tokens' = 8 is smaller than one block.*>= block_size = 16"):
        resolve(SimConfig(kv_capacity_tokens=8))


def test_unknown_presets_and_dtype_are_rejected_before_running() -> None:
    with pytest.raises(SpecError, match="unknown model"):
        simulate([RequestSpec(0, 0.0, 4, 4)], SimConfig(model="gpt-5"))
    with pytest.raises(SpecError, match="kv_dtype"):
        simulate([RequestSpec(0, 0.0, 4, 4)], SimConfig(kv_dtype="fp4"))


def test_model_that_does_not_fit_the_gpu() -> None:
    with pytest.raises(SpecError, match="does not fit"):
        resolve(SimConfig(model="llama-2-70b", gpu="a100-40gb"))


def test_default_sizing_is_the_papers_opt13b_a100_pool() -> None:
    r = resolve(SimConfig())
    # The vLLM paper: about 12 GB of KV, ~15.7K token slots for OPT-13B on one A100-40GB.
    assert 15_000 <= r.capacity_tokens <= 16_000 and r.num_blocks == r.capacity_tokens // 16
    assert r.max_model_len == 2048 and r.token_budget == 2048
    assert r.cpu_swap_blocks == int(4 * 2**30 // (16 * 819200))


def test_token_budget_defaults() -> None:
    assert SchedulerConfig().token_budget(2048) == 2048
    assert SchedulerConfig().token_budget(8192) == 8192
    assert SchedulerConfig(chunked_prefill=True).token_budget(8192) == 512
    assert SchedulerConfig(max_num_batched_tokens=300).token_budget(8192) == 300


def test_system_labels() -> None:
    assert system_label(PagedCacheSpec()) == "paged-16"
    assert system_label(PagedCacheSpec(block_size=32, prefix_caching=True)) == "paged-32+prefix"
    assert system_label(ContiguousCacheSpec()) == "contig-max"
    assert system_label(ContiguousCacheSpec("pow2", "best_fit")) == "contig-pow2-best_fit"
    assert SimConfig(cache=ContiguousCacheSpec("oracle", "buddy")).to_dict()["system"] == "contig-oracle-buddy"


def test_choices_match_the_memory_layer() -> None:
    assert set(CONTIG_POLICIES) == set(RESERVATION_POLICIES)
    assert set(CONTIG_PLACEMENTS) == set(PLACEMENTS)
    assert tuple(SEMANTICS) == CACHE_SEMANTICS


def test_semantics_and_policy_fields() -> None:
    assert system_label(PagedCacheSpec(semantics="vllm-v0")) == "paged-16@vllm-v0"
    assert system_label(PagedCacheSpec(prefix_caching=True, semantics="vllm-v1")) == "paged-16+prefix@vllm-v1"
    with pytest.raises(SpecError, match="cache.semantics.*pagesim, vllm-v0, vllm-v1"):
        PagedCacheSpec(semantics="v0")
    with pytest.raises(SpecError, match="scheduler.policy.*mixed, vllm-v0, vllm-v1"):
        SchedulerConfig(policy="orca")
    with pytest.raises(SpecError, match="vLLM v1 has no swap"):
        SchedulerConfig(policy="vllm-v1", preemption_mode="swap")
    v1 = SchedulerConfig(policy="vllm-v1")
    assert v1.chunked and not v1.chunked_prefill and v1.token_budget(4096) == 512


def test_config_dict_is_plain_data() -> None:
    d = SimConfig(scheduler=SchedulerConfig(preemption_mode="swap")).to_dict()
    assert d["cache"] == {"kind": "paged", "block_size": 16, "prefix_caching": False, "watermark": 0.01,
                          "semantics": "pagesim"}
    assert d["scheduler"]["policy"] == "mixed"
    assert d["scheduler"]["preemption_mode"] == "swap" and d["model"] == "opt-13b" and d["latency"] is None


def test_swap_space_accounting_and_misuse() -> None:
    sw = SwapSpace(10, block_bytes=1000.0, pcie_bandwidth_Bps=1e6)
    assert sw.swap_out("a", 4) == pytest.approx(0.004) and sw.free_blocks == 6
    assert not sw.can_swap_out(7)
    with pytest.raises(SwapSpaceError, match="'a' already holds"):
        sw.swap_out("a", 1)
    with pytest.raises(SwapSpaceError, match="'b': 7 blocks do not fit"):
        sw.swap_out("b", 7)
    assert sw.swap_in("a", gpu_blocks=5) == pytest.approx(0.005) and sw.used_blocks == 0
    assert (sw.total_out, sw.total_in) == (4, 5)
    with pytest.raises(SwapSpaceError, match="'a' holds no blocks"):
        sw.swap_in("a")
    sw.check_invariants()
