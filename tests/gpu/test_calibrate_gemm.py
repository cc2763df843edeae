"""GEMM-curve calibration: recovers known parameters from noisy synthetic timings, splits held-out rows
honestly, rejects bad input, reads Vidur CSVs, and meets the issue's target on the real H100 profiles."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from paths import SHARED

from gpu.calibration.gemm import (
    GEMM_COLUMNS,
    check_gemm_timings,
    fit_gemm,
    predict,
    split,
    synthetic_gemm_timings,
)
from gpu.calibration.kernels import CalibrationError
from gpu.calibration.vidur import check_architecture, read_vidur_attention, read_vidur_mlp
from sim.presets import get_gpu, get_model
from sim.timing.gemm import H100_VIDUR, GemmParams, gemm_time, linear_shapes

H100 = get_gpu("h100-sxm")
VIDUR = SHARED / "calibration" / "vidur_profiles"
TOKENS = [1, 2, 4, 8, 16, 32, 64, 96, 128, 192, 256, 384, 512, 768, 1024, 1536, 2048, 3072, 4096]


def test_predict_equals_the_simulator_formula() -> None:
    m = np.array([1.0, 100.0, 4096.0])
    got = predict(H100_VIDUR, H100, m, np.full(3, 4096.0), np.full(3, 11008.0))
    assert got.tolist() == pytest.approx([gemm_time(int(x), 4096, 11008, H100) for x in m], rel=1e-12)


@pytest.mark.parametrize("seed", [0, 1])
def test_recovers_known_parameters_with_noise(seed: int) -> None:
    true = GemmParams(launch_s=4e-6, mem_efficiency=0.85, flops_efficiency=0.7, half_tokens=120.0)
    shapes = [(op, k, n) for m in ("llama-2-7b", "llama-2-70b") for tp in (1, 4)
              for op, k, n in linear_shapes(get_model(m), tp)]
    df = synthetic_gemm_timings(true, H100, shapes, TOKENS, np.random.default_rng(seed), noise=0.03)
    fit = fit_gemm(df, H100, holdout="every:4")
    got = fit.params
    for key, want in (("launch_s", 4e-6), ("mem_efficiency", 0.85), ("flops_efficiency", 0.7),
                      ("half_tokens", 120.0)):
        assert getattr(got, key) == pytest.approx(want, rel=0.1), key
    assert fit.report["fit"]["median_rel_err"] < 0.04 and fit.report["held_out"]["median_rel_err"] < 0.04
    assert fit.report["held_out"]["n"] > 0 and got.fitted_on == "H100-SXM"


def test_split_specs() -> None:
    df = pd.DataFrame({"num_tokens": [1, 2, 3, 4, 1, 2, 3, 4], "model": ["a"] * 4 + ["b"] * 4,
                       "tensor_parallel": [1, 1, 2, 2] * 2})
    assert split(df, "every:2").tolist() == [False, True, False, True] * 2
    assert split(df, "tokens>2").tolist() == [False, False, True, True] * 2
    assert split(df, "model:B").tolist() == [False] * 4 + [True] * 4
    assert split(df, "tp:2").tolist() == [False, False, True, True] * 2
    assert not split(df, "none").any()
    for bad in ("every:1", "tokens>x", "random", "tp:"):
        with pytest.raises(CalibrationError, match="--holdout"):
            split(df, bad)


def test_bad_timings_name_the_column_and_line() -> None:
    df = pd.DataFrame({c: [1.0, 2.0] for c in GEMM_COLUMNS})
    with pytest.raises(CalibrationError, match="missing required column"):
        check_gemm_timings(df.drop(columns=["k"]))
    df.loc[1, "latency_s"] = -1.0
    with pytest.raises(CalibrationError, match="column 'latency_s' line 3"):
        check_gemm_timings(df)
    few = synthetic_gemm_timings(H100_VIDUR, H100, [("x", 64, 64)], [1, 2, 4], np.random.default_rng(0))
    with pytest.raises(CalibrationError, match="rows left to fit"):
        fit_gemm(few, H100, holdout="none")


def test_vidur_mlp_reader(tmp_path) -> None:
    cols = {"n_head": 32, "n_kv_head": 8, "n_embd": 4096, "n_expanded_embd": 14336, "use_gated_mlp": True,
            "num_tokens": 16, "num_tensor_parallel_workers": 2}
    times = {f"time_stats.{op}.median": v for op, v in
             zip(("attn_pre_proj", "attn_post_proj", "mlp_up_proj", "mlp_down_proj"), (0.01, 0.02, 0.03, 0.04),
                 strict=True)}
    p = tmp_path / "mlp.csv"
    pd.DataFrame([{**cols, **times}]).to_csv(p, index=False)
    df = read_vidur_mlp(p, "Llama-3-8B")
    assert df[["op", "k", "n"]].values.tolist() == [
        ["attn_pre_proj", 4096, 3072], ["attn_post_proj", 2048, 4096], ["mlp_up_proj", 4096, 14336],
        ["mlp_down_proj", 7168, 4096]]
    assert df["latency_s"].tolist() == pytest.approx([1e-5, 2e-5, 3e-5, 4e-5])
    assert df[["op", "k", "n"]].values.tolist()[:4] == [list(s) for s in linear_shapes(get_model("llama-3-8b"), 2)]
    check_architecture(df, get_model("llama-3-8b"), "x")
    with pytest.raises(CalibrationError, match="n_kv_head"):
        check_architecture(df, get_model("llama-2-7b"), "x")
    pd.DataFrame([{**cols, **times, "time_stats.mlp_up_proj.median": "nan"}]).to_csv(p, index=False)
    with pytest.raises(CalibrationError, match=r"time_stats\.mlp_up_proj\.median' line 2"):
        read_vidur_mlp(p)
    pd.DataFrame([cols]).to_csv(p, index=False)
    with pytest.raises(CalibrationError, match="missing column"):
        read_vidur_mlp(p)


def test_vidur_attention_reader(tmp_path) -> None:
    base = {"n_q_head": 32, "n_kv_head": 32, "n_embd": 4096, "num_tensor_parallel_workers": 1,
            "block_size": 16, "max_model_len": 4096, "attention_backend": "FLASHINFER"}
    rows = [{**base, "batch_size": 4, "prefill_chunk_size": 0, "kv_cache_size": 31, "is_prefill": False,
             "time_stats.attn_decode.median": 0.02, "time_stats.attn_prefill.median": None},
            {**base, "batch_size": 1, "prefill_chunk_size": 128, "kv_cache_size": 0, "is_prefill": True,
             "time_stats.attn_decode.median": None, "time_stats.attn_prefill.median": 0.05}]
    p = tmp_path / "attention.csv"
    pd.DataFrame(rows).to_csv(p, index=False)
    dec, pre = read_vidur_attention(p)
    # 4 sequences of 32 keys (31 cached + the new token), 32 KV heads x 128 x 2 (K, V) x 2 bytes.
    assert dec["kv_bytes"].iloc[0] == 4 * 32 * 2 * 32 * 128 * 2
    assert dec["num_blocks_touched"].iloc[0] == 4 * 2 and dec["latency_s"].iloc[0] == pytest.approx(2e-5)
    assert pre["attn_flops"].iloc[0] == 4 * 32 * 128 * (128 * 129 / 2)


@pytest.mark.skipif(not VIDUR.is_dir(), reason=f"shared Vidur profiles not found at {VIDUR}")
def test_real_h100_profiles_within_ten_percent() -> None:
    """The issue's target: median relative error < 10% per model and TP degree, on held-out points."""
    df = pd.concat([read_vidur_mlp(VIDUR / "h100_Llama-2-7b-hf_mlp.csv", "Llama-2-7B"),
                    read_vidur_mlp(VIDUR / "h100_Llama-2-70b-hf_mlp.csv", "Llama-2-70B")], ignore_index=True)
    assert set(df["tensor_parallel"]) == {1, 2, 4, 8} and len(df) == 8352
    fit = fit_gemm(df, H100, holdout="every:5")
    for g in fit.report["groups"]:
        assert g["fit"]["median_rel_err"] < 0.10 and g["held_out"]["median_rel_err"] < 0.10, g
    # The shipped default is this fit (rounded): it must reproduce the same errors.
    for key in ("launch_s", "mem_efficiency", "flops_efficiency", "half_tokens"):
        assert getattr(fit.params, key) == pytest.approx(getattr(H100_VIDUR, key), rel=0.01), key
    # Cross-model: fitted on 7B only, the 70B points (never seen) stay within target, and vice versa.
    for held in ("model:Llama-2-70B", "model:Llama-2-7B"):
        cross = fit_gemm(df, H100, holdout=held)
        assert cross.report["held_out"]["median_rel_err"] < 0.10
        assert all(g["held_out"]["median_rel_err"] < 0.10 for g in cross.report["groups"] if g["held_out"]["n"])


def test_profile_labels() -> None:
    from gpu.calibration.vidur import profile_name

    assert profile_name("data/profiling/compute/h100/meta-llama/Llama-2-7b-hf/mlp.csv") == "Llama-2-7b-hf"
    assert profile_name("h100_Llama-2-70b-hf_mlp.csv") == "Llama-2-70b-hf"
    assert profile_name("my_profile.csv") == "my_profile"
