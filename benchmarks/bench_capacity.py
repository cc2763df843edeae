"""Record the capacity searches of docs/capacity.md: paged vs contiguous on the default model (fp16 and
fp8 KV), and 4 replicas per routing policy on the Mooncake conversation trace.

    python benchmarks/bench_capacity.py            # both (the Mooncake search takes ~10-20 min on 2 cores)
    python benchmarks/bench_capacity.py --quick    # the default-model table only (~10 s on an idle core)

Writes benchmarks/results/capacity.md; the search directories go to results/bench-capacity/ (resumable:
re-running continues, and reuses every point already simulated).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

from analysis.api import experiment
from analysis.capacity.runner import CapacityOutcome, run_capacity
from analysis.capacity.search import SearchSpec
from analysis.capacity.slo import parse_targets

REPO = Path(__file__).resolve().parent.parent
TRACE = REPO.parent / "shared" / "traces" / "mooncake_fast25" / "conversation_trace.jsonl"


def default_model(out: Path, workers: int) -> tuple[str, str]:
    exp = experiment(systems=["paged-16", "paged-8", "paged-32", "max", "pow2", "pow2-output", "oracle"])
    t0 = time.perf_counter()
    res = run_capacity(exp, parse_targets(["ttft_p99=2", "tpot_p50=0.05"]), out, SearchSpec(),
                       vary={"kv_dtype": ["fp16", "fp8_e4m3"]}, executor="process", workers=workers,
                       resume=(out / "points.jsonl").exists())
    return res.capacity.to_csv(index=False), _cost(res, time.perf_counter() - t0)


def _cost(res: CapacityOutcome, secs: float) -> str:
    return (f"{len(res.points)} points; this call simulated {res.ran} in {secs:.0f} s and took {res.reused} "
            "from an earlier run's log")


def mooncake(out: Path, workers: int) -> tuple[str, str, str]:
    exp = experiment(systems=["paged"], trace=str(TRACE), num_requests=2000, rate=None, model="llama-3-8b",
                     max_model_len=131072, gpu="h200", kv_dtype="fp8_e4m3", prefix_caching=True,
                     replicas=4, **{"scheduler.chunked_prefill": True, "scheduler.max_num_batched_tokens": 8192})
    t0 = time.perf_counter()
    res = run_capacity(exp, parse_targets(["ttft_p90=5", "tpot_p90=0.05"]), out,
                       SearchSpec(start=3.0, growth=1.5), executor="process", workers=workers,
                       vary={"router": ["round-robin", "least-outstanding", "prefix-aware"]},
                       resume=(out / "points.jsonl").exists())
    pts = res.points.sort_values(["router", "rate"])
    lines = [f"{r.router:<18} {r.rate:>8.4g}  {r.p90_ttft:.3f}  {r.p90_tpot:.4f}  {r.prefix_cache_hit_rate:.4f}"
             for r in pts.itertuples()]
    return res.capacity.to_csv(index=False), "\n".join(lines), _cost(res, time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="only the default-model table")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path("results/bench-capacity"))
    args = ap.parse_args()
    md = ["# Capacity searches (`benchmarks/bench_capacity.py`)", "",
          f"Machine: {platform.machine()}, {platform.python_implementation()} {platform.python_version()}, "
          f"{args.workers} worker processes. Deterministic: a re-run gives the same tables.", ""]
    table, cost = default_model(args.out / "default", args.workers)
    md += ["## OPT-13B on A100-40GB, 300 ShareGPT-like requests, p99 TTFT <= 2 s, p50 TPOT <= 50 ms", "",
           f"Paged block sizes and contiguous policies, fp16 and fp8 KV ({cost}).", "",
           "```csv", table.strip(), "```", ""]
    if not args.quick:
        if not TRACE.is_file():
            raise SystemExit(f"bench_capacity: {TRACE} not found (the Mooncake trace lives in ../shared/traces)")
        table, points, cost = mooncake(args.out / "mooncake", args.workers)
        md += ["## Mooncake conversation trace (first 2,000 requests), 4 replicas per routing policy", "",
               "Llama-3-8B architecture with a 128k context on H200s, fp8 KV, paged+prefix, chunked prefill "
               f"(8,192 tokens), p90 TTFT <= 5 s, p90 TPOT <= 50 ms ({cost}).", "",
               "```csv", table.strip(), "```", "",
               "Every point: router, rate (req/s), p90 TTFT (s), p90 TPOT (s), prefix-cache hit rate.", "",
               "```", points, "```", ""]
    dest = REPO / "benchmarks" / "results" / "capacity.md"
    dest.write_text("\n".join(md))
    print(dest.read_text())
    print(json.dumps({"written": str(dest)}))


if __name__ == "__main__":
    main()
