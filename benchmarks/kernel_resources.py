"""Benchmark (no GPU needed): resource usage of every decode-kernel instantiation as compiled by NVRTC,
the compiler cupy.RawModule uses: registers, static shared memory, stack, spills and an occupancy
estimate (the kernel's own CTA size, gpu.ops.split.DecodeGeometry) for sm_80 and sm_90, float and
quantised (KV_QUANT=1: fp8 e4m3 / int8 KV) builds, every query group (QUERY_GROUP 1, 2, 4, 8 = GQA
ratios), head_dim and block size, plus each build's compile time. Prints the table and records it in
benchmarks/results/kernel_resources.md.
Run: python benchmarks/kernel_resources.py [--arch sm_80 sm_90] [--groups 1 2 4 8] [--out PATH]
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import platform
import sys
import time
from pathlib import Path

from gpu.backends import nvrtc
from gpu.ops.attention import NUM_THREADS
from gpu.ops.layout import SUPPORTED_BLOCK_SIZES, SUPPORTED_HEAD_DIMS
from gpu.ops.split import QUERY_GROUPS, DecodeGeometry

#: KV bytes per element by kernel-name suffix (the storage after the last underscore).
_KV_ITEMSIZE = {"f32": 4, "f16": 2, "bf16": 2, "fp8": 1, "int8": 1}


def kernel_threads(name: str, head_dim: int, group: int) -> int:
    """CTA size of a kernel: the decode kernels' from their geometry, the others NUM_THREADS."""
    if not name.startswith(("paged_decode_", "contiguous_decode_")):
        return NUM_THREADS
    return DecodeGeometry(head_dim, _KV_ITEMSIZE[name.rsplit("_", 1)[1]], group).threads

RESULTS = Path(__file__).resolve().parent / "results"


def measure(archs: list[str], groups: list[int]) -> tuple[list[str], list[str], bool]:
    """Markdown table rows for every instantiation, compile-time rows per build; False if any kernel spills."""
    rows, times, ok = [], [], True
    for arch in archs:
        for g, d, bs, quant in itertools.product(groups, SUPPORTED_HEAD_DIMS, SUPPORTED_BLOCK_SIZES, (0, 1)):
            t = time.perf_counter()
            defines = {"HEAD_DIM": d, "BLOCK_SIZE": bs, "QUERY_GROUP": g} | ({"KV_QUANT": 1} if quant else {})
            r = nvrtc.compile_kernel_file("paged_attention.cu", arch=arch, defines=defines)
            dt = time.perf_counter() - t
            times.append(f"| {arch} | {g} | {d} | {bs} | {'quantised' if quant else 'float'} | {dt:.1f} |")
            # the quantised build repeats the fp16 / bf16 reduce kernels, every group build the reduce
            # kernels (they do not depend on the group): list them once
            kernels = [k for k in r.kernels.values()
                       if not ((quant or g != groups[0]) and k.name.startswith("decode_reduce"))]
            for k in sorted(kernels, key=lambda k: k.name):
                ok &= not k.spills
                th = kernel_threads(k.name, d, g)
                rows.append(f"| {arch} | {g} | {d} | {bs} | {k.name} | {th} | {k.registers} | {k.smem_bytes} | "
                            f"{k.stack_bytes} | {k.spill_stores}/{k.spill_loads} | {k.occupancy(th):.0%} |")
            print(f"{arch} group={g} head_dim={d:3d} block_size={bs:2d} KV_QUANT={quant}: compiled in {dt:.1f} s; "
                  + ", ".join(f"{k.name}={k.registers}r" for k in sorted(kernels, key=lambda k: k.name)),
                  flush=True)
        r = nvrtc.compile_kernel_file("cache_ops.cu", arch=arch)
        for k in sorted(r.kernels.values(), key=lambda k: k.name):
            ok &= not k.spills
            rows.append(f"| {arch} | - | - | - | {k.name} | {NUM_THREADS} | {k.registers} | {k.smem_bytes} | "
                        f"{k.stack_bytes} | {k.spill_stores}/{k.spill_loads} | {k.occupancy(NUM_THREADS):.0%} |")
    return rows, times, ok


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", nargs="+", default=list(nvrtc.ARCHS))
    ap.add_argument("--groups", nargs="+", type=int, default=sorted(QUERY_GROUPS))
    ap.add_argument("--out", type=Path, default=RESULTS / "kernel_resources.md")
    a = ap.parse_args(argv)
    major, minor = nvrtc.nvrtc_version()
    t0 = time.perf_counter()
    rows, times, ok = measure(a.arch, a.groups)
    header = [
        "# Decode-kernel resource usage (NVRTC, no GPU)",
        "",
        f"Written by `benchmarks/kernel_resources.py` on {datetime.date.today()} ({platform.machine()}, "
        f"{platform.system()}); NVRTC {major}.{minor}, CuPy's RawModule options (-ftz=true, "
        "--device-as-default-execution-space); decode kernels `__launch_bounds__(threads, 512 / threads)` "
        "(a 128-register budget), one CTA per (sequence, query group of QUERY_GROUP heads, partition).",
        "Occupancy: estimated fraction of an SM's 64 warp slots for CTAs of the listed threads, from registers "
        "(allocated per warp in units of 256), shared memory (+1 KiB reserved per block) and the 32-block limit.",
        f"Spills anywhere: {'none' if ok else 'YES (see rows)'}.",
        "Kernel suffixes: storage f32 / f16 / bf16; quantised KV <q>_<kv> (q and output f16 / bf16, K/V fp8 "
        "e4m3 or int8 codes with fp32 scales), built with -DKV_QUANT=1 (see docs/gpu.md).",
        "",
        "| arch | group | head_dim | block_size | kernel | threads | registers | smem bytes | stack bytes | "
        "spill st/ld bytes | occupancy |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    a.out.parent.mkdir(parents=True, exist_ok=True)
    timing = ["", "## NVRTC compile time per build (this machine)", "",
              "| arch | group | head_dim | block_size | build | seconds |", "|---|---|---|---|---|---|", *times]
    a.out.write_text("\n".join(header + rows + timing) + "\n")
    print(f"{len(rows)} kernels in {time.perf_counter() - t0:.0f} s; spills: {'none' if ok else 'YES'}; wrote {a.out}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
