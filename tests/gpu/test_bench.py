"""The benchmark harness on the CPU path: grid expansion, timers and statistics, bandwidth arithmetic,
output writing and resume, with the CPU shim standing in for the kernel on tiny shapes and a fake or
model timer standing in for CUDA events. The GPU test (`-m gpu`) runs `pagesim bench --quick`."""

from __future__ import annotations

import math
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from analysis.bench_plots import plot_all, plot_paged_overhead
from analysis.cli import app
from gpu.bench import harness as bench
from gpu.bench.device import DeviceInfo, detect_device, match_gpu_preset
from gpu.bench.grid import GRIDS, BenchGrid, context_lens_for
from gpu.bench.harness import BenchOptions, check_subset, run_bench
from gpu.bench.output import (
    COLUMNS,
    OutputError,
    TimingsWriter,
    achieved_bandwidth,
    bandwidth_fraction,
    load_timings,
    overhead_pct,
)
from gpu.bench.timing import FakeTimer, WallTimer, should_flush, summarize
from gpu.calibration.kernels import read_timings
from gpu.ops import attention
from sim.presets import GPUS

# Tiny shapes: a CPU-shim launch takes milliseconds at these sizes.
TINY = BenchGrid(variants=("paged", "partitioned", "contiguous", "torch_sdpa"), batch_sizes=(2,),
                 context_lens=(9, 37), context_modes=("fixed", "mixed"), block_sizes=(8, 16), heads=((4, 2),),
                 head_dims=(64,), dtypes=("fp32", "fp16"))
PEAK = 2e9  # a made-up peak so bw_fraction is a number on the CPU path


def cpu_device(l2_bytes: int = 0) -> DeviceInfo:
    return replace(detect_device("cpu"), l2_bytes=l2_bytes).with_peak(PEAK)


class ModelTimer:
    """Durations from the launch itself: 1 ns per KV byte, paged kernels 10% slower, split ones 25%
    slower, torch 2x; every rep the same. Lets the test know every row's latency and overhead."""

    def __init__(self) -> None:
        self.measurements = 0

    @staticmethod
    def latency(fn: Any) -> float:
        if isinstance(fn, attention.PreparedDecode):
            t = attention.kv_bytes_read(fn.problem) * 1e-9
            return t * (1.1 if fn.variant != "contiguous" else 1.0) * (1.25 if fn.partitioned else 1.0)
        return fn.kv_bytes * 2e-9  # TorchSdpa

    def measure(self, fn: Any, *, reps: int, warmup: int, flush: Any = None) -> np.ndarray:
        self.measurements += 1
        for _ in range(warmup + reps):
            fn()
        return np.full(reps, self.latency(fn))


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Path, ModelTimer]:
    out = tmp_path_factory.mktemp("bench") / "timings.csv"
    timer = ModelTimer()
    report = run_bench(TINY.configs(), backend="cpu", timer=timer, device=cpu_device(), out_csv=out,
                       options=BenchOptions(reps=2, warmup=1))
    return report, out, timer


# ------------------------------------------------------------------------------------------- grid
def test_grid_ids_unique_stable_and_valid() -> None:
    for grid in GRIDS.values():
        configs = list(grid.configs())
        ids = [c.config_id for c in configs]
        assert len(ids) == len(set(ids)), grid.name
        for c in configs:
            c.check_invariants()
    c = next(c for c in GRIDS["quick"].configs() if c.variant == "paged" and c.batch_size == 32)
    assert c.config_id == f"paged-b32-c{c.context_len}-bs{c.block_size}-h32kv8-d128-fp16"


def test_grid_order_contiguous_first_and_block_size_zero() -> None:
    seen_shapes: set[tuple[object, ...]] = set()
    for c in TINY.configs():
        if c.shape_key not in seen_shapes:
            assert c.variant == "contiguous", c.config_id  # the baseline opens every shape
            seen_shapes.add(c.shape_key)
        assert (c.block_size == 0) == (c.variant in ("contiguous", "torch_sdpa"))
    # per shape: contiguous + torch + 2 variants x 2 block sizes; 2 contexts x 2 modes x 2 dtypes
    assert TINY.size() == 6 * 2 * 2 * 2


