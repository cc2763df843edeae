"""Calibration: recover known coefficients from noisy synthetic timings, reject bad timings, round-trip
through the parameters file into the simulator's latency model, and the `pagesim calibrate` command."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from analysis.cli import app
from gpu.calibration.kernels import (
    REQUIRED_COLUMNS,
    CalibrationError,
    fit,
    fit_table,
    nnls,
    read_timings,
    synthetic_timings,
    write_default_params,
    write_params,
)
from sim.presets import get_gpu, get_model
from sim.timing.latency import (
    BatchShape,
    CalibratedLatency,
    LatencyModel,
    RooflineLatency,
    load_latency_model,
)
from sim.timing.latency_params import PARAMS_DIR

TRUE = {"c0_s": 5e-6, "c_kv_bytes_s": 1e-12, "c_seqs_s": 2e-7, "c_blocks_s": 1e-8}
# Small heads and blocks down to 1 token, so that every term is >= 50% of some row's latency: then
# each coefficient is identifiable under noise. 48 points per variant.
GRID = {"batch_size": [1, 4, 16, 64], "context_len": [32, 128, 512, 2048], "block_size": [1, 4, 16],
        "num_heads": [8], "num_kv_heads": [8], "head_dim": [64]}


def test_noise_free_timings_recover_coefficients_exactly() -> None:
    params = fit(synthetic_timings(TRUE, GRID, np.random.default_rng(1), noise=0.0))
    got = params["attn_decode"]["variants"]["paged"]
    for k, v in TRUE.items():
        assert got[k] == pytest.approx(v, rel=1e-6)
    assert params["fit"]["variants"]["paged"]["max_rel_err"] < 1e-9


@pytest.mark.parametrize("seed", range(5))
def test_noisy_timings_recover_coefficients_within_tolerance(seed: int) -> None:
    """2% multiplicative Gaussian noise: every coefficient within 10% (over 300 seeds the worst was 7.1%,
    for c_seqs_s; the others stayed under 4.5%); the fit's median relative error is about the noise."""
    params = fit(synthetic_timings(TRUE, GRID, np.random.default_rng(seed), noise=0.02))
    got = params["attn_decode"]["variants"]["paged"]
    for k, v in TRUE.items():
        assert got[k] == pytest.approx(v, rel=0.10), k
    rep = params["fit"]["variants"]["paged"]
    assert 0.005 < rep["median_rel_err"] < 0.03 and rep["max_rel_err"] < 0.10
    assert [r["block_size"] for r in rep["by_block_size"]] == [1, 4, 16]
    assert sum(r["n"] for r in rep["by_block_size"]) == rep["n_points"] == 48


def test_each_variant_gets_its_own_fit_and_contiguous_has_no_block_term() -> None:
    coeffs = {"paged": TRUE, "partitioned": {**TRUE, "c0_s": 3e-5},
              "contiguous": {**TRUE, "c_blocks_s": 0.0}, "torch_sdpa": {**TRUE, "c0_s": 1e-3}}
    df = synthetic_timings(coeffs, {**GRID, "variant": list(coeffs)}, np.random.default_rng(0), noise=0.0)
    params = fit(df)
    v = params["attn_decode"]["variants"]
    assert set(v) == {"paged", "partitioned", "contiguous"}  # torch_sdpa is a baseline, not fitted
    assert v["partitioned"]["c0_s"] == pytest.approx(3e-5, rel=1e-6)
    assert v["contiguous"]["c_blocks_s"] == 0.0
    assert params["fit"]["variants"]["contiguous"]["fixed_zero"] == ["c_blocks_s"]
    assert params["fit"]["ignored_rows"]["torch_sdpa"] == 16
    assert params["fit"]["warnings"] == []
    table = fit_table(params)
    assert list(table.columns) == ["variant", "block_size", "n", "median_rel_err", "max_rel_err"]
    assert len(table) == 3 + 1 + 3 + 1 + 1 + 1  # per block size + "all" per variant
    assert table.loc[table["variant"] == "contiguous", "n"].tolist() == [16, 16]


