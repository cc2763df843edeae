"""Timing checks against the vLLM paper (Kwon et al., SOSP'23) at the paper's own settings, with the
`vllm-2023` engine profile: OPT-13B on one A100-40GB, the ShareGPT-/Alpaca-like workloads of
tests/paperkit.py.

- Fig. 13: mean batch size, ShareGPT at 2 req/s and Alpaca at 30 req/s. The profile's per-sequence
  CPU cost is the one number FITTED, on Fig. 13b's paged bar (Alpaca, 132.44; docs/latency.md): so
  the Alpaca paged check only guards the fit; Fig. 13a (ShareGPT) and every contiguous bar are held out.
- Fig. 18b: the block-size sweep has a penalty at small (1-4) and large (>= 128) blocks.
- Fig. 19: swap is slower than recompute at block size 1-4 and not slower at >= 64.
The paper's values are read off its Figs. 13, 18b and 19. Run with `-s` to see the numbers.
"""

from __future__ import annotations

import pytest
from paperkit import alpaca, last_arrival, sharegpt, steady_batch

from sim.config import ContiguousCacheSpec, PagedCacheSpec, SchedulerConfig, SimConfig
from sim.engine import simulate
from sim.records.results import SimResult

ENGINE = "vllm-2023"
SYSTEMS: dict[str, PagedCacheSpec | ContiguousCacheSpec] = {
    "paged": PagedCacheSpec(block_size=16),
    "max": ContiguousCacheSpec(policy="max", placement="buddy"),  # the paper's Orca baselines use a
    "pow2-output": ContiguousCacheSpec(policy="pow2-output", placement="buddy"),  # buddy allocator
    "oracle": ContiguousCacheSpec(policy="oracle", placement="buddy"),
}
# Fig. 13 (a) ShareGPT at 2 req/s, (b) Alpaca at 30 req/s: Orca (Max), Orca (Pow2), Orca (Oracle), vLLM.
PAPER_BATCH = {"sharegpt": {"paged": 30.42, "max": 7.00, "pow2-output": 9.81, "oracle": 13.62},
               "alpaca": {"paged": 132.44, "max": 7.00, "pow2-output": 43.24, "oracle": 72.75}}
BLOCK_SIZES = (1, 2, 4, 8, 16, 32, 64, 128, 256)


def _batches(dataset: str) -> dict[str, float]:
    # ShareGPT: 2000 requests (1000 s) because its heavy-tailed outputs make shorter runs swing by
    # +-15% (4 seeds x 2000 give paged 27.3-29.1). Alpaca: 3000 requests (100 s); near saturation its
    # paged bar swings more (4 seeds: 124-151), so its tolerance is wider (it is the fitted bar anyway).
    reqs = sharegpt(2000, 2.0) if dataset == "sharegpt" else alpaca(3000, 30.0)
    t0 = 20.0 if dataset == "sharegpt" else 5.0  # after the pool has filled
    out = {}
    for name, cache in SYSTEMS.items():
        res = simulate(reqs, SimConfig(cache=cache, engine=ENGINE, record_steps=True), rng=0)
        out[name] = steady_batch(res, t0, last_arrival(res))
    return out


@pytest.mark.slow
@pytest.mark.parametrize("dataset", ["sharegpt", "alpaca"])
def test_fig13_mean_batch_size(dataset: str) -> None:
    got, paper = _batches(dataset), PAPER_BATCH[dataset]
    print(f"\nFig. 13 {dataset} mean batch (sim vs paper):", {k: (round(v, 2), paper[k]) for k, v in got.items()})
    # Max fits floor(15.4K / 2048) = 7 requests by construction.
    assert got["max"] == pytest.approx(7.00, rel=0.05)
    # Held out (not fitted): the contiguous bars, set by memory, and ShareGPT's paged bar, set by the
    # step time (the pool is not full at 2 req/s): within 15%, the bar.
    for k in ("oracle", "pow2-output"):
        assert got[k] == pytest.approx(paper[k], rel=0.15), k
    if dataset == "sharegpt":
        assert got["paged"] == pytest.approx(30.42, rel=0.15)
    else:  # the fitted bar: a guard that the fit still holds, at the sample's spread
        assert got["paged"] == pytest.approx(132.44, rel=0.20)
    # The paper's headline ratio, paged over Oracle (2.2x ShareGPT, 1.8x Alpaca), to 20%.
    assert got["paged"] / got["oracle"] == pytest.approx(paper["paged"] / paper["oracle"], rel=0.20)


@pytest.fixture(scope="module")
def block_sweep() -> dict[str, dict[int, float]]:
    """Mean normalized latency (s/token) per block size, recompute and swap preemption, ShareGPT at 2 req/s
    (the Fig. 13 rate: near saturation, where block size shows) with 1000 requests."""
    reqs = sharegpt(1000, 2.0)
    out: dict[str, dict[int, float]] = {"recompute": {}, "swap": {}}
    for mode in out:
        for bs in BLOCK_SIZES:
            cfg = SimConfig(cache=PagedCacheSpec(block_size=bs), engine=ENGINE, record_steps=False,
                            scheduler=SchedulerConfig(preemption_mode=mode))
            res: SimResult = simulate(reqs, cfg, rng=0)
            out[mode][bs] = res.summary["mean_normalized_latency_s_per_token"]
    print("\nnormalized latency s/token by block size:",
          {m: {b: round(v, 4) for b, v in d.items()} for m, d in out.items()})
    return out


@pytest.mark.slow
def test_fig18b_block_size_penalty_at_both_ends(block_sweep: dict[str, dict[int, float]]) -> None:
    lat = block_sweep["recompute"]
    best_mid = min(lat[b] for b in (8, 16, 32, 64))
    # Small blocks: the decode kernel's per-block cost (one warp iteration per block) grows as the
    # block shrinks; 1 and 2 pay clearly, 4 a little (the paper: a penalty below 16).
    assert lat[1] > lat[2] > lat[4] > best_mid
    assert lat[1] > 1.3 * best_mid
    # Large blocks: internal fragmentation (a half-empty last block per sequence) and whole-block
    # reads cut the batch; >= 128 is clearly worse (the paper: worse above 128 on ShareGPT).
    assert lat[256] > lat[128] > 1.2 * best_mid


@pytest.mark.slow
def test_fig19_swap_vs_recompute_across_block_sizes(block_sweep: dict[str, dict[int, float]]) -> None:
    rec, swp = block_sweep["recompute"], block_sweep["swap"]
    # Small blocks: vLLM copies each block of each layer (K and V) with its own cudaMemcpyAsync, ~5 us
    # of fixed cost per call, so swapping many small blocks is slow (the paper's Fig. 19).
    for bs in (1, 2, 4):
        assert swp[bs] > rec[bs], bs
    # Large blocks: the copies are bandwidth-bound and overlap the forward pass layer by layer, while
    # recompute pays a real prefill: swapping is not slower.
    for bs in (64, 128, 256):
        assert swp[bs] <= rec[bs], bs
