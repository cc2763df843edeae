"""Model/GPU presets, KV bytes per token for each KV dtype, and KV-pool sizing from a GPU budget."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sim.presets import (
    GPUS,
    KV_DTYPES,
    MODELS,
    GiB,
    ModelSpec,
    SpecError,
    default_activation_bytes,
    get_gpu,
    get_model,
    kv_capacity_tokens,
    parse_kv_dtype,
)


@pytest.mark.parametrize("model", list(MODELS.values()), ids=lambda m: m.name)
def test_architecture_invariants_and_param_count(model: ModelSpec) -> None:
    model.check_invariants()
    # The architecture (matmuls + embeddings) reproduces the published count; biases/norms are < 0.2%.
    assert model.estimate_params() == pytest.approx(model.num_params, rel=2e-3)


def test_kv_bytes_per_token_matches_design_numbers() -> None:
    assert get_model("opt-13b").kv_bytes_per_token() == 800 * 1024  # the vLLM paper's 800 KB
    assert get_model("llama-2-7b").kv_bytes_per_token() == 512 * 1024
    assert get_model("llama-2-70b").kv_bytes_per_token() == 2 * 80 * 8 * 128 * 2  # GQA: 8 KV heads
    assert get_model("llama-3-8b").kv_bytes_per_token("bf16") == 128 * 1024


@pytest.mark.parametrize("dtype", list(KV_DTYPES))
def test_kv_bytes_formula_for_every_dtype(dtype: str) -> None:
    for m in MODELS.values():
        expect = 2 * m.num_layers * m.num_kv_heads * m.head_dim * KV_DTYPES[dtype]
        assert m.kv_bytes_per_token(dtype) == expect


def test_quantized_scales_overhead() -> None:
    m = get_model("llama-2-7b")
    heads = 2 * m.num_layers * m.num_kv_heads
    assert m.kv_bytes_per_token("int8") == m.kv_bytes_per_token("fp16") / 2
    assert m.kv_bytes_per_token("int8:per_head") == heads * (m.head_dim + 4)
    assert m.kv_bytes_per_token("fp8_e4m3:per_block", block_size=16) == heads * (m.head_dim + 4 / 16)
    with pytest.raises(SpecError, match="needs block_size"):
        m.kv_bytes_per_token("int8:per_block")
    with pytest.raises(SpecError, match="valid: fp32, fp16, bf16, fp8_e4m3, int8"):
        m.kv_bytes_per_token("fp4")
    with pytest.raises(SpecError, match="only to fp8_e4m3/int8"):
        parse_kv_dtype("fp16:per_head")
    with pytest.raises(SpecError, match="per_tensor, per_kv_head, per_head, per_block"):
        parse_kv_dtype("int8:per_row")
    assert parse_kv_dtype("INT8") == ("int8", "per_tensor")


def test_lookup_is_case_insensitive_and_lists_valid_names() -> None:
    assert get_model("OPT-13b") is MODELS["opt-13b"]
    assert get_gpu(" h100-sxm ") is GPUS["h100-sxm"]
    assert get_model(MODELS["llama-3-8b"]) is MODELS["llama-3-8b"]
    with pytest.raises(ValueError, match=r"unknown model 'gpt-5' \(valid: OPT-13B, Llama-2-7B"):
        get_model("gpt-5")
    with pytest.raises(ValueError, match=r"unknown gpu 'v100' \(valid: A100-40GB, A100-80GB, H100-SXM, H200\)"):
        get_gpu("v100")


def test_gpu_data_sheet_figures() -> None:
    a40, a80, h100, h200 = (get_gpu(n) for n in ("a100-40gb", "a100-80gb", "h100-sxm", "h200"))
    for g in (a40, a80, h100, h200):
        g.check_invariants()
    assert (a40.hbm_bandwidth_Bps, a80.hbm_bandwidth_Bps) == (1555e9, 2039e9)
    assert (h100.hbm_bandwidth_Bps, h200.hbm_bandwidth_Bps) == (3.35e12, 4.8e12)
    assert a40.fp16_flops == a80.fp16_flops == 312e12 and h100.fp16_flops == h200.fp16_flops == 989e12
    assert (a40.memory_bytes, h100.memory_bytes, h200.memory_bytes) == (40 * GiB, 80 * GiB, 141 * GiB)
    assert a40.pcie_bandwidth_Bps < h100.pcie_bandwidth_Bps  # Gen4 vs Gen5


def test_mistral_has_sliding_window() -> None:
    m = get_model("mistral-7b")
    assert m.sliding_window == 4096 and m.num_kv_heads == 8
    assert all(x.sliding_window is None for x in MODELS.values() if x is not m)


def test_vllm_paper_anchor_opt13b_on_a100_40gb() -> None:
    """vLLM paper: OPT-13B on an A100-40GB leaves ~12 GB for KV, ~15.7K token slots of 800 KB."""
    m, g = get_model("opt-13b"), get_gpu("a100-40gb")
    tokens = kv_capacity_tokens(m, g)
    assert 15_200 <= tokens <= 16_200
    assert 11.5 <= tokens * m.kv_bytes_per_token() / GiB <= 12.5
    # The stated rule, exactly: memory * utilization - weights - activation reserve.
    free = 40 * GiB * 0.9 - m.num_params * 2 - default_activation_bytes(m)
    assert tokens == int(free // 819200)


def test_fp8_doubles_capacity() -> None:
    m, g = get_model("llama-2-13b"), get_gpu("a100-80gb")
    fp16 = kv_capacity_tokens(m, g, kv_dtype="fp16")
    fp8 = kv_capacity_tokens(m, g, kv_dtype="fp8_e4m3")
    assert fp8 in (2 * fp16, 2 * fp16 + 1)  # floor rounding of the halved per-token size
    assert kv_capacity_tokens(m, g, kv_dtype="int8:per_head") < fp8
    assert kv_capacity_tokens(m, g, kv_dtype="int8:per_block", block_size=16) < fp8


def test_activation_reserve_and_errors() -> None:
    m, g = get_model("llama-2-7b"), get_gpu("a100-40gb")
    base = kv_capacity_tokens(m, g, activation_bytes=0)
    assert base == int((40 * GiB * 0.9 - m.weight_bytes()) // m.kv_bytes_per_token())
    assert kv_capacity_tokens(m, g, activation_bytes=512 * 1024 * 1000) == base - 1000
    with pytest.raises(SpecError, match=r"gpu_memory_utilization = 1.5 out of range \(valid: \(0, 1\]\)"):
        kv_capacity_tokens(m, g, gpu_memory_utilization=1.5)
    with pytest.raises(SpecError, match="activation_bytes"):
        kv_capacity_tokens(m, g, activation_bytes=-1)


def test_seventy_b_needs_tensor_parallel() -> None:
    m = get_model("llama-2-70b")
    with pytest.raises(SpecError, match="does not fit on 1 x H200.*128.5 GiB weights"):
        kv_capacity_tokens(m, get_gpu("h200"))
    tp2 = kv_capacity_tokens(m, get_gpu("h100-sxm"), tensor_parallel=2)
    free_per_gpu = 80 * GiB * 0.9 - m.weight_bytes() / 2 - default_activation_bytes(m)
    assert tp2 == int(2 * free_per_gpu // m.kv_bytes_per_token())
    with pytest.raises(SpecError, match="tensor_parallel = 3 out of range"):
        kv_capacity_tokens(m, get_gpu("h100-sxm"), tensor_parallel=3)


@settings(max_examples=40, deadline=None)
@given(u1=st.floats(0.5, 1.0), u2=st.floats(0.5, 1.0), name=st.sampled_from(["llama-2-7b", "llama-3-8b",
                                                                              "mistral-7b"]))
def test_capacity_monotone_in_utilization(u1: float, u2: float, name: str) -> None:
    m, g = get_model(name), get_gpu("a100-80gb")
    lo, hi = sorted((u1, u2))
    assert kv_capacity_tokens(m, g, gpu_memory_utilization=lo) <= kv_capacity_tokens(m, g, gpu_memory_utilization=hi)


def test_per_kv_head_scales_cost_nothing_per_token():
    # the kernels' static per-KV-head scale (gpu.ops.quant "per_kv_head") adds no per-token bytes
    from sim.presets import get_model

    m = get_model("llama-2-7b")
    assert m.kv_bytes_per_token("int8:per_kv_head") == m.kv_bytes_per_token("int8") == 256 * 1024
    assert m.kv_bytes_per_token("int8:per_head") > m.kv_bytes_per_token("int8:per_kv_head")
