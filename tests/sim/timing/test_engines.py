"""Engine profiles and the latency terms they add, each checked against seconds worked out by hand.

OPT-13B on an A100-40GB unless said: 40 layers, 40 heads of 128, K+V 819,200 B per token (fp16),
HBM 1,555 GB/s, 312 TFLOP/s dense fp16, PCIe 25 GB/s one way.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from sim.config import PagedCacheSpec, SchedulerConfig, SimConfig
from sim.engine import Engine, simulate
from sim.presets import SpecError, get_gpu, get_model
from sim.request import RequestSpec
from sim.sched.step_output import SchedulerOutput
from sim.sched.swap import SwapSpace, SwapStats
from sim.timing.engines import DEFAULT_ENGINE, ENGINE_PROFILES, EngineProfile, engine_from_dict, get_engine
from sim.timing.gemm import H100_VIDUR, GemmLinear
from sim.timing.latency import BatchShape, CalibratedLatency, RooflineLatency, load_latency_model

KV = 819_200  # OPT-13B K+V bytes per token, fp16
IDEAL = get_engine("ideal")


def only(**kw: float | int | bool | None) -> EngineProfile:
    """The ideal profile with just the given terms switched on."""
    return dataclasses.replace(IDEAL, name="test", **kw)  # type: ignore[arg-type]


def lm(engine: EngineProfile | str, model: str = "opt-13b", gpu: str = "a100-40gb", tp: int = 1) -> RooflineLatency:
    return RooflineLatency(model, gpu, engine=engine, tensor_parallel=tp)


# ---- the profiles as data --------------------------------------------------------------------------------------

def test_profiles_are_named_sourced_frozen_data() -> None:
    assert {"basic", "ideal", "vllm-2023", "vllm-current"} <= set(ENGINE_PROFILES)
    assert DEFAULT_ENGINE == "basic"
    for name, p in ENGINE_PROFILES.items():
        assert p.name == name and p.description and p.source, name
        with pytest.raises(dataclasses.FrozenInstanceError):
            p.step_overhead_s = 1.0  # type: ignore[misc]
    assert get_engine("VLLM-2023") is ENGINE_PROFILES["vllm-2023"] and get_engine(None).name == "basic"
    with pytest.raises(SpecError, match="unknown engine profile 'nope' .*valid: basic, ideal"):
        get_engine("nope")
    with pytest.raises(SpecError, match="'seq_overhead_s' = -1 out of range"):
        only(seq_overhead_s=-1)
    with pytest.raises(SpecError, match="'attn_efficiency' = 1.5"):
        only(attn_efficiency=1.5)


def test_basic_is_the_model_before_profiles_bit_for_bit() -> None:
    """The default profile reproduces the pre-profile roofline (2 ms per step, nothing else) exactly."""
    b = BatchShape.build(prefill=[512], decode=[1000] * 31, block_size=16)
    assert lm("basic").step_time(b) == lm(IDEAL).step_time(b) + 2e-3
    assert round(lm("basic").step_time(b) * 1e3, 2) == 78.09  # docs/latency.md's example, unchanged


# ---- each term, by hand ----------------------------------------------------------------------------------------

def test_step_and_sequence_cpu_overheads() -> None:
    b = BatchShape.build(prefill=[10], decode=[100, 200, 300], block_size=16)  # 4 sequences
    p = only(step_overhead_s=1e-3, seq_overhead_s=1e-4)
    br = lm(p).breakdown(b)
    assert br["overhead"] == 1e-3 and br["seq_overhead"] == pytest.approx(4e-4)
    assert lm(p).step_time(b) == pytest.approx(lm(IDEAL).step_time(b) + 1e-3 + 4 * 1e-4, rel=1e-12)
    assert lm(p).step_time(BatchShape.build(decode=[], block_size=16)) == 0.0  # an idle step costs nothing
    assert p.overhead_s(0) == 0.0 and p.overhead_s(4) == pytest.approx(1.4e-3)


def test_attention_efficiency() -> None:
    # Two contexts of 100 in 16-token blocks: 7 blocks each, 224 slots read + 2 written, at 0.4 of 1,555 GB/s.
    b = BatchShape.build(decode=[100, 100], block_size=16)
    expect = 226 * KV / (1555e9 * 0.4)
    assert lm(only(attn_efficiency=0.4)).breakdown(b)["attn_decode"] == pytest.approx(expect, rel=1e-12)
    # Without its own efficiency the kernel runs at the model's 0.8: twice as fast.
    assert lm(IDEAL).breakdown(b)["attn_decode"] == pytest.approx(expect / 2, rel=1e-12)


def test_paged_decode_per_block_and_per_sequence_kernel_costs() -> None:
    b = BatchShape.build(decode=[100, 100], block_size=16)
    base = lm(IDEAL).breakdown(b)["attn_decode"]
    # 14 blocks x 40 layers x 40 heads x 1 ns
    assert lm(only(attn_block_s=1e-9)).breakdown(b)["attn_decode"] - base == pytest.approx(14 * 1600 * 1e-9)
    # 2 sequences x 40 layers x 40 heads x 1 ns
    assert lm(only(attn_seq_s=1e-9)).breakdown(b)["attn_decode"] - base == pytest.approx(2 * 1600 * 1e-9)
    # Block size 1: 200 blocks; a contiguous cache has none to walk.
    one = BatchShape.build(decode=[100, 100], block_size=1)
    assert (lm(only(attn_block_s=1e-9)).breakdown(one)["attn_decode"] - lm(IDEAL).breakdown(one)["attn_decode"]
            == pytest.approx(200 * 1600 * 1e-9))
    contig = BatchShape.build(decode=[100, 100], block_size=None)
    assert lm(only(attn_block_s=1e-9)).step_time(contig) == lm(IDEAL).step_time(contig)


def test_tensor_parallel_all_reduce_latency() -> None:
    # Llama-2-70B at TP 2: 2 all-reduces x 80 layers x 6 us = 0.96 ms per step; none at TP 1.
    b = BatchShape.build(decode=[500] * 8, block_size=16)
    with_lat = lm(only(comm_latency_s=6e-6), "llama-2-70b", "h100-sxm", tp=2).breakdown(b)["comm"]
    assert with_lat - lm(IDEAL, "llama-2-70b", "h100-sxm", tp=2).breakdown(b)["comm"] == pytest.approx(0.96e-3)
    assert lm(only(comm_latency_s=6e-6), "llama-2-7b", "h100-sxm").breakdown(b)["comm"] == 0.0


def test_swap_cost_per_copied_block() -> None:
    # A 16-token OPT-13B block: 13,107,200 B over 25 GB/s = 524.288 us, plus 2 x 40 copies x 5 us = 400 us.
    space = SwapSpace(10, 16 * KV, 25e9, block_copy_s=80 * 5e-6)
    assert space.transfer_time(3) == pytest.approx(3 * (524.288e-6 + 400e-6), rel=1e-12)
    assert SwapSpace(10, 16 * KV, 25e9).transfer_time(3) == pytest.approx(3 * 524.288e-6, rel=1e-12)
    eng = get_engine("vllm-2023")
    assert eng.copies_per_block(40) == 80 and only(swap_copies_per_layer=0).copies_per_block(40) == 1
    # The engine builds its swap space with the profile's per-block copy cost.
    cfg = SimConfig(cache=PagedCacheSpec(block_size=16), engine="vllm-2023",
                    scheduler=SchedulerConfig(preemption_mode="swap"))
    swap = Engine([RequestSpec(0, 0.0, 10, 5)], cfg).sched.swap
    assert swap is not None and swap.block_copy_s == pytest.approx(80 * 5e-6)


def test_overlapped_swaps_keep_only_the_copy_calls_on_the_critical_path() -> None:
    # 2 blocks out, 1 in, 1 ms of calls and 2 ms of PCIe per block; a 5 ms forward pass:
    # calls 3 ms (critical) + PCIe 6 ms overlapping 5 ms of compute -> 1 ms exposed: 9 ms in all.
    out = SchedulerOutput()
    out.swap_out_blocks, out.swap_in_blocks = 2, 1
    out.swap_out_s, out.swap_in_s, out.swap_in_groups_s = 6e-3, 3e-3, [3e-3]
    st = SwapStats(False, overlap=True, block_copy_s=1e-3)
    assert st.step(out, 5e-3) == pytest.approx(9e-3)
    assert out.swap_exposed_s == pytest.approx(4e-3) and st.hidden_s == pytest.approx(5e-3)
    # Without the overlap everything but a prefetched swap-in is on the critical path: 5 + 9 ms.
    out2 = dataclasses.replace(out, swap_in_groups_s=[3e-3])
    assert SwapStats(False).step(out2, 5e-3) == pytest.approx(14e-3)


def test_recompute_pays_the_real_prefill_of_prompt_and_generated_tokens() -> None:
    """A recompute preemption re-prefills prompt + generated tokens, timed as that prefill by the model."""
    reqs = [RequestSpec(0, 0.0, 20, 40), RequestSpec(1, 0.0, 20, 40)]
    cfg = SimConfig(cache=PagedCacheSpec(block_size=16, watermark=0.0), kv_capacity_tokens=80,
                    engine="vllm-2023")
    res = simulate(reqs, cfg, rng=0)
    assert res.summary["num_preemptions"] >= 1
    model = lm("vllm-2023")
    # The first step prefills both 20-token prompts; a later one-sequence prefill of more than 20 tokens
    # is a preempted request's prompt plus what it had generated.
    re_prefills = [s for s in res.steps[1:] if s.num_prefill_tokens > 20 and s.num_decode_tokens == 0]
    assert re_prefills, "no recompute prefill found"
    for s in re_prefills:
        assert s.batch_size == 1
        b = BatchShape.build(prefill=[s.num_prefill_tokens], block_size=16)
        assert s.duration_s == pytest.approx(model.step_time(b), rel=1e-12)


def test_gemm_curve_on_the_gpu_it_was_measured_on() -> None:
    b = BatchShape.build(prefill=[300], decode=[400] * 20, block_size=16)
    h100 = lm("vllm-2023", "llama-2-7b", "h100-sxm")
    assert h100.name == "roofline+gemm" and h100.gemm is H100_VIDUR
    expect = GemmLinear(get_model("llama-2-7b"), get_gpu("h100-sxm"), 1, H100_VIDUR)(320, 21)
    assert h100.breakdown(b)["linear"] == expect
    # Not extrapolated to another GPU: the A100 keeps the flat roofline (and its name).
    a100 = lm("vllm-2023", "llama-2-7b", "a100-40gb")
    assert a100.name == "roofline" and a100.gemm is None
    assert a100.breakdown(b)["linear"] == lm(IDEAL, "llama-2-7b", "a100-40gb").breakdown(b)["linear"]


@pytest.mark.parametrize("engine", sorted(ENGINE_PROFILES))
@pytest.mark.parametrize("gpu", ["a100-40gb", "h100-sxm"])
def test_decode_shortcut_equals_step_time_for_every_profile(engine: str, gpu: str) -> None:
    rng = np.random.default_rng(1)
    params = {"schema": "pagesim.latency/2", "source": "calibrated", "attn_decode": {"variants": {"paged": {
        "c0_s": 5e-6, "c_kv_bytes_s": 1e-12, "c_seqs_s": 2e-7, "c_blocks_s": 1e-8}}}}
    for model in (RooflineLatency("llama-2-7b", gpu, engine=engine),
                  CalibratedLatency(params, "llama-2-7b", gpu, engine=engine)):
        for bs in (0, 1, 16):
            ctx = rng.integers(1, 3000, size=int(rng.integers(1, 64)))
            blocks = int(((ctx + bs - 1) // bs).sum()) if bs else 0
            b = BatchShape(np.zeros(0), np.zeros(0), ctx, bs)
            assert model.decode_step_time(len(ctx), int(ctx.sum()), blocks, bs) == model.step_time(b)


# ---- parameters files and the run's records ---------------------------------------------------------------------

def _write(tmp: Path, d: dict) -> Path:
    p = tmp / "p.json"
    p.write_text(json.dumps(d))
    return p


def test_params_files_schema_1_and_2_and_the_engine_block(tmp_path: Path) -> None:
    v1 = {"schema": "pagesim.latency/1", "source": "roofline", "overhead_s": 5e-3}
    m = load_latency_model(_write(tmp_path, v1), "opt-13b", "a100-40gb")
    assert m.overhead_s == 5e-3 and m.engine.name == "basic"  # type: ignore[attr-defined]
    assert load_latency_model(v1, "opt-13b", "a100-40gb", engine="ideal").overhead_s == 0.0  # type: ignore[attr-defined]
    v2 = {"schema": "pagesim.latency/2", "source": "roofline",
          "engine": {"base": "ideal", "seq_overhead_s": 1e-4}}
    m2 = load_latency_model(_write(tmp_path, v2), "opt-13b", "a100-40gb")
    assert m2.engine.name == "ideal" and m2.seq_overhead_s == 1e-4  # type: ignore[attr-defined]
    assert load_latency_model({**v2, "engine": "vllm-2023"}, "opt-13b", "a100-40gb").engine.name == "vllm-2023"  # type: ignore[attr-defined]
    with pytest.raises(SpecError, match="'engine' needs schema 'pagesim.latency/2'"):
        load_latency_model({**v1, "engine": "ideal"}, "opt-13b", "a100-40gb")
    with pytest.raises(SpecError, match="unknown field 'bogus_s'"):
        load_latency_model({**v2, "engine": {"bogus_s": 1}}, "opt-13b", "a100-40gb")
    with pytest.raises(SpecError, match="'schema' = 'pagesim.latency/9' is not supported"):
        load_latency_model({**v2, "schema": "pagesim.latency/9"}, "opt-13b", "a100-40gb")
    assert engine_from_dict({"name": "vllm-current"}).name == "vllm-current"


def test_every_run_records_its_engine_and_latency_model() -> None:
    reqs = [RequestSpec(i, 0.1 * i, 30, 10) for i in range(5)]
    s = simulate(reqs, SimConfig(engine="vllm-2023"), rng=0).summary
    assert s["engine"] == "vllm-2023" and s["latency_model"] == "roofline"
    fast = simulate(reqs, SimConfig(engine="ideal"), rng=0).summary
    assert fast["engine"] == "ideal" and fast["duration_s"] < s["duration_s"]
    assert simulate(reqs, SimConfig(), rng=0).summary["engine"] == "basic"
    with pytest.raises(SpecError, match="config field 'engine' = 'x' out of range"):
        SimConfig(engine="x")