def test_mixed_lengths_deterministic_and_independent_of_other_axes() -> None:
    a = {c.config_id: c.context_lens for c in TINY.configs()}
    wider = replace(TINY, block_sizes=(16, 8, 32), dtypes=("fp16",))
    b = {c.config_id: c.context_lens for c in wider.configs()}
    common = set(a) & set(b)
    assert len(common) > 10 and all(a[k] == b[k] for k in common)
    mixed = [c for c in TINY.configs() if c.context_mode == "mixed"]
    assert all(max(c.context_lens) == c.context_len and min(c.context_lens) >= 1 for c in mixed)
    assert any(len(set(c.context_lens)) > 1 for c in mixed)
    other_seed = {c.config_id for c in replace(TINY, seed=3).configs() if c.context_mode == "mixed"}
    assert not other_seed & {c.config_id for c in mixed}  # the seed is part of a mixed config's id


def test_mixed_at_batch_one_is_not_repeated() -> None:
    grid = replace(TINY, batch_sizes=(1,))
    assert {c.context_mode for c in grid.configs()} == {"fixed"}
    assert {c.context_mode for c in replace(grid, context_modes=("mixed",)).configs()} == {"mixed"}


@pytest.mark.parametrize("change, match", [
    ({"heads": ((32, 5),)}, "heads"), ({"batch_sizes": ()}, "batch_sizes is empty"),
    ({"dtypes": ("fp8",)}, "dtypes"), ({"variants": ("flash",)}, "variants"),
    ({"context_lens": (0,)}, "context_lens"), ({"context_modes": ("ragged",)}, "context_modes"),
])
def test_grid_rejects_bad_axes(change: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        list(replace(TINY, **change).configs())


def test_context_lens_for_modes() -> None:
    rng = np.random.default_rng(0)
    assert context_lens_for("fixed", 7, 3, rng) == (7, 7, 7)
    lens = context_lens_for("mixed", 1000, 64, rng)
    assert max(lens) == 1000 and min(lens) >= 1 and len(set(lens)) > 30
    with pytest.raises(ValueError, match="context mode"):
        context_lens_for("zipf", 7, 3, rng)


# --------------------------------------------------------------------------------- timing and stats
def test_summarize_hand_checked() -> None:
    s = summarize([float(x) for x in range(10, 0, -1)])  # 1..10 in reverse order
    assert s.median == pytest.approx(5.5) and s.min == 1.0 and s.reps == 10
    assert s.p10 == pytest.approx(1.9) and s.p90 == pytest.approx(9.1)  # linear interpolation
    assert s.std == pytest.approx(math.sqrt(8.25))
    assert s.spread == pytest.approx((9.1 - 1.9) / 5.5)
    s.check_invariants()


@pytest.mark.parametrize("bad", [[], [1.0, 0.0], [1.0, float("nan")], [-1.0], [float("inf")]])
def test_summarize_rejects_broken_timings(bad: list[float]) -> None:
    with pytest.raises(ValueError):
        summarize(bad)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(min_value=1e-7, max_value=10.0), min_size=1, max_size=50))
def test_summarize_invariants(samples: list[float]) -> None:
    s = summarize(samples)
    s.check_invariants()
    assert s.min == min(samples) and s.p90 <= max(samples)


def test_fake_timer_counts_and_cycles() -> None:
    calls: list[int] = []
    flushes: list[int] = []
    t = FakeTimer([3e-3, 1e-3, 2e-3])
    out = t.measure(lambda: calls.append(1), reps=4, warmup=2, flush=lambda: flushes.append(1))
    assert out.tolist() == [3e-3, 1e-3, 2e-3, 3e-3]
    assert len(calls) == 6 and t.calls == 6 and t.timed == 4 and len(flushes) == 4 == t.flushes
    assert t.measure(lambda: None, reps=1, warmup=0).tolist() == [1e-3]  # continues the sequence
    with pytest.raises(ValueError, match="reps"):
        t.measure(lambda: None, reps=0, warmup=0)


