"""Benchmark (no GPU needed): how fast the CPU shim runs the real decode kernels, i.e. what the CPU
verification costs. Times one launch of 4 sequences x 8 heads x 1024 tokens x head_dim 128 at block
size 16 per dtype and variant, under the forward and random schedules, next to the float64 NumPy
reference; prints the table and records it in benchmarks/results/cpu_shim.md.
Run: python benchmarks/cpu_shim.py [--context 1024] [--out PATH]
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

from gpu.backends.base import CpuBackend
from gpu.ops import attention as A
from gpu.ops.reference import paged_decode_attention

RESULTS = Path(__file__).resolve().parent / "results"


def best_of(fn, reps: int = 3) -> float:  # type: ignore[no-untyped-def]
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--context", type=int, default=1024)
    ap.add_argument("--out", type=Path, default=RESULTS / "cpu_shim.md")
    a = ap.parse_args(argv)
    rows = []
    for dtype in ("float32", "float16", "bfloat16"):
        p = A.make_problem([a.context] * 4, num_heads=8, num_kv_heads=8, head_dim=128, block_size=16, dtype=dtype,
                           rng=np.random.default_rng(0), partition_size=256)
        st = p.storage
        decoded = (st.decode(p.q), st.decode(p.k_pool), st.decode(p.v_pool))
        t_ref = best_of(lambda: paged_decode_attention(*decoded, p.block_tables, p.context_lens, p.scale))  # noqa: B023
        ref = paged_decode_attention(*decoded, p.block_tables, p.context_lens, p.scale)
        for variant in A.VARIANTS:
            for schedule in ("forward", "random"):
                launch = A.prepare(p, variant, CpuBackend(schedule=schedule))
                launch()  # warm-up: module load, fiber stacks
                t = best_of(launch)
                err = float(np.abs(launch.output() - ref).max())
                rows.append(f"| {dtype} | {variant} | {schedule} | {t * 1e3:.1f} | {t_ref * 1e3:.1f} | {err:.2e} |")
                print(rows[-1], flush=True)
    header = [
        "# CPU shim speed (the cost of verifying the kernels without a GPU)",
        "",
        f"Written by `benchmarks/cpu_shim.py` on {datetime.date.today()}: {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} logical CPUs (shared with other jobs while measured), Python {platform.python_version()}.",
        f"One launch: 4 sequences x 8 heads (MHA) x {a.context} tokens x head_dim 128, block size 16, partition 256 "
        "tokens, 128 threads per block; best of 3 after a warm-up. Default workers (one per CPU).",
        "",
        "| dtype | variant | schedule | kernel on CPU (ms) | NumPy float64 reference (ms) | max abs error |",
        "|---|---|---|---|---|---|",
    ]
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text("\n".join(header + rows) + "\n")
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
