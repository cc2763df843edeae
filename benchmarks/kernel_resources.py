"""Benchmark (no GPU needed): resource usage of every decode-kernel instantiation as compiled by NVRTC,
the compiler cupy.RawModule uses: registers, static shared memory, stack, spills and an occupancy
estimate (128 threads per block) for sm_80 and sm_90. Prints the table and records it in
benchmarks/results/kernel_resources.md.
Run: python benchmarks/kernel_resources.py [--arch sm_80 sm_90] [--out PATH]
"""

from __future__ import annotations

import argparse
import datetime
import platform
import sys
import time
from pathlib import Path

from gpu import nvrtc
from gpu.attention import NUM_THREADS
from gpu.layout import SUPPORTED_BLOCK_SIZES, SUPPORTED_HEAD_DIMS

RESULTS = Path(__file__).resolve().parent / "results"


def measure(archs: list[str]) -> tuple[list[str], bool]:
    """Markdown table rows for every instantiation; False if any kernel spills."""
    rows, ok = [], True
    for arch in archs:
        for d in SUPPORTED_HEAD_DIMS:
            for bs in SUPPORTED_BLOCK_SIZES:
                t = time.perf_counter()
                r = nvrtc.compile_kernel_file("paged_attention.cu", arch=arch, defines={"HEAD_DIM": d, "BLOCK_SIZE": bs})
                dt = time.perf_counter() - t
                for k in sorted(r.kernels.values(), key=lambda k: k.name):
                    ok &= not k.spills
                    rows.append(f"| {arch} | {d} | {bs} | {k.name} | {k.registers} | {k.smem_bytes} | {k.stack_bytes} | "
                                f"{k.spill_stores}/{k.spill_loads} | {k.occupancy(NUM_THREADS):.0%} |")
                print(f"{arch} head_dim={d:3d} block_size={bs:2d}: compiled in {dt:.1f} s; "
                      + ", ".join(f"{k.name}={k.registers}r" for k in sorted(r.kernels.values(), key=lambda k: k.name)),
                      flush=True)
        r = nvrtc.compile_kernel_file("cache_ops.cu", arch=arch)
        for k in sorted(r.kernels.values(), key=lambda k: k.name):
            ok &= not k.spills
            rows.append(f"| {arch} | - | - | {k.name} | {k.registers} | {k.smem_bytes} | {k.stack_bytes} | "
                        f"{k.spill_stores}/{k.spill_loads} | {k.occupancy(NUM_THREADS):.0%} |")
    return rows, ok


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", nargs="+", default=list(nvrtc.ARCHS))
    ap.add_argument("--out", type=Path, default=RESULTS / "kernel_resources.md")
    a = ap.parse_args(argv)
    major, minor = nvrtc.nvrtc_version()
    t0 = time.perf_counter()
    rows, ok = measure(a.arch)
    header = [
        "# Decode-kernel resource usage (NVRTC, no GPU)",
        "",
        f"Written by `benchmarks/kernel_resources.py` on {datetime.date.today()} ({platform.machine()}, "
        f"{platform.system()}); NVRTC {major}.{minor}, CuPy's RawModule options (-ftz=true, "
        "--device-as-default-execution-space), `__launch_bounds__(128, 4)`.",
        "Occupancy: estimated fraction of an SM's 64 warp slots for blocks of 128 threads, from registers "
        "(allocated per warp in units of 256), shared memory (+1 KiB reserved per block) and the 32-block limit.",
        f"Spills anywhere: {'none' if ok else 'YES (see rows)'}.",
        "",
        "| arch | head_dim | block_size | kernel | registers | smem bytes | stack bytes | spill st/ld bytes | occupancy |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text("\n".join(header + rows) + "\n")
    print(f"{len(rows)} kernels in {time.perf_counter() - t0:.0f} s; spills: {'none' if ok else 'YES'}; wrote {a.out}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
