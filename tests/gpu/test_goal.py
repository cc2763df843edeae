"""The goal benchmark and the one-script device check: the goal grid's axes and footprints, problems
built with the array module (paged and gathered contiguous caches hold the same tokens), the roofline
calibration form recovering known parameters in both regimes, and `benchmarks/device_check.sh
--dry-run` end to end on the CPU shim (the CI run of the script a GPU loan executes)."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from gpu.bench.goal import GoalShape, build_problem, goal_shapes
from gpu.calibration.kernels import CalibrationError, fit_roofline, roofline_predict

ROOT = Path(__file__).resolve().parents[2]


def test_goal_grid_axes():
    shapes = goal_shapes()
    assert len(shapes) == 36
    assert {s.batch for s in shapes} == {32, 64, 128} and {s.context for s in shapes} == {2048, 8192, 32768}
    assert {(s.num_heads, s.num_kv_heads) for s in shapes} == {(32, 32), (32, 8)}
    assert {s.kv_dtype for s in shapes} == {"fp16", "fp8"} and {(s.head_dim, s.block_size) for s in shapes} == {(128, 16)}
    big = GoalShape(128, 32768, 32, 32, "fp16")
    assert big.kv_bytes == 2 * 128 * 32768 * 32 * 128 * 2  # 64 GiB: with its contiguous copy it needs an H200
    assert big.footprint_bytes() > 80e9


def test_built_problem_contiguous_is_the_gathered_pool():
    shape = GoalShape(3, 40, 4, 2, "fp16")
    p = build_problem(np, shape, seed=1)
    assert p.k_pool.dtype == np.float16 and p.k_contig.shape == (3, 2, 40, 128)
    assert sorted(set(p.tables.ravel().tolist())) == sorted(p.tables.ravel().tolist())  # no block twice
    for i in range(3):
        for t in (0, 17, 39):
            blk, off = p.tables[i, t // 16], t % 16
            assert np.array_equal(p.k_contig[i, :, t], p.k_pool[blk, :, off])
            assert np.array_equal(p.v_contig[i, :, t], p.v_pool[blk, :, off])
    fp8 = build_problem(np, GoalShape(1, 16, 4, 4, "fp8"))
    assert fp8.k_pool.dtype == np.uint8 and not ((fp8.k_pool & 0x7F) == 0x7F).any()  # no NaN codes


def test_problem_is_generated_in_slabs(monkeypatch):
    from gpu.bench import goal

    shape = GoalShape(2, 33, 4, 2, "fp16")
    whole = build_problem(np, shape, seed=5)
    monkeypatch.setattr(goal, "SLAB", 1000)  # many slabs (the pool has 2 * 3 * 16 * 2 * 128 + spares)
    slabs = build_problem(np, shape, seed=5)
    assert np.isfinite(slabs.k_pool.astype(np.float32)).all() and slabs.k_pool.std() > 0.5
    # NumPy's generator draws the same stream whatever the slab size: the slabs leave no gap or overlap
    assert np.array_equal(slabs.k_pool, whole.k_pool) and np.array_equal(slabs.v_pool, whole.v_pool)


def _rows(params, kv, chain, noise, rng):
    y = roofline_predict(params, kv, chain) * (1 + noise * rng.standard_normal(len(kv)))
    return [{"variant": "paged", "kv_bytes": b, "waves": 1, "tiles_per_cta": w, "latency_s": t}
            for b, w, t in zip(kv, chain, y, strict=True)]


def test_roofline_fit_recovers_both_regimes():
    rng = np.random.default_rng(0)
    true = {"t0_s": 4e-6, "bw_Bps": 3.0e12, "t_tile_s": 0.8e-6}
    kv = np.array([2**k for k in range(20, 34)], float).repeat(2)
    chain = np.tile([4.0, 2000.0], 14)  # short and long per-CTA chains: both regimes appear
    fit = fit_roofline(_rows(true, kv, chain, 0.01, rng))["variants"]["paged"]
    assert fit["bw_Bps"] == pytest.approx(3.0e12, rel=0.05)
    assert fit["t_tile_s"] == pytest.approx(0.8e-6, rel=0.05)
    assert fit["regimes"]["bandwidth"]["n"] > 0 and fit["regimes"]["latency"]["n"] > 0
    assert fit["regimes"]["latency"]["max_rel_err"] < 0.05 and fit["regimes"]["bandwidth"]["max_rel_err"] < 0.05


def test_roofline_fit_errors_name_the_row():
    with pytest.raises(CalibrationError, match="row 0 lacks waves"):
        fit_roofline([{"variant": "paged", "kv_bytes": 1, "tiles_per_cta": 1, "latency_s": 1.0}])
    with pytest.raises(CalibrationError, match="row 0 needs latency_s > 0"):
        fit_roofline([{"variant": "paged", "kv_bytes": 1, "waves": 1, "tiles_per_cta": 1, "latency_s": 0.0}])
    with pytest.raises(CalibrationError, match="none given"):
        fit_roofline([])


def test_device_check_dry_run(tmp_path):
    out = tmp_path / "out"
    r = subprocess.run(["bash", str(ROOT / "benchmarks/device_check.sh"), str(out), "--dry-run"],
                       capture_output=True, text=True, timeout=600, env=_env())
    assert r.returncode == 0, r.stdout + r.stderr
    files = sorted(p.name for p in out.iterdir())
    assert len(files) <= 8 and {"timings.csv", "verdict.md", "calibration.json", "test_log.txt"} <= set(files)
    rows = list(csv.DictReader((out / "timings.csv").open()))
    assert len(rows) == 2 * len(goal_shapes(dry_run=True))
    assert {r["variant"] for r in rows} == {"paged", "contiguous"}
    assert all(float(r["max_paged_contig_diff"]) == 0.0 and float(r["ref_err"]) < 2e-3 for r in rows)
    assert any(int(r["partitions"]) > 1 for r in rows)  # the split path ran
    assert "passed" in (out / "test_log.txt").read_text()
    cal = json.loads((out / "calibration.json").read_text())
    assert set(cal["variants"]) == {"paged", "contiguous"} and "waves" in cal["form"]
    assert "| b1-c600-h4kv1-d128-bs16-fp16 | 3 x 256 |" in (out / "verdict.md").read_text()


def test_device_check_rejects_bad_options(tmp_path):
    r = subprocess.run(["bash", str(ROOT / "benchmarks/device_check.sh"), str(tmp_path), "--fast"],
                       capture_output=True, text=True, env=_env())
    assert r.returncode == 2 and "unknown option '--fast'" in r.stderr


def _env() -> dict[str, str]:
    import os

    return {**os.environ, "PYTHON": sys.executable}