def test_wall_timer_times_the_call() -> None:
    calls: list[int] = []

    def launch() -> None:
        calls.append(1)
        time.sleep(0.002)

    out = WallTimer().measure(launch, reps=3, warmup=1)
    assert len(calls) == 4 and out.shape == (3,) and (out >= 0.0015).all()


def test_flush_policy() -> None:
    l2 = 50 << 20
    assert should_flush(10 << 20, l2) and should_flush(99 << 20, l2)
    assert not should_flush(101 << 20, l2)
    assert not should_flush(1, 0)  # unknown L2 (CPU shim)
    assert should_flush(10 << 30, l2, "always") and not should_flush(1, l2, "never")
    with pytest.raises(ValueError, match="flush policy"):
        should_flush(1, l2, "sometimes")


# ------------------------------------------------------------------------------- bandwidth, device
def test_bandwidth_arithmetic() -> None:
    assert achieved_bandwidth(3_000_000, 1e-3) == pytest.approx(3e9)
    assert bandwidth_fraction(1.5e12, 3e12) == pytest.approx(0.5)
    assert math.isnan(bandwidth_fraction(1.5e12, math.nan))
    assert bandwidth_fraction(4e12, 3e12) > 1  # not clipped: an L2 hit must stay visible
    assert overhead_pct(1.05, 1.0) == pytest.approx(5.0) and overhead_pct(0.9, 1.0) == pytest.approx(-10.0)
    assert math.isnan(overhead_pct(1.0, None))
    with pytest.raises(ValueError):
        achieved_bandwidth(1, 0.0)
    with pytest.raises(ValueError):
        bandwidth_fraction(1.0, 0.0)


@pytest.mark.parametrize("name, preset", [
    ("NVIDIA H100 80GB HBM3", "h100-sxm"), ("NVIDIA A100-SXM4-40GB", "a100-40gb"),
    ("NVIDIA A100-PCIE-40GB", "a100-40gb"), ("NVIDIA A100-SXM4-80GB", "a100-80gb"), ("NVIDIA H200", "h200"),
    ("NVIDIA H100 PCIe", None), ("NVIDIA H100 NVL", None), ("NVIDIA A100 80GB PCIe", None),
    ("Tesla V100-SXM2-16GB", None),
])
def test_device_name_to_preset(name: str, preset: str | None) -> None:
    spec = match_gpu_preset(name)
    assert spec == (GPUS[preset] if preset else None)


def test_device_peak_override() -> None:
    d = detect_device("cpu")
    assert d.name == "cpu-shim" and math.isnan(d.peak_bw_Bps) and d.l2_bytes == 0
    e = d.with_peak(1.2e12)
    assert e.peak_bw_Bps == 1.2e12 and e.peak_bw_source == "user"
    e.check_invariants()
    for bad in (0.0, -1.0, math.inf, math.nan):
        with pytest.raises(ValueError, match="peak bandwidth"):
            d.with_peak(bad)
    with pytest.raises(ValueError, match="backend"):
        detect_device("rocm")