def test_nnls_satisfies_kkt_conditions() -> None:
    rng = np.random.default_rng(3)
    a = rng.random((30, 4))
    y = a @ np.array([1.0, -2.0, 0.5, 3.0]) + 0.01 * rng.standard_normal(30)
    x = nnls(a, y)
    grad = a.T @ (a @ x - y)
    assert (x >= 0).all() and x[1] == 0.0
    assert np.allclose(grad[x > 0], 0, atol=1e-9) and (grad[x == 0] >= -1e-9).all()


def test_missing_columns_are_named(tmp_path: Path) -> None:
    df = synthetic_timings(TRUE, GRID, np.random.default_rng(0)).drop(columns=["kv_bytes", "latency_s"])
    p = tmp_path / "t.csv"
    df.to_csv(p, index=False)
    with pytest.raises(CalibrationError, match=f"timings file {p}: missing required column.s. kv_bytes, latency_s"):
        read_timings(p)


def test_too_few_points_is_rejected() -> None:
    df = synthetic_timings(TRUE, GRID, np.random.default_rng(0)).head(5)
    with pytest.raises(CalibrationError, match=r"variant paged: 5 timing rows, need at least 6 \(4 coefficients \+ 2\)"):
        fit(df)


def test_bad_values_name_column_and_line(tmp_path: Path) -> None:
    df = synthetic_timings(TRUE, GRID, np.random.default_rng(0))
    df["latency_s"] = df["latency_s"].astype(object)
    df.loc[3, "latency_s"] = "fast"
    with pytest.raises(CalibrationError, match="column 'latency_s' line 5: 'fast' is not a finite number > 0"):
        fit(df)
    df2 = synthetic_timings(TRUE, GRID, np.random.default_rng(0))
    df2.loc[0, "variant"] = "flash"
    with pytest.raises(CalibrationError, match="column 'variant' line 2: 'flash' is not one of paged"):
        fit(df2)
    only_torch = synthetic_timings(TRUE, {**GRID, "variant": ["torch_sdpa"]}, np.random.default_rng(0))
    with pytest.raises(CalibrationError, match="no rows of a fitted variant"):
        fit(only_torch)
    (tmp_path / "t.txt").write_text("x")
    with pytest.raises(CalibrationError, match=r"unknown format '.txt' \(valid: .csv, .parquet\)"):
        read_timings(tmp_path / "t.txt")
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(CalibrationError, match="empty.csv: cannot read"):
        read_timings(tmp_path / "empty.csv")


def test_collinear_grid_warns_and_fixes_coefficient() -> None:
    df = synthetic_timings(TRUE, {**GRID, "batch_size": [8]}, np.random.default_rng(0), noise=0.0)
    params = fit(df)
    assert params["fit"]["variants"]["paged"]["fixed_zero"] == ["c_seqs_s"]
    assert "cannot separate c_seqs_s" in params["fit"]["warnings"][0]


def test_parquet_and_model_filter(tmp_path: Path) -> None:
    model = get_model("llama-3-8b")  # 32 heads, 8 KV heads, head_dim 128
    df = pd.concat([synthetic_timings(TRUE, {**GRID, "num_heads": [32], "num_kv_heads": [8], "head_dim": [128]},
                                      np.random.default_rng(0), noise=0.0),
                    synthetic_timings({**TRUE, "c0_s": 1.0}, GRID, np.random.default_rng(1), noise=0.0)])
    p = tmp_path / "t.parquet"
    df.to_parquet(p)
    params = fit(read_timings(p), model=model, gpu=get_gpu("h100-sxm"))
    assert params["attn_decode"]["variants"]["paged"]["c0_s"] == pytest.approx(5e-6, rel=1e-6)
    assert params["fit"]["heads"] == [(32, 8, 128)] and (params["model"], params["gpu"]) == ("Llama-3-8B", "H100-SXM")
    other = fit(df, model=get_model("opt-13b"))
    assert "no rows with OPT-13B's" in other["fit"]["warnings"][0]


