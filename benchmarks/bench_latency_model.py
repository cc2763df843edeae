"""Benchmark: step_time calls per second of the latency models for a batch of 256 sequences.

The engine calls step_time once per simulated step, so its cost bounds the simulator's step rate.
Prints the figures and writes benchmarks/results/latency_model.txt.
Run: python benchmarks/bench_latency_model.py [--seconds 1.0]
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from sim.timing.latency import BatchShape, CalibratedLatency, RooflineLatency
from sim.timing.latency_params import PARAMS_SCHEMA

OUT = Path(__file__).resolve().parent / "results" / "latency_model.txt"


def rate(fn: Callable[[], object], seconds: float) -> float:
    """Calls per CPU second of fn (process time, so other load on a shared machine counts less),
    best of 3 runs of about `seconds` / 3 each."""
    n = 1
    while True:  # size the loop so one run takes >= 50 ms
        t0 = time.process_time()
        for _ in range(n):
            fn()
        dt = time.process_time() - t0
        if dt >= 0.05:
            break
        n *= 2
    reps = max(1, int(n * seconds / 3 / dt))
    best = float("inf")
    for _ in range(3):
        t0 = time.process_time()
        for _ in range(reps):
            fn()
        best = min(best, (time.process_time() - t0) / reps)
    return 1.0 / best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=1.0, help="time per measurement")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    ctx = rng.integers(16, 2048, size=256).astype(np.int64)
    empty = np.zeros(0, dtype=np.int64)
    decode = BatchShape(empty, empty, ctx, 16)
    mixed = BatchShape(np.array([512, 300]), np.array([0, 1024]), ctx[:254], 16)
    window = BatchShape(empty, empty, ctx * 8, 16)
    coeffs = {"c0_s": 5e-6, "c_kv_bytes_s": 1e-12, "c_seqs_s": 2e-7, "c_blocks_s": 1e-8}
    calibrated = CalibratedLatency({"schema": PARAMS_SCHEMA, "source": "calibrated",
                                    "attn_decode": {"variants": {"paged": coeffs, "partitioned": coeffs}}},
                                   "opt-13b", "a100-40gb")
    roof = RooflineLatency("opt-13b", "a100-40gb")
    mistral = RooflineLatency("mistral-7b", "a100-80gb")
    cases = [
        ("roofline, 256 decode seqs", lambda: roof.step_time(decode)),
        ("roofline, 2 prefill + 254 decode", lambda: roof.step_time(mixed)),
        ("roofline, sliding window (Mistral-7B), 256 decode", lambda: mistral.step_time(window)),
        ("calibrated (paged+partitioned), 256 decode", lambda: calibrated.step_time(decode)),
        ("BatchShape(...) + roofline step_time, 256 decode",
         lambda: roof.step_time(BatchShape(empty, empty, ctx, 16))),
    ]
    lines = [f"# latency-model step_time rate, batch of 256 (python {platform.python_version()}, "
             f"numpy {np.__version__}, {platform.machine()}, {os.cpu_count()} cpus, "
             f"load average {os.getloadavg()[0]:.2f} at start, {time.strftime('%Y-%m-%d')})"]
    for label, fn in cases:
        r = rate(fn, args.seconds)
        lines.append(f"{label:52s} {r:>10,.0f} calls/CPU-s  {1e6 / r:6.1f} us/call")
    text = "\n".join(lines) + "\n"
    print(text, end="")
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(text)
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