# ------------------------------------------------------------------------------ end to end on the CPU
def test_rows_follow_from_the_timings(tiny_run: tuple[Any, Path, ModelTimer]) -> None:
    report, out, _ = tiny_run
    df = report.table
    assert list(df.columns) == list(COLUMNS)
    assert len(df) == TINY.size() - len(report.skipped) and len(report.measured) == len(df)
    assert {cid.split("-")[0] for cid, _ in report.skipped} == {"torch_sdpa"}  # no torch on the CPU
    for r in df.itertuples(index=False):
        lens = np.asarray(next(c for c in TINY.configs() if c.config_id == r.config_id).context_lens)
        itemsize = 4 if r.dtype == "fp32" else 2
        assert r.kv_bytes == 2 * lens.sum() * r.num_kv_heads * r.head_dim * itemsize, r.config_id
        blocks = int(np.ceil(lens / r.block_size).sum()) if r.block_size else 0
        assert r.num_blocks_touched == blocks, r.config_id
        expect = r.kv_bytes * 1e-9 * (1.1 if r.variant != "contiguous" else 1.0) * (1.25 if r.split else 1.0)
        assert r.latency_s == pytest.approx(expect, rel=1e-12)
        assert r.latency_p10_s == r.latency_p90_s == r.latency_min_s == r.latency_s and r.latency_std_s == 0
        assert r.achieved_bw_Bps == pytest.approx(r.kv_bytes / r.latency_s)
        assert r.bw_fraction == pytest.approx(r.achieved_bw_Bps / PEAK) and r.peak_bw_Bps == PEAK
        assert r.context_len_max == lens.max() and r.context_len_mean == pytest.approx(lens.mean())
        assert r.check_ok and r.max_abs_err < bench.TOLERANCE[r.dtype] and r.checked_seqs == 2
        assert r.reps == 2 and r.device == "cpu-shim" and r.backend == "cpu" and not r.l2_flushed
        if r.variant in ("paged", "partitioned"):
            # kernel for kernel: the contiguous kernel with the same split mode -> exactly 10% overhead
            assert r.paged_overhead_pct == pytest.approx(10.0)
            assert r.split == (r.variant == "partitioned")
        else:
            assert math.isnan(r.paged_overhead_pct)


def test_outputs_written_and_readable_by_calibrate(tiny_run: tuple[Any, Path, ModelTimer]) -> None:
    report, out, _ = tiny_run
    pq = pd.read_parquet(out.with_suffix(".parquet"))
    pd.testing.assert_frame_equal(pq, report.table, check_dtype=False)
    cal = read_timings(out)  # the calibration CONTRACT columns are there and valid
    assert set(cal["variant"]) == {"paged", "partitioned", "contiguous"}


def test_baselines_measured_once_per_shape_split_and_tile(tiny_run: tuple[Any, Path, ModelTimer]) -> None:
    report, _, timer = tiny_run
    df = report.table
    shapes = df.groupby(["batch_size", "context_len_max", "context_mode", "dtype"]).ngroups
    # per shape: the contiguous row (tile 16, not split at these sizes) + hidden baselines for
    # (split, tile 16) and (not split / split, tile 8)
    assert timer.measurements == len(df) + 3 * shapes


def test_resume_skips_finished_and_recovers_a_torn_line(tmp_path: Path) -> None:
    out = tmp_path / "t.csv"
    configs = [c for c in TINY.configs() if c.variant != "torch_sdpa" and c.dtype == "fp32"]
    first = run_bench(configs[:4], backend="cpu", timer=FakeTimer([1e-3]), device=cpu_device(), out_csv=out,
                      options=BenchOptions(reps=1, warmup=0, check=False))
    assert len(first.measured) == 4
    before = out.read_text()
    with out.open("a") as f:  # a run killed mid-row
        f.write("paged,2,8,4,2,64,fp32,123")
    with pytest.raises(OutputError, match="--resume"):
        TimingsWriter(out, resume=False)
    second = run_bench(configs, backend="cpu", timer=FakeTimer([2e-3]), device=cpu_device(), out_csv=out,
                       options=BenchOptions(reps=1, warmup=0, check=False), resume=True)
    assert second.resumed == [c.config_id for c in configs[:4]]
    assert second.measured == [c.config_id for c in configs[4:]]
    assert out.read_text().startswith(before)  # finished rows untouched
    df = load_timings(out)
    assert sorted(df["config_id"]) == sorted(c.config_id for c in configs)
    assert (df.set_index("config_id").loc[[c.config_id for c in configs[:4]], "latency_s"] == 1e-3).all()
    assert df["check_ok"].isna().all() and df["max_abs_err"].isna().all()  # --no-check
    with pytest.raises(OutputError, match="measured on cpu-shim"):
        run_bench(configs, backend="cpu", timer=FakeTimer([1e-3]), device=replace(cpu_device(), name="other"),
                  out_csv=out, resume=True)
    third = run_bench(configs[:2], backend="cpu", timer=FakeTimer([1e-3]), device=cpu_device(), out_csv=out,
                      options=BenchOptions(reps=1, warmup=0, check=False), overwrite=True)
    assert len(load_timings(out)) == 2 == len(third.measured)


