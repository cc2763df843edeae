"""Benchmark: operations per CPU second of the KV-cache memory layer (paged and contiguous).

The scheduler calls these once per admitted request / per decoding sequence and step, so their cost
bounds the simulator's event rate. Also shows the paged ops are O(1) in the pool size (same rate
for 1k and 1M blocks). Prints the figures and writes benchmarks/results/memory.txt.
Run: python benchmarks/bench_memory.py [--seconds 1.0]
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from sim.memory.contiguous_cache import ContiguousKVCache
from sim.memory.extent_allocator import PLACEMENTS
from sim.memory.paged_cache import PagedKVCache
from sim.memory.prefix import prefix_block_hashes

OUT = Path(__file__).resolve().parent / "results" / "memory.txt"


def rate(make: Callable[[], Callable[[], object]], seconds: float) -> float:
    """Calls per CPU second of the op returned by make() (fresh state per run), best of 3."""
    best = float("inf")
    for _ in range(3):
        fn = make()
        n, t0 = 0, time.process_time()
        while (dt := time.process_time() - t0) < seconds / 3:
            for _ in range(256):
                fn()
            n += 256
        best = min(best, dt / n)
    return 1.0 / best


def paged_alloc_free(num_blocks: int, prompt: int = 512) -> Callable[[], Callable[[], object]]:
    """allocate a prompt then free it (one request's admission and completion)."""
    def make() -> Callable[[], object]:
        c = PagedKVCache(num_blocks, 16)

        def op() -> None:
            c.allocate(0, prompt)
            c.free(0)
        return op
    return make


def paged_decode(num_blocks: int, batch: int = 256) -> Callable[[], Callable[[], object]]:
    """append(seq, 1) round-robin over a batch; sequences restart when the pool runs dry."""
    def make() -> Callable[[], object]:
        c = PagedKVCache(num_blocks, 16, watermark=0.0)
        per = max(1, num_blocks // batch - 1) * 16
        for s in range(batch):
            c.allocate(s, 1)
        state = {"s": 0}

        def op() -> None:
            s = state["s"]
            state["s"] = (s + 1) % batch
            if c.num_tokens(s) >= per:
                c.free(s)
                c.allocate(s, 1)
            c.append(s, 1)
        return op
    return make


def paged_fork_cow() -> Callable[[], Callable[[], object]]:
    """fork a 100-token sequence, append to the child (one copy-on-write), free the child."""
    def make() -> Callable[[], object]:
        c = PagedKVCache(1024, 16)
        c.allocate("p", 100)

        def op() -> None:
            c.fork("p", "c")
            c.append("c", 1)
            c.free("c")
        return op
    return make


def paged_prefix_hit() -> Callable[[], Callable[[], object]]:
    """allocate a 512-token prompt whose 32 blocks all hit the prefix cache, then free it."""
    def make() -> Callable[[], object]:
        c = PagedKVCache(4096, 16, enable_prefix_caching=True)
        h = prefix_block_hashes(512, tuple(range(32)), 16, 16)
        c.allocate("warm", 512, h)
        c.free("warm")

        def op() -> None:
            c.allocate(0, 512, h)
            c.free(0)
        return op
    return make


def contiguous_churn(placement: str, live: int = 200) -> Callable[[], Callable[[], object]]:
    """Free a random live request and admit a new one of random size (steady state ~`live` extents)."""
    def make() -> Callable[[], object]:
        rng = np.random.default_rng(0)
        sizes = rng.integers(16, 2048, size=1 << 16).tolist()
        c = ContiguousKVCache(live * 1100, placement=placement, max_model_len=2048)
        ids: list[int] = []
        state = {"next": 0, "k": 0}
        while c.allocate(state["next"], sizes[state["next"] % len(sizes)]):
            ids.append(state["next"])
            state["next"] += 1

        def op() -> None:
            k = state["k"] = (state["k"] * 1103515245 + 12345) % (1 << 31)
            if ids:
                i = k % len(ids)
                c.free(ids[i])
                ids[i] = ids[-1]
                ids.pop()
            n = state["next"]
            state["next"] += 1
            if c.allocate(n, sizes[n % len(sizes)]):
                ids.append(n)
        return op
    return make


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=1.0, help="CPU time per measurement")
    args = ap.parse_args()
    cases: list[tuple[str, Callable[[], Callable[[], object]]]] = [
        ("paged allocate+free, 512-token prompt (32 blocks), 1k-block pool", paged_alloc_free(1024)),
        ("paged allocate+free, 512-token prompt (32 blocks), 1M-block pool", paged_alloc_free(1 << 20)),
        ("paged decode append(1), batch 256, 4k-block pool", paged_decode(4096)),
        ("paged decode append(1), batch 256, 1M-block pool", paged_decode(1 << 20)),
        ("paged fork + CoW append + free", paged_fork_cow()),
        ("paged prefix-cache allocate (32 hits) + free", paged_prefix_hit()),
        *[(f"contiguous {p} free+allocate, ~200 live extents", contiguous_churn(p)) for p in PLACEMENTS],
    ]
    lines = [f"# bench_memory: ops per CPU second (best of 3, {args.seconds:.1f} s each)",
             f"# {platform.python_implementation()} {platform.python_version()}, {platform.machine()}, "
             f"{os.cpu_count()} CPUs (shared), {time.strftime('%Y-%m-%d')}"]
    for name, make in cases:
        r = rate(make, args.seconds)
        lines.append(f"{r:>12,.0f} /s  {name}")
        print(lines[-1], flush=True)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text("\n".join(lines) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
