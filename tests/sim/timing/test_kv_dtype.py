"""Quantized KV storage through the simulator: the pool's capacity in tokens, the decode time the
roofline model charges, the swap traffic and the reports all follow the KV dtype's bytes per token."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from analysis.cli import app
from sim import RequestSpec, SchedulerConfig, SimConfig, simulate
from sim.config import resolve
from sim.presets import get_gpu, get_model
from sim.timing.latency import BatchShape, RooflineLatency


def test_fp8_doubles_the_pool_in_tokens() -> None:
    # Llama-3-8B on an H100: 460,657 fp16 slots (docs/latency.md), 921,315 at one byte per value.
    fp16 = resolve(SimConfig(model="llama-3-8b", gpu="h100-sxm"))
    fp8 = resolve(SimConfig(model="llama-3-8b", gpu="h100-sxm", kv_dtype="fp8_e4m3"))
    assert (fp16.capacity_tokens, fp8.capacity_tokens) == (460_657, 921_315)
    assert fp8.kv_bytes_per_token * 2 == fp16.kv_bytes_per_token == 131072
    assert (fp16.num_blocks, fp8.num_blocks) == (28_791, 57_582)  # // 16
    # Per-block int8 scales cost 2 * layers * kv_heads * 4 / 16 bytes a token: slightly fewer slots.
    i8 = resolve(SimConfig(model="llama-3-8b", gpu="h100-sxm", kv_dtype="int8:per_block"))
    assert i8.kv_bytes_per_token == 65536 + 2 * 32 * 8 * 4 / 16 and i8.capacity_tokens < fp8.capacity_tokens
    # The host swap pool is sized in blocks of the dtype too: 4 GiB holds twice as many fp8 blocks.
    assert fp8.cpu_swap_blocks == 2 * fp16.cpu_swap_blocks == 2 * (4 << 30) // (16 * 131072)


def test_decode_time_follows_the_bytes_read() -> None:
    model, gpu = get_model("llama-2-7b"), get_gpu("a100-80gb")
    req = [RequestSpec("A", 0.0, 2000, 40)]
    runs = {dt: simulate(req, SimConfig(model=model, gpu=gpu, kv_dtype=dt, kv_capacity_tokens=8192))
            for dt in ("fp16", "fp8_e4m3")}
    roof = RooflineLatency(model, gpu)
    for k in range(1, 40):  # decode steps: context 2000 + k, one sequence
        c = 2000 + k
        d16, d8 = (roof.breakdown(BatchShape.build(decode=[c], block_size=16, kv_dtype=dt))["attn_decode"]
                   for dt in ("fp16", "fp8_e4m3"))
        assert d8 == pytest.approx(d16 / 2, rel=1e-12)  # memory-bound: half the bytes, half the time
        got = runs["fp16"].steps[k].duration_s - runs["fp8_e4m3"].steps[k].duration_s
        assert got == pytest.approx(d16 - d8, rel=1e-9)  # only the KV reads differ
    assert runs["fp8_e4m3"].summary["mean_tpot_s"] < runs["fp16"].summary["mean_tpot_s"]


def test_a_quantized_pool_runs_twice_the_batch() -> None:
    reqs = [RequestSpec(i, 0.0, 500, 500) for i in range(60)]  # 1000 slots each, all at once
    res = {dt: simulate(reqs, SimConfig(kv_dtype=dt, scheduler=SchedulerConfig(preemption_mode="swap")), rng=0)
           for dt in ("fp16", "fp8_e4m3")}
    s16, s8 = res["fp16"].summary, res["fp8_e4m3"].summary
    # OPT-13B on an A100-40GB: 15,424 fp16 slots in blocks of 16 (15,435 // 16 * 16) vs 30,864.
    assert (s16["capacity_tokens"], s8["capacity_tokens"]) == (15_424, 30_864)
    assert s8["mean_batch_size"] > 1.6 * s16["mean_batch_size"]
    assert s8["duration_s"] < s16["duration_s"]
    for s, kvb in ((s16, 819200), (s8, 409600)):
        assert s["kv_bytes_per_token"] == kvb
        assert s["swap_out_bytes"] == s["swap_out_blocks"] * 16 * kvb  # swap traffic in the dtype's bytes
    assert s8["kv_dtype"] == "fp8_e4m3"


def test_cli_reports_the_dtype_and_refuses_an_unknown_one(tmp_path: object) -> None:
    r = CliRunner().invoke(app, ["run", "-n", "5", "--kv-dtype", "fp8_e4m3", "--no-plots", "--out", f"{tmp_path}/a"])
    assert r.exit_code == 0, r.output
    import pandas as pd

    row = pd.read_csv(f"{tmp_path}/a/summary.csv").iloc[0]
    assert row["kv_dtype"] == "fp8_e4m3" and row["kv_bytes_per_token"] == 409600
    bad = CliRunner().invoke(app, ["run", "-n", "5", "--kv-dtype", "fp5", "--no-plots", "--out", f"{tmp_path}/b"])
    assert bad.exit_code == 2 and "kv_dtype 'fp5'" in bad.output and "valid:" in bad.output
