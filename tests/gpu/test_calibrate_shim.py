"""`pagesim bench --backend cpu --quick` then `pagesim calibrate` works, and says loudly that its
parameters come from the CPU shim (in the file, the warnings and every run's latency-model label)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from analysis.cli import app
from gpu.calibration.kernels import CPU_SHIM_DEVICE, CalibrationError, fit, min_rows, synthetic_timings
from sim.presets import get_gpu
from sim.timing.latency import load_latency_model

TRUE = {"c0_s": 5e-6, "c_kv_bytes_s": 1e-12, "c_seqs_s": 2e-7, "c_blocks_s": 1e-8}
GRID = {"batch_size": [1, 4, 16], "context_len": [32, 512, 2048], "block_size": [1, 16],
        "num_heads": [8], "num_kv_heads": [8], "head_dim": [64], "variant": ["paged", "contiguous"]}


def _timings(device: str) -> pd.DataFrame:
    df = synthetic_timings(TRUE, GRID, np.random.default_rng(0), noise=0.02)
    df["device"] = device
    return df


def test_cpu_shim_timings_are_marked_and_warned_about(tmp_path: Path) -> None:
    params = fit(_timings(CPU_SHIM_DEVICE), gpu=get_gpu("h100-sxm"))
    assert params["cpu_shim"] is True and params["label"].startswith("CPU-SHIM TIMINGS, NOT A GPU")
    assert params["fit"]["warnings"][0].startswith("NOT A GPU CALIBRATION") and "H100-SXM" in params["fit"]["warnings"][0]
    p = tmp_path / "p.json"
    p.write_text(json.dumps(params))
    assert load_latency_model(p, "opt-13b", "h100-sxm").name == "calibrated:p.json [CPU-shim timings: not a GPU]"
    gpu_params = fit(_timings("NVIDIA H100 80GB HBM3"), gpu=get_gpu("h100-sxm"))
    assert gpu_params["cpu_shim"] is False and not gpu_params["label"].startswith("CPU")
    assert not any(w.startswith("NOT A GPU") for w in gpu_params["fit"]["warnings"])


def test_a_variant_with_too_few_rows_is_skipped_with_a_warning_unless_it_is_the_only_paged_one() -> None:
    df = _timings("x")
    few = df[df["variant"] == "contiguous"].head(min_rows("contiguous") - 1)
    params = fit(pd.concat([df[df["variant"] == "paged"], few]))
    assert set(params["attn_decode"]["variants"]) == {"paged"}
    assert any("variant contiguous: 4 timing rows, fewer than the 5 a fit needs" in w for w in params["fit"]["warnings"])
    with pytest.raises(CalibrationError, match=r"variant paged: 3 timing rows, need at least 6 .*--grid quick"):
        fit(df[df["variant"] == "paged"].head(3))


def test_bench_cpu_quick_then_calibrate(tmp_path: Path) -> None:
    runner = CliRunner()
    res = runner.invoke(app, ["bench", "--backend", "cpu", "--quick", "--no-plots", "--out", str(tmp_path / "b")])
    assert res.exit_code == 0, res.output
    out = tmp_path / "p.json"
    res = runner.invoke(app, ["calibrate", str(tmp_path / "b" / "timings.csv"), "-o", str(out), "--gpu", "h100-sxm"])
    assert res.exit_code == 0, res.output
    assert "NOT A GPU CALIBRATION" in res.output
    params = json.loads(out.read_text())
    assert params["cpu_shim"] is True and params["fit"]["attn_decode"]["devices"] == [CPU_SHIM_DEVICE]
    assert params["label"].startswith("CPU-SHIM TIMINGS, NOT A GPU")
    assert {"paged", "partitioned", "contiguous"} <= set(params["attn_decode"]["variants"])
