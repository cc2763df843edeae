"""The GEMM efficiency curve: hand-worked times, the per-GPU shapes of each linear layer, the LM head,
tensor parallelism, the efficiency curve's half point, parameter checks and the transfer note."""

from __future__ import annotations

import numpy as np
import pytest

from sim.presets import SpecError, get_gpu, get_model
from sim.timing.gemm import (
    H100_VIDUR,
    GemmLinear,
    GemmParams,
    for_gpu,
    gemm_params_from_dict,
    gemm_time,
    linear_shapes,
    linear_time,
    transfer_note,
)

H100 = get_gpu("h100-sxm")
P = GemmParams(launch_s=5e-6, mem_efficiency=0.8, flops_efficiency=0.5, half_tokens=100.0)


def test_gemm_time_memory_bound_by_hand() -> None:
    # m=1, 4096x4096 fp16: (16,777,216 + 8,192) elements * 2 B = 33,570,816 B at 3.35e12 * 0.8 B/s
    # = 12.5265 us; compute 2 * 16,777,216 * 101 / (989e12 * 0.5) = 6.853 us < memory -> 5 + 12.5265 us.
    assert gemm_time(1, 4096, 4096, H100, P) == pytest.approx(5e-6 + 33_570_816 / 2.68e12, rel=1e-12)


def test_gemm_time_compute_bound_by_hand() -> None:
    # m=4096: compute 2 * 4096^2 * (4096 + 100) / 494.5e12 = 284.72 us > memory 37.56 us.
    t = gemm_time(4096, 4096, 4096, H100, P)
    assert t == pytest.approx(5e-6 + 2 * 4096 ** 2 * 4196 / 494.5e12, rel=1e-12)
    assert t == pytest.approx(289.72e-6, rel=1e-4)
    assert gemm_time(0, 4096, 4096, H100, P) == 0.0


def test_efficiency_is_half_at_half_tokens() -> None:
    # Compute-bound and without the launch cost, achieved FLOP/s at m = half_tokens is half the asymptote.
    p = GemmParams(0.0, 1.0, 0.6, 2000.0)
    m, k, n = 2000, 8192, 8192
    achieved = 2 * m * k * n / gemm_time(m, k, n, H100, p)
    assert achieved == pytest.approx(0.5 * 0.6 * H100.fp16_flops, rel=1e-12)


def test_linear_shapes_match_vidur_operators() -> None:
    assert linear_shapes(get_model("llama-2-7b")) == (
        ("attn_pre_proj", 4096, 12288), ("attn_post_proj", 4096, 4096),
        ("mlp_up_proj", 4096, 22016), ("mlp_down_proj", 11008, 4096))
    assert linear_shapes(get_model("llama-2-70b"), 8) == (  # GQA: 64 query + 2 x 8 KV heads, / 8
        ("attn_pre_proj", 8192, 1280), ("attn_post_proj", 1024, 8192),
        ("mlp_up_proj", 8192, 7168), ("mlp_down_proj", 3584, 8192))
    assert linear_shapes(get_model("opt-13b"))[2] == ("mlp_up_proj", 5120, 20480)  # ReLU MLP: no gate


def test_linear_time_sums_layers_and_lm_head() -> None:
    m = get_model("llama-2-7b")
    layer = sum(gemm_time(64, k, n, H100, P) for _, k, n in linear_shapes(m))
    head = gemm_time(8, m.hidden_size, m.vocab_size, H100, P)
    assert linear_time(m, H100, 64, params=P, logit_rows=8) == pytest.approx(32 * layer + head, rel=1e-12)
    assert linear_time(m, H100, 64, params=P) == pytest.approx(
        32 * layer + gemm_time(64, m.hidden_size, m.vocab_size, H100, P), rel=1e-12)
    assert linear_time(m, H100, 0, params=P, logit_rows=0) == 0.0


def test_tensor_parallel_shrinks_per_gpu_time() -> None:
    m = get_model("llama-2-70b")
    t1, t4 = (linear_time(m, H100, 512, tp) for tp in (1, 4))
    assert t4 < t1 / 2  # a quarter of the weights per GPU, plus per-GEMM launch costs


def test_memoized_calls_equal_fresh_ones() -> None:
    m = get_model("llama-2-13b")
    g = GemmLinear(m, H100, 1, H100_VIDUR)
    first = [g(n, r) for n, r in ((1, 1), (300, 2), (300, 2), (4096, 1))]
    fresh = [GemmLinear(m, H100, 1, H100_VIDUR)(n, r) for n, r in ((1, 1), (300, 2), (300, 2), (4096, 1))]
    assert first == fresh and first[1] == first[2]
    per_op = g.per_op(300)
    assert set(per_op) == {"attn_pre_proj", "attn_post_proj", "mlp_up_proj", "mlp_down_proj"}