def test_resume_rejects_a_foreign_csv(tmp_path: Path) -> None:
    out = tmp_path / "t.csv"
    out.write_text("variant,latency_s\npaged,1\n")
    with pytest.raises(OutputError, match="missing: batch_size"):
        TimingsWriter(out, resume=True)


def test_l2_flush_between_reps_when_the_working_set_fits(tmp_path: Path) -> None:
    configs = [c for c in TINY.configs() if c.variant == "paged" and c.dtype == "fp32"][:2]
    flushes: list[int] = []
    timer = FakeTimer([1e-3])
    rep = run_bench(configs, backend="cpu", timer=timer, device=cpu_device(l2_bytes=1 << 20),
                    out_csv=tmp_path / "a.csv", options=BenchOptions(reps=3, warmup=1, check=False),
                    flusher=lambda: flushes.append(1))
    # each config: its own 3 reps + the hidden contiguous baseline's 3 reps, all flushed
    assert rep.table["l2_flushed"].all() and len(flushes) == timer.flushes == 3 * 2 * len(configs)
    flushes.clear()
    rep = run_bench(configs, backend="cpu", timer=FakeTimer([1e-3]), device=cpu_device(l2_bytes=64),
                    out_csv=tmp_path / "b.csv", options=BenchOptions(reps=3, warmup=1, check=False),
                    flusher=lambda: flushes.append(1))
    assert not rep.table["l2_flushed"].any() and not flushes  # working set far above 2 x 64 B


def test_failed_reference_check_is_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(bench.TOLERANCE, "fp32", 0.0)  # no float32 kernel matches float64 exactly
    configs = [c for c in TINY.configs() if c.variant == "contiguous"][:1]
    rep = run_bench(configs, backend="cpu", timer=FakeTimer([1e-3]), device=cpu_device(),
                    out_csv=tmp_path / "t.csv", options=BenchOptions(reps=1, warmup=0))
    assert rep.failed_checks == [configs[0].config_id]
    assert not rep.table["check_ok"].iloc[0] and rep.table["max_abs_err"].iloc[0] > 0
    again = run_bench(configs, backend="cpu", timer=FakeTimer([1e-3]), device=cpu_device(),
                      out_csv=tmp_path / "t.csv", resume=True)
    assert again.resumed == again.failed_checks == [configs[0].config_id]  # a resumed failure still counts


def test_check_subset_stays_within_budget() -> None:
    lens = np.array([5, 100, 40, 1, 70, 70, 3, 90])
    assert check_subset(lens, 4).tolist() == list(range(8))  # 380 x 4 rows within the default budget
    sub = check_subset(lens, num_heads=2, budget=400)
    assert 1 in sub and 3 in sub  # the longest and the shortest
    assert int(lens[sub].sum()) * 2 <= 400 and len(sub) >= 3


# ------------------------------------------------------------------------------------------ plots
def test_plots_written(tiny_run: tuple[Any, Path, ModelTimer], tmp_path: Path) -> None:
    files = plot_all(tiny_run[0].table, tmp_path, "tiny")
    names = {f.name for f in files}
    assert {"latency_vs_context.png", "bandwidth_fraction.png", "paged_overhead.png"} <= names
    assert all(f.stat().st_size > 1000 for f in files)
    with pytest.raises(ValueError, match="no rows"):
        contiguous_only = tiny_run[0].table[tiny_run[0].table["variant"] == "contiguous"]
        plot_paged_overhead(contiguous_only, tmp_path / "x")


