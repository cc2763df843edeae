"""Fetch vLLM's block-manager modules and replay random op streams through pagesim and vLLM.

    python benchmarks/vllm_reference.py fetch                 # pip download + unzip the few modules
    python benchmarks/vllm_reference.py diff --streams 300    # agreement counts per semantics
    python benchmarks/vllm_reference.py diff --streams 300 --write benchmarks/results/vllm_reference.md

The modules go to $PAGESIM_VLLM_SRC or ~/.cache/pagesim/vllm/<version> (tests/vllm_src.py); the
drivers and streams are tests/vllm_ref.py's, so this reports what the differential test asserts.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import vllm_ref  # noqa: E402
import vllm_src  # noqa: E402


def _diff(streams: int) -> list[str]:
    rows = ["| semantics | vLLM | prefix caching | streams agreeing | ops compared | refused | CoW pairs "
            "| allocs with prefix hits | s |", "|---|---|---|---:|---:|---:|---:|---:|---:|"]
    for kind, version in (("vllm-v0", vllm_src.V0_VERSION), ("vllm-v1", vllm_src.V1_VERSION)):
        d = vllm_src.source_dir(version)
        if d is None:
            raise SystemExit(f"vLLM {version} modules not found under {vllm_src.cache_root()}: run `fetch` first")
        mods = vllm_src.load_v0(d) if kind == "vllm-v0" else vllm_src.load_v1(d)
        cls = vllm_ref.V0Ref if kind == "vllm-v0" else vllm_ref.V1Ref
        for pc in (False, True):
            t0 = time.perf_counter()
            res = []
            for seed in range(streams):
                rng = np.random.default_rng(seed)
                spec = vllm_ref.StreamSpec.draw(rng, pc)
                ref = cls(mods, spec.block_size, spec.num_blocks, pc, spec.watermark)
                res.append(vllm_ref.run_stream(ref, kind, spec, rng))
            bad = [r for r in res if r.mismatch]
            for r in bad[:3]:
                print(f"{kind} {r.spec}: {r.mismatch}", file=sys.stderr)
            rows.append(f"| {kind} | {version} | {'on' if pc else 'off'} | {streams - len(bad)}/{streams} | "
                        f"{sum(r.num_ops for r in res):,} | {sum(r.refused for r in res):,} | "
                        f"{sum(r.cows for r in res):,} | {sum(r.cache_hits for r in res):,} | "
                        f"{time.perf_counter() - t0:.1f} |")
            print(rows[-1], flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("fetch", help="download the two wheels (no deps) and unpack the block-manager modules")
    d = sub.add_parser("diff", help="replay random streams through pagesim and vLLM, print agreement counts")
    d.add_argument("--streams", type=int, default=30, help="streams per semantics and caching mode (default 30)")
    d.add_argument("--write", type=Path, help="also write the table to this Markdown file")
    a = ap.parse_args()
    if a.cmd == "fetch":
        for v in (vllm_src.V0_VERSION, vllm_src.V1_VERSION):
            print(f"vLLM {v}: {vllm_src.fetch(v)}")
        return
    if a.streams < 1:
        ap.error(f"--streams {a.streams} out of range (valid: integer >= 1)")
    rows = _diff(a.streams)
    if a.write:
        a.write.write_text("# pagesim replay vs vLLM's block managers, op by op\n\n"
                           "`python benchmarks/vllm_reference.py diff --streams N --write ...` (streams: block "
                           "size 4-16, 16-128 blocks, 300-1000 ops, seeds 0..N-1; see docs/memory.md).\n\n"
                           + "\n".join(rows) + "\n")


if __name__ == "__main__":
    main()
