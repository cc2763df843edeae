"""`pagesim calibrate` with every source: GEMM timings, Vidur profiles (the shared H100 ones when present,
a hand-made attention.csv), serving benchmarks with a held-out file; the files it writes drive the
simulator (the GEMM block replaces the linear term, the engine block the overheads)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from paths import DATA, SHARED
from typer.testing import CliRunner, Result

from analysis.cli import app
from gpu.calibration.gemm import synthetic_gemm_timings
from gpu.calibration.overheads import ReplaySetup, synthetic_benchmark
from sim.presets import get_gpu, get_model
from sim.timing.engines import get_engine
from sim.timing.gemm import GemmLinear, GemmParams, gemm_params_from_dict, linear_shapes
from sim.timing.latency import BatchShape, CalibratedLatency, load_latency_model

VIDUR = SHARED / "calibration" / "vidur_profiles"
H100 = get_gpu("h100-sxm")
FIXTURE = DATA / "vllm_serving_llama2_7b_h100.json"


def _run(*args: str) -> Result:
    return CliRunner().invoke(app, ["calibrate", *args])


def test_gemm_timings_to_a_params_file_that_drives_the_linear_term(tmp_path: Path) -> None:
    true = GemmParams(5e-6, 0.9, 0.7, 150.0)
    m = get_model("llama-2-7b")
    csv = tmp_path / "gemm_timings.csv"
    synthetic_gemm_timings(true, H100, list(linear_shapes(m)), [1, 8, 32, 64, 128, 256, 512, 1024, 2048, 4096],
                           np.random.default_rng(0), noise=0.02).to_csv(csv, index=False)
    out = tmp_path / "p.json"
    res = _run(str(csv), "-o", str(out), "--model", "llama-2-7b", "--gpu", "h100-sxm")
    assert res.exit_code == 0, res.output
    assert "GEMM curve error per model" in res.output and "held-out" in res.output
    params = json.loads(out.read_text())
    assert "attn_decode" not in params and params["fit"]["gemm"]["held_out"]["n"] > 0
    g = gemm_params_from_dict(params["gemm"])
    assert g.half_tokens == pytest.approx(150.0, rel=0.1) and g.flops_efficiency == pytest.approx(0.7, rel=0.05)
    lm = load_latency_model(out, "llama-2-7b", "h100-sxm")
    assert isinstance(lm, CalibratedLatency)
    batch = BatchShape.build(prefill=[300], decode=[100] * 20, block_size=16)
    assert lm.breakdown(batch)["linear"] == pytest.approx(GemmLinear(m, H100, 1, g)(320, 21), rel=1e-12)
    # the decode term stays the roofline's: the same as a roofline run with the same engine and curve
    dec = BatchShape.build(decode=[700] * 8, block_size=16)
    assert lm.step_time(dec) == pytest.approx(lm.decode_step_time(8, 5600, 8 * 44, 16), rel=1e-12)


def test_vidur_attention_csv(tmp_path: Path) -> None:
    base = {"n_q_head": 32, "n_kv_head": 32, "n_embd": 4096, "num_tensor_parallel_workers": 1, "block_size": 16,
            "max_model_len": 4096, "attention_backend": "FLASHINFER"}
    rows = []
    for b in (1, 4, 16, 64):
        for ctx in (127, 511, 2047):
            t = (5e-6 + 1e-12 * b * (ctx + 1) * 2 * 32 * 128 * 2 + 2e-7 * b) * 1e3
            rows.append({**base, "batch_size": b, "prefill_chunk_size": 0, "kv_cache_size": ctx, "is_prefill": False,
                         "time_stats.attn_decode.median": t, "time_stats.attn_prefill.median": None})
    for chunk in (64, 128, 256, 512, 1024, 2048):
        flops = 4 * 32 * 128 * chunk * (chunk + 1) / 2
        rows.append({**base, "batch_size": 1, "prefill_chunk_size": chunk, "kv_cache_size": 0, "is_prefill": True,
                     "time_stats.attn_decode.median": None,
                     "time_stats.attn_prefill.median": (8e-6 + flops / 400e12) * 1e3})
    p = tmp_path / "attention.csv"
    pd.DataFrame(rows).to_csv(p, index=False)
    out = tmp_path / "p.json"
    res = _run(str(p), "-o", str(out), "--model", "llama-2-7b", "--gpu", "h100-sxm")
    assert res.exit_code == 0, res.output
    params = json.loads(out.read_text())
    assert params["attn_prefill"]["c0_s"] == pytest.approx(8e-6, rel=0.01)
    assert 1 / params["attn_prefill"]["c_flops_s"] == pytest.approx(400e12, rel=0.01)
    assert params["attn_decode"]["variants"]["paged"]["c_kv_bytes_s"] == pytest.approx(1e-12, rel=0.02)
    assert params["fit"]["attn_prefill"]["held_out"]["n"] == 1


@pytest.mark.skipif(not VIDUR.is_dir(), reason=f"shared Vidur profiles not found at {VIDUR}")
def test_shared_vidur_profile_through_the_cli(tmp_path: Path) -> None:
    out = tmp_path / "p.json"
    res = _run(str(VIDUR / "h100_Llama-2-70b-hf_mlp.csv"), "-o", str(out), "--model", "llama-2-70b",
               "--gpu", "h100-sxm", "--holdout", "tp:8")
    assert res.exit_code == 0, res.output
    rep = json.loads(out.read_text())["fit"]["gemm"]
    assert rep["held_out"]["n"] == 4 * 261 and rep["held_out"]["median_rel_err"] < 0.10
    res = _run(str(VIDUR / "h100_Llama-2-70b-hf_mlp.csv"), "-o", str(out), "--model", "llama-2-7b", "--gpu",
               "h100-sxm")
    assert res.exit_code == 2 and "n_embd = [8192] but --model Llama-2-7B has 4096" in res.output


def test_serving_benchmarks_fit_and_held_out_file(tmp_path: Path) -> None:
    setup = ReplaySetup(model="Llama-2-7B", gpu="H100-SXM")
    rng = np.random.default_rng(5)
    ins, outs = rng.integers(20, 500, 50).tolist(), rng.integers(10, 200, 50).tolist()
    true = dataclasses.replace(get_engine("vllm-current"), step_overhead_s=2e-3, seq_overhead_s=3e-5)
    files = []
    for rate in (3.0, 12.0):
        f = tmp_path / f"bench_{rate:g}qps.json"
        f.write_text(json.dumps(synthetic_benchmark(ins, outs, rate, setup, true, rng, noise=0.02)))
        files.append(f)
    out = tmp_path / "served.json"
    res = _run(str(files[0]), "-o", str(out), "--model", "llama-2-7b", "--gpu", "h100-sxm", "--engine",
               "vllm-current", "--held-out-bench", str(files[1]))
    assert res.exit_code == 0, res.output
    assert "held-out file" in res.output and "engine overheads (vllm-current+fit)" in res.output
    params = json.loads(out.read_text())
    lm = load_latency_model(out, "llama-2-7b", "h100-sxm")
    assert isinstance(lm, CalibratedLatency)
    eng = lm.engine
    assert eng.name == "vllm-current+fit" and eng.step_overhead_s == params["engine"]["step_overhead_s"]
    assert eng.attn_block_s == get_engine("vllm-current").attn_block_s  # the base profile's other terms
    held = [r for r in params["fit"]["engine"]["rows"] if r["split"] == "held-out file"]
    assert len(held) == 8 and np.median([abs(r["rel_err"]) for r in held]) < 0.10
    res = _run(str(FIXTURE), "-o", str(out), "--gpu", "h100-sxm")
    assert res.exit_code == 2 and "needs --model and --gpu" in res.output


def test_unknown_inputs_and_bad_holdout_exit_2(tmp_path: Path) -> None:
    odd = tmp_path / "x.csv"
    pd.DataFrame({"a": [1]}).to_csv(odd, index=False)
    res = _run(str(odd), "-o", str(tmp_path / "p.json"))
    assert res.exit_code == 2 and f"{odd}: not recognized" in res.output and len(res.output.splitlines()) == 1
    res = _run(str(tmp_path / "none.json"), "-o", str(tmp_path / "p.json"))
    assert res.exit_code == 2 and "none.json: not found" in res.output
    res = _run(str(FIXTURE), "-o", str(tmp_path / "p.json"), "--holdout", "half")
    assert res.exit_code == 2 and "--holdout 'half': not understood" in res.output