# -------------------------------------------------------------------------------------------- CLI
def test_cli_without_gpu_exits_2(monkeypatch: pytest.MonkeyPatch) -> None:
    import analysis.cli.bench as cmd

    monkeypatch.setattr(cmd, "gpu_absent_reason", lambda: "no driver")
    r = CliRunner().invoke(app, ["bench", "--quick"])
    assert r.exit_code == 2
    assert ("pagesim bench needs a CUDA GPU (none found: no driver); use --backend cpu to exercise the "
            "harness on the CPU shim (timings then mean nothing)") in r.output


@pytest.mark.parametrize("args, match", [
    (["--backend", "rocm"], "--backend"), (["--heads", "32:5"], "--heads"), (["--block-sizes", "12"], "12"),
    (["--head-dims", "96"], "96"), (["--dtypes", "fp8"], "fp8"), (["--batch-sizes", "1,x"], "--batch-sizes"),
    (["--flush", "maybe"], "--flush"), (["--peak-bw", "-3"], "--peak-bw"), (["--grid", "huge"], "--grid"),
    (["--resume", "--overwrite"], "exclude"), (["--reps", "0"], "--reps"),
])
def test_cli_bad_options_exit_2(args: list[str], match: str) -> None:
    r = CliRunner().invoke(app, ["bench", "--backend", "cpu", *args] if "--backend" not in args else ["bench", *args])
    assert r.exit_code == 2 and match in r.output and "Traceback" not in r.output


def test_cli_cpu_run_then_resume(tmp_path: Path) -> None:
    args = ["bench", "--backend", "cpu", "--out", str(tmp_path), "--context-lens", "9", "--context-modes", "fixed",
            "--block-sizes", "16", "--dtypes", "fp32", "--batch-sizes", "2", "--heads", "4:2", "--head-dims", "64",
            "--reps", "1", "--warmup", "0", "--peak-bw", "100"]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    df = load_timings(tmp_path / "timings.csv")
    assert sorted(df["variant"]) == ["contiguous", "paged", "partitioned"]
    assert (df["peak_bw_Bps"] == 100e9).all() and (df["peak_bw_source"] == "user").all()
    assert (tmp_path / "timings.parquet").is_file() and (tmp_path / "plots" / "paged_overhead.png").is_file()
    assert "3 measured" in r.output and "torch_sdpa needs the cupy backend" in r.output
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 2 and "--resume" in again.output
    resumed = CliRunner().invoke(app, [*args, "--resume", "--no-plots"])
    assert resumed.exit_code == 0 and "0 measured, 3 resumed" in resumed.output


# -------------------------------------------------------------------------------------------- GPU
@pytest.mark.gpu
def test_gpu_quick_rows_plausible(tmp_path: Path) -> None:
    t0 = time.perf_counter()
    r = CliRunner().invoke(app, ["bench", "--quick", "--out", str(tmp_path)])
    elapsed = time.perf_counter() - t0
    assert r.exit_code == 0, r.output
    assert elapsed < 120, f"--quick took {elapsed:.0f} s"
    df = load_timings(tmp_path / "timings.csv")
    assert df["check_ok"].all()
    known = df[np.isfinite(df["bw_fraction"])]
    assert ((known["bw_fraction"] > 0) & (known["bw_fraction"] <= 1.0)).all()
    assert (df["latency_p10_s"] <= df["latency_s"]).all() and (df["latency_s"] <= df["latency_p90_s"]).all()
    # paged and contiguous kernels give the same result on the same problem
    p = attention.make_problem([300, 2048, 17], num_heads=32, num_kv_heads=8, head_dim=128, block_size=16,
                               dtype="fp16", rng=np.random.default_rng(0))
    paged, contiguous = attention.run(p, "paged", "cupy"), attention.run(p, "contiguous", "cupy")
    np.testing.assert_allclose(paged, contiguous, atol=bench.TOLERANCE["fp16"])