def test_slower_than_flat_roofline_near_the_ridge() -> None:
    # The point of the curve: at a few hundred tokens a real GEMM is slower than max(memory, compute) at
    # one flat 0.8 efficiency (the old roofline), and it converges towards the compute roof at many tokens.
    m = get_model("llama-2-7b")
    for tokens in (256, 512):
        flat = sum(max((k * n + tokens * (k + n)) * 2 / (H100.hbm_bandwidth_Bps * 0.8),
                       2 * tokens * k * n / (H100.fp16_flops * 0.8)) for _, k, n in linear_shapes(m))
        curve = sum(gemm_time(tokens, k, n, H100) for _, k, n in linear_shapes(m))
        assert curve > 1.3 * flat


def test_params_checked() -> None:
    with pytest.raises(SpecError, match="mem_efficiency"):
        GemmParams(1e-6, 1.5, 0.5, 10.0)
    with pytest.raises(SpecError, match="half_tokens"):
        GemmParams(1e-6, 0.5, 0.5, -1.0)
    with pytest.raises(SpecError, match=r"missing key 'gemm\.half_tokens'"):
        gemm_params_from_dict({"launch_s": 1e-6, "mem_efficiency": 0.9, "flops_efficiency": 0.7})
    with pytest.raises(SpecError, match=r"'gemm\.flops_efficiency'"):
        gemm_params_from_dict({**H100_VIDUR.to_dict(), "flops_efficiency": 0})
    assert gemm_params_from_dict(H100_VIDUR.to_dict()) == H100_VIDUR


def test_transfer_note_only_off_the_fitted_gpu() -> None:
    assert transfer_note(H100_VIDUR, H100) == ""
    note = transfer_note(H100_VIDUR, get_gpu("a100-40gb"))
    assert "extrapolation" in note and "A100-40GB" in note


def test_for_gpu_scales_half_tokens_by_the_ridge_point() -> None:
    a100 = get_gpu("a100-80gb")
    p = for_gpu(H100_VIDUR, a100)
    ridge = (312e12 / 2039e9) / (989e12 / 3350e9)
    assert p.half_tokens == pytest.approx(173.6 * ridge, rel=1e-12) and p.half_tokens == pytest.approx(90.0, abs=0.1)
    assert (p.launch_s, p.mem_efficiency, p.flops_efficiency) == (6.46e-6, 0.985, 0.756)
    assert for_gpu(H100_VIDUR, H100) is H100_VIDUR
    custom = GemmParams(1e-6, 0.9, 0.7, 100.0, fitted_on="my-gpu")
    assert for_gpu(custom, a100) is custom  # unknown fitted GPU: nothing to scale by


# Vidur's A100 profile of Llama-2-7B at TP 1 (microsoft/vidur data/profiling/compute/a100/meta-llama/
# Llama-2-7b-hf/mlp.csv, time_stats.<op>.median in ms, hand-copied): never used by any fit, so this is a
# held-out GPU for the H100 curve's transfer. Tokens: (attn_pre_proj, attn_post_proj, mlp_up_proj, mlp_down_proj).
A100_7B_TP1_MS = {
    1: (0.065, 0.025, 0.116, 0.060), 8: (0.063, 0.025, 0.111, 0.061), 32: (0.066, 0.027, 0.115, 0.065),
    64: (0.067, 0.027, 0.116, 0.068), 128: (0.0745, 0.032, 0.157, 0.088), 144: (0.132, 0.038, 0.205, 0.139),
    160: (0.134, 0.038, 0.207, 0.141), 3456: (1.607, 0.4865, 2.853, 1.448), 4096: (1.911, 0.611, 3.3655, 1.604)}


def test_transfer_to_an_a100_spot_check() -> None:
    """The H100 curve on an A100-80GB: median error about 10%, worst 34% (128 tokens, a cuBLAS cliff);
    with half_tokens kept at the H100's 173.6 it would be 25% median, 81% worst."""
    a100, m = get_gpu("a100-80gb"), get_model("llama-2-7b")

    def errors(params: GemmParams) -> np.ndarray:
        return np.array([abs(gemm_time(tok, k, n, a100, params) / (t * 1e-3) - 1)
                         for tok, ms in A100_7B_TP1_MS.items()
                         for (_, k, n), t in zip(linear_shapes(m), ms, strict=True)])

    scaled = errors(H100_VIDUR)
    fixed = errors(GemmParams(6.46e-6, 0.985, 0.756, 173.6, fitted_on=""))  # no ridge scaling
    assert np.median(scaled) < 0.12 and scaled.max() < 0.40
    assert np.median(fixed) > 2 * np.median(scaled)
