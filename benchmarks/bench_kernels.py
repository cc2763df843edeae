"""Benchmark: the decode kernels against the performance goal, on a GPU.

Goal: long-context decode (batch >= 32, context >= 2K, fp16, head_dim 128) at >= 80% of peak HBM
bandwidth, and paged within 5% of contiguous at block size 16. Measures the 'goal' grid of gpu.bench.harness,
writes benchmarks/results/kernels_<device>.csv and prints the figures and the verdict.
Run: python benchmarks/bench_kernels.py [--peak-bw GBps] [--reps 200]
     python benchmarks/bench_kernels.py --backend cpu --out /tmp/k.csv   # harness smoke test only
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import pandas as pd

from gpu.bench.device import detect_device
from gpu.bench.grid import GRIDS
from gpu.bench.harness import BenchOptions, run_bench
from gpu.bench.timing import CudaEventTimer, Timer, WallTimer

RESULTS = Path(__file__).resolve().parent / "results"
GOAL_BW_FRACTION = 0.80
GOAL_OVERHEAD_PCT = 5.0


def goal_region(df: pd.DataFrame) -> pd.DataFrame:
    """Rows inside the goal's region: batch >= 32, context >= 2048, fp16, head_dim 128, fixed lengths."""
    return df[(df["batch_size"] >= 32) & (df["context_len_max"] >= 2048) & (df["dtype"] == "fp16")
              & (df["head_dim"] == 128) & (df["context_mode"] == "fixed")]


def verdict(df: pd.DataFrame) -> list[str]:
    """Lines: bandwidth fraction per variant and paged overhead per block size in the goal region."""
    region = goal_region(df)
    if region.empty:
        return ["no rows in the goal region (batch >= 32, context >= 2048, fp16, head_dim 128)"]
    lines = []
    for v, g in region.groupby("variant", sort=True):
        f = g["bw_fraction"]
        lines.append(f"{v:12s} bw fraction  min {f.min():.3f}  median {f.median():.3f}  max {f.max():.3f}  "
                     f"({len(g)} configs)")
    paged = region[region["variant"] == "paged"]
    for bs, g in paged.groupby("block_size", sort=True):
        o = g["paged_overhead_pct"]
        lines.append(f"paged bs{bs:<4d} overhead vs contiguous  median {o.median():+.1f}%  max {o.max():+.1f}%")
    best = region[region["variant"].isin(["paged", "partitioned"])].groupby("config_id")["bw_fraction"].max()
    bw_ok = bool((paged["block_size"] == 16).any()) and paged[paged["block_size"] == 16]["bw_fraction"].min() >= GOAL_BW_FRACTION
    ov = paged[paged["block_size"] == 16]["paged_overhead_pct"]
    lines.append(f"goal 1 (paged bs16 >= {GOAL_BW_FRACTION:.0%} of peak in every config): "
                 f"{'MET' if bw_ok else 'NOT MET'} (best paged-family fraction median {best.median():.3f})")
    lines.append(f"goal 2 (paged bs16 within {GOAL_OVERHEAD_PCT:.0f}% of contiguous in every config): "
                 f"{'MET' if len(ov) and ov.max() <= GOAL_OVERHEAD_PCT else 'NOT MET'}")
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backend", choices=("cupy", "cpu"), default="cupy")
    ap.add_argument("--peak-bw", type=float, default=None, help="peak HBM bandwidth, GB/s (default: preset)")
    ap.add_argument("--reps", type=int, default=200)
    ap.add_argument("--out", type=Path, default=None, help="CSV path (default results/kernels_<device>.csv)")
    ap.add_argument("--resume", action="store_true")
    args = ap.parse_args(argv)
    if args.backend == "cupy":
        from analysis.cli.bench import NO_GPU, gpu_absent_reason

        if reason := gpu_absent_reason():
            print(NO_GPU.format(reason=reason).replace("pagesim bench", "bench_kernels.py"), file=sys.stderr)
            return 2
    device = detect_device(args.backend).with_peak(args.peak_bw * 1e9 if args.peak_bw else None)
    slug = re.sub(r"[^A-Za-z0-9]+", "_", device.name).strip("_")
    out = args.out or RESULTS / f"kernels_{slug}.csv"
    grid = GRIDS["goal"] if args.backend == "cupy" else GRIDS["tiny"]
    timer: Timer = CudaEventTimer() if args.backend == "cupy" else WallTimer()
    reps = args.reps if args.backend == "cupy" else 2
    report = run_bench(grid.configs(), backend=args.backend, timer=timer, device=device, out_csv=out,
                       options=BenchOptions(reps=reps, warmup=max(1, reps // 10)), resume=args.resume,
                       overwrite=not args.resume,
                       on_config=lambda c, s: print(f"{s:9s} {c.config_id}", file=sys.stderr))
    print(f"# decode kernels on {device.name} (driver {device.driver}, CUDA {device.cuda_version}, "
          f"CuPy {device.cupy_version}; peak {device.peak_bw_Bps / 1e9:.0f} GB/s from {device.peak_bw_source})")
    for line in verdict(report.table):
        print(line)
    print(f"wrote {out}")
    return 1 if report.failed_checks else 0


if __name__ == "__main__":
    sys.exit(main())