def test_round_trip_calibrate_load_step_time(tmp_path: Path) -> None:
    """calibrate -> params file -> load_latency_model -> step_time follows the fitted formula."""
    model, gpu = get_model("llama-2-7b"), get_gpu("h100-sxm")
    df = synthetic_timings(TRUE, {**GRID, "num_heads": [32], "num_kv_heads": [32], "head_dim": [128]},
                           np.random.default_rng(7), noise=0.02)
    path = write_params(fit(df, model=model, gpu=gpu, timings_name="t.csv"), tmp_path / "p.json")
    lm = load_latency_model(path, model, gpu)
    assert isinstance(lm, CalibratedLatency) and lm.name == "calibrated:p.json"
    c = json.loads(path.read_text())["attn_decode"]["variants"]["paged"]
    ctx = np.array([37, 500, 2048, 1])
    batch = BatchShape.build(decode=ctx.tolist(), block_size=16, prefill=[64])
    kv_per_layer = 2 * 32 * 128 * 2 * ctx.sum()
    blocks = (-(-ctx // 16)).sum()
    per_layer = c["c0_s"] + c["c_kv_bytes_s"] * kv_per_layer + c["c_seqs_s"] * 4 + c["c_blocks_s"] * blocks
    roof = RooflineLatency(model, gpu).breakdown(batch)
    expect = 32 * per_layer + roof["linear"] + roof["attn_prefill"] + roof["overhead"]
    assert lm.step_time(batch) == pytest.approx(expect, rel=1e-12)
    # and the fitted formula reproduces the synthetic truth within the fit tolerance
    truth = TRUE["c0_s"] + TRUE["c_kv_bytes_s"] * kv_per_layer + TRUE["c_seqs_s"] * 4 + TRUE["c_blocks_s"] * blocks
    assert per_layer == pytest.approx(truth, rel=0.05)


def test_write_default_params_reproduces_shipped_files(tmp_path: Path) -> None:
    written = write_default_params(tmp_path)
    assert {p.name for p in written} == {p.name for p in PARAMS_DIR.glob("*.json")}
    for p in written:
        assert p.read_text() == (PARAMS_DIR / p.name).read_text()


def test_cli_calibrate(tmp_path: Path) -> None:
    timings = tmp_path / "timings.csv"
    synthetic_timings(TRUE, {**GRID, "variant": ["paged", "contiguous", "torch_sdpa"]},
                      np.random.default_rng(0), noise=0.02).to_csv(timings, index=False)
    out = tmp_path / "params.json"
    res = CliRunner().invoke(app, ["calibrate", str(timings), "-o", str(out), "--gpu", "h100-sxm"])
    assert res.exit_code == 0, res.output
    assert "Fit error" in res.output and "ignored 16 torch_sdpa" in res.output
    params = json.loads(out.read_text())
    assert params["gpu"] == "H100-SXM" and set(params["attn_decode"]["variants"]) == {"paged", "contiguous"}

    bad = tmp_path / "bad.csv"
    pd.DataFrame({c: [1] for c in REQUIRED_COLUMNS if c != "dtype"}).to_csv(bad, index=False)
    res = CliRunner().invoke(app, ["calibrate", str(bad), "-o", str(out)])
    assert res.exit_code == 2
    assert res.output.strip().splitlines() == [
        f"pagesim calibrate: error: timings file {bad}: missing required column(s) dtype "
        f"(required: {', '.join(REQUIRED_COLUMNS)})"]
    res = CliRunner().invoke(app, ["calibrate", str(timings), "-o", str(out), "--model", "gpt-9"])
    assert res.exit_code == 2 and "unknown model 'gpt-9' (valid: OPT-13B" in res.output
    res = CliRunner().invoke(app, ["calibrate", str(timings), "-o", str(out), "--model", "llama-2-70b",
                                   "--tensor-parallel", "3"])
    assert res.exit_code == 2 and "tensor_parallel = 3 out of range" in res.output


def test_round_trip_through_the_simulator(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """calibrate -> `simulate(..., SimConfig(latency=PARAMS.json))` -> every step's duration is the fitted
    decode formula (computed here from the batch the engine built) plus the roofline linear/prefill terms."""
    import sim.engine as engine
    from sim.config import PagedCacheSpec, SimConfig
    from sim.request import RequestSpec

    model, gpu = get_model("llama-2-7b"), get_gpu("h100-sxm")
    df = synthetic_timings(TRUE, {**GRID, "num_heads": [32], "num_kv_heads": [32], "head_dim": [128]},
                           np.random.default_rng(3), noise=0.02)
    path = write_params(fit(df, model=model, gpu=gpu), tmp_path / "p.json")
    c = json.loads(path.read_text())["attn_decode"]["variants"]["paged"]
    seen: list[BatchShape] = []
    real_load = engine.load_latency_model

    class Recording:  # the loaded model, recording the batches the engine asks about
        def __init__(self, lm: LatencyModel) -> None:
            self.lm, self.name = lm, lm.name

        def step_time(self, batch: BatchShape) -> float:
            seen.append(batch)
            return self.lm.step_time(batch)

    def recording_load(*args, **kw) -> Recording:
        return Recording(real_load(*args, **kw))

    monkeypatch.setattr(engine, "load_latency_model", recording_load)
    rng = np.random.default_rng(0)
    reqs = [RequestSpec(i, float(i) * 0.01, int(rng.integers(5, 300)), int(rng.integers(1, 40))) for i in range(30)]
    res = engine.simulate(reqs, SimConfig(model="llama-2-7b", gpu="h100-sxm", cache=PagedCacheSpec(block_size=16),
                                          latency=str(path)))
    assert res.summary["latency_model"] == "calibrated:p.json"
    assert len(seen) == len(res.steps) > 30
    roof = RooflineLatency(model, gpu)
    decode_steps = 0
    for b, step in zip(seen, res.steps, strict=True):
        ctx = b.decode_context_lens
        per_layer = (c["c0_s"] + c["c_kv_bytes_s"] * 16384 * ctx.sum() + c["c_seqs_s"] * ctx.size
                     + c["c_blocks_s"] * (-(-ctx // 16)).sum()) if ctx.size else 0.0
        r = roof.breakdown(b)
        assert step.duration_s == pytest.approx(32 * per_layer + r["linear"] + r["attn_prefill"] + r["overhead"],
                                                rel=1e-12)
        decode_steps += bool(ctx.size)
    assert decode_steps > 10


@pytest.mark.parametrize("window", [0, 50])
def test_features_match_the_kernel_harness_definitions(window: int) -> None:
    """The calibrated model's kv_bytes / num_blocks_touched are what gpu.ops.attention reports for the same
    contexts (the bench writes those columns), including a sliding window."""
    from gpu.ops.attention import kv_bytes_read, make_problem, num_blocks_touched
    from sim.timing.latency import decode_blocks_touched

    rng = np.random.default_rng(window)
    ctx = rng.integers(1, 300, 8)
    prob = make_problem(ctx, num_heads=8, num_kv_heads=2, head_dim=64, block_size=16, dtype="fp16", rng=rng,
                        window=window)
    w = window or None
    keys = ctx if w is None else np.minimum(ctx, w)
    assert kv_bytes_read(prob) == int(keys.sum()) * 2 * 2 * 64 * 2
    assert num_blocks_touched(prob) == int(decode_blocks_touched(ctx, 16, w).sum())
