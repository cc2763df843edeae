"""Predicted bandwidth fraction of the paged decode kernel per goal shape, before (commit 35223fa: one
CTA per query head, serial per-block chain) and after issue 15 (one CTA per query group, cp.async ring),
from the model written down in docs/gpu.md ("Performance model"). No GPU: the inputs are the sm_90
machine code's loop sizes (benchmarks/sass_review.py), ptxas registers, and H100 SXM figures, some of
them assumptions stated below, to be replaced by measured ones (benchmarks/device_check.sh).
Run: python benchmarks/decode_model.py [--out benchmarks/results/decode_model.md]
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass
from pathlib import Path

from gpu.bench.goal import GoalShape, goal_shapes
from gpu.ops.split import DecodeGeometry, choose_partition_size, query_group

# H100 SXM5 (data sheet) and assumptions (A) to be replaced by measurements
SMS, PEAK, CLOCK = 132, 3.35e12, 1.83e9  # SMs, HBM3 bytes/s, sustained SM clock (A: between base and boost)
READ_EFF = 0.90  # (A) read ceiling / peak for a streaming reader; the device check measures it
L2_BW = 5.5e12  # (A) L2 -> SM read bandwidth (published microbenchmarks put H100 at ~5.5-7 TB/s)
LATENCY = 0.8e-6  # (A) loaded DRAM round trip
ISSUE_EFF = 0.75  # (A) sustained fraction of 4 warp-instructions / clock / SM

# From the sm_90 SASS (sass_review.py, head_dim 128, block 16): main-loop instructions per iteration per
# warp, the bytes of K+V one iteration covers, round trips per iteration, and ptxas registers.
BEFORE = {"fp16": (431, 8192, 3, 92), "fp8": (528, 4096, 3, 80)}  # per 16-token block, per warp
AFTER = {  # per tile (all warps of the CTA run it): (instructions, K+V bytes, round trips, registers) by group
    ("fp16", 1): (456, 16384, 1, 120), ("fp16", 4): (864, 16384, 1, 122),
    ("fp8", 1): (786, 16384, 1, 122), ("fp8", 4): (1910, 16384, 1, 127),
}


@dataclass(slots=True)
class Prediction:
    fraction: float
    bound: str
    ctas: int
    waves: int
    split: int


def _regs_ctas(regs: int, threads: int, smem: int) -> int:
    per_warp = -(-regs * 32 // 256) * 256
    return min(65536 // (per_warp * threads // 32), (228 * 1024) // (smem + 1024), 2048 // threads, 32)


def _finish(s: GoalShape, terms: dict[str, float], ctas: int, slots: int, split: int) -> Prediction:
    bound = max(terms, key=lambda k: terms[k])
    return Prediction(s.kv_bytes / terms[bound] / PEAK, bound, ctas, -(-ctas // slots), split)


def before(s: GoalShape) -> Prediction:
    """Grid (heads, seqs, parts); vLLM's split (512 tokens when ctx > 8192 or seqs x heads <= 512);
    each of the R query heads of a kv head re-reads its blocks (from L2); per block a warp runs
    table -> K -> V as three dependent round trips; 4 warps take blocks round-robin."""
    instr, blk_bytes, trips, regs = BEFORE[s.kv_dtype]
    ratio = s.num_heads // s.num_kv_heads
    split = 512 if s.context > 8192 or s.batch * s.num_heads <= 512 else 0
    parts = -(-s.context // split) if split else 1
    ctas = s.num_heads * s.batch * parts
    slots = SMS * _regs_ctas(regs, 128, 5 * 1024)
    span = split or s.context
    chain = -(-span // s.block_size // 4) * trips * LATENCY  # blocks per warp x round trips
    unique_blocks = s.kv_bytes / blk_bytes  # (block, kv head) tiles
    terms = {"hbm": s.kv_bytes / (READ_EFF * PEAK), "l2": ratio * s.kv_bytes / L2_BW,
             "issue": ratio * unique_blocks * instr / (SMS * 4 * ISSUE_EFF * CLOCK),
             "latency": -(-ctas // slots) * chain}
    return _finish(s, terms, ctas, slots, split)


def after(s: GoalShape) -> Prediction:
    """Grid (heads / G, seqs, parts) with choose_partition_size; K/V read once per group; per tile one
    round trip (the next tile's copies are in flight while this one is computed)."""
    g = query_group(s.num_heads, s.num_kv_heads)
    geo = DecodeGeometry(s.head_dim, s.kv_itemsize, g)
    instr, tile_bytes, trips, regs = AFTER[(s.kv_dtype, g)]
    per_sm = geo.ctas_per_sm(regs)
    split = choose_partition_size([s.context] * s.batch, head_groups=s.num_heads // g, block_size=s.block_size,
                                  tile_tokens=geo.tile_tokens, num_sms=SMS, ctas_per_sm=per_sm)
    parts = -(-s.context // split) if split else 1
    ctas = (s.num_heads // g) * s.batch * parts
    slots = SMS * per_sm
    tiles = -(-(split or s.context) // geo.tile_tokens)
    warps = geo.threads // 32
    heads_per_read = (s.num_heads // s.num_kv_heads) // g
    terms = {"hbm": s.kv_bytes / (READ_EFF * PEAK), "l2": heads_per_read * s.kv_bytes / L2_BW,
             "issue": heads_per_read * (s.kv_bytes / tile_bytes) * warps * instr / (SMS * 4 * ISSUE_EFF * CLOCK),
             "latency": -(-ctas // slots) * tiles * trips * LATENCY}
    return _finish(s, terms, ctas, slots, split)


def table() -> list[str]:
    rows = ["| shape | before: % peak (bound; CTAs x waves; split) | after: % peak (bound; CTAs x waves; split) |",
            "|---|---|---|"]
    for s in goal_shapes():
        b, a = before(s), after(s)
        rows.append(f"| {s.shape_id} | {b.fraction:.0%} ({b.bound}; {b.ctas} x {b.waves}; {b.split or '-'}) | "
                    f"{a.fraction:.0%} ({a.bound}; {a.ctas} x {a.waves}; {a.split or '-'}) |")
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "decode_model.md")
    a = ap.parse_args(argv)
    text = ["# Predicted decode bandwidth fraction per goal shape (model, no GPU)", "",
            f"Written by `benchmarks/decode_model.py`; the model and its assumptions are in docs/gpu.md "
            f"(Performance model). H100 SXM: {SMS} SMs, {PEAK / 1e12:.2f} TB/s, {CLOCK / 1e9:.2f} GHz; "
            f"assumed read efficiency {READ_EFF:.0%}, L2->SM {L2_BW / 1e12:.1f} TB/s, latency "
            f"{LATENCY * 1e6:.1f} us, issue efficiency {ISSUE_EFF:.0%}. `bound` names the largest term.", "",
            *table()]
    a.out.write_text("\n".join(text) + "\n")
    print("\n".join(text))
    assert all(math.isfinite(before(s).fraction) for s in goal_shapes())
    return 0


if __name__ == "__main__":
    sys.exit(main())
