"""The simulator's speed devices change no result: the engine's kept decode sums equal the arrays at
every step, the step clock lands on the same instants as SimPy timeouts would, and the paused cyclic
GC is restored. (Speed itself is measured in benchmarks/bench_engine.py, not here.)"""

from __future__ import annotations

import gc

import numpy as np
import pytest

from sim.config import ContiguousCacheSpec, PagedCacheSpec, SchedulerConfig, SimConfig
from sim.engine import Engine, simulate
from sim.request import RequestSpec
from sim.timing.latency import BatchShape, RooflineLatency


class CheckingLatency:
    """The roofline, plus a check at every step that the engine's sums match the batch's arrays."""

    name = "checking"

    def __init__(self, model: str, gpu: str = "a100-40gb") -> None:
        self.inner = RooflineLatency(model, gpu)
        self.steps = self.hinted = 0

    def step_time(self, batch: BatchShape) -> float:
        dc, bs = batch.decode_context_lens, batch.block_size or 0
        self.steps += 1
        if batch.decode_ctx_sum is not None:
            self.hinted += 1
            assert batch.decode_ctx_sum == int(dc.sum())
            if bs:
                assert batch.decode_blocks_sum == int(((dc + bs - 1) // bs).sum())
        return self.inner.step_time(batch)


def mixed(n: int, seed: int, *, long: bool = False) -> list[RequestSpec]:
    rng = np.random.default_rng(seed)
    out, t = [], 0.0
    for i in range(n):
        t += float(rng.exponential(0.05))
        kind = int(rng.integers(0, 5))
        kw: dict = {}
        if kind == 1:
            kw["n"] = 3
        elif kind == 2:
            kw["beam_width"] = 2
        elif kind == 3:
            kw.update(spec_k=3, spec_accept=0.6)
        elif kind == 4:
            kw["cancel_time"] = float(rng.uniform(0.05, 2.0))
        p = int(rng.integers(4000, 6000)) if long else int(rng.integers(5, 300))
        out.append(RequestSpec(i, t, p, int(rng.integers(2, 120)), **kw))
    return out


@pytest.mark.parametrize(("model", "cache", "sched", "long"), [
    ("opt-13b", PagedCacheSpec(block_size=16), SchedulerConfig(), False),
    ("opt-13b", PagedCacheSpec(block_size=8, prefix_caching=True), SchedulerConfig(preemption_mode="swap"), False),
    ("opt-13b", ContiguousCacheSpec(policy="pow2-output", placement="buddy"), SchedulerConfig(), False),
    ("mistral-7b", PagedCacheSpec(block_size=16), SchedulerConfig(chunked_prefill=True), True),  # window binds
])
def test_kept_decode_sums_match_the_arrays_every_step(model: str, cache, sched: SchedulerConfig,
                                                      long: bool) -> None:
    lat = CheckingLatency(model)
    capacity = 60_000 if long else 3_000  # small pools: preemptions and swaps happen
    res = simulate(mixed(40 if long else 120, 3, long=long),
                   SimConfig(model=model, cache=cache, scheduler=sched, latency=lat, kv_capacity_tokens=capacity),
                   rng=0)
    assert lat.steps == res.summary["num_steps"] > 50
    assert 0 < lat.hinted < lat.steps  # both paths ran: decodes only, and steps with groups
    assert res.summary["num_finished"] > 0


@pytest.mark.parametrize("latency", [None, "calibrated"])
def test_decode_shortcut_matches_the_full_path_every_step(latency: str | None) -> None:
    """With a shipped model the engine times decode-only steps from the kept sums and skips the context
    array (Scheduler.lazy_ctx); check mode recomputes every such step through step_time(BatchShape)."""
    lat = None
    if latency == "calibrated":
        coeffs = {"c0_s": 5e-6, "c_kv_bytes_s": 1e-12, "c_seqs_s": 1e-7, "c_blocks_s": 2e-9}
        lat = {"schema": "pagesim.latency/1", "source": "calibrated", "model": "OPT-13B", "gpu": "A100-40GB",
               "attn_decode": {"variants": {"paged": coeffs, "contiguous": coeffs}}}
    for cache in (PagedCacheSpec(block_size=16), ContiguousCacheSpec(policy="oracle")):
        eng = Engine(mixed(80, 4), SimConfig(cache=cache, latency=lat, kv_capacity_tokens=3000), rng=0,
                     check_invariants=True)
        assert eng.sched.lazy_ctx
        res = eng.run()
        assert res.summary["num_finished"] > 0


def test_step_clock_lands_on_the_same_instants() -> None:
    """Steps of 10 ms; arrivals and a cancel fall between step ends, so some steps yield to SimPy and
    others move the clock directly: every time below is exact (binary fractions: 1/128 s steps)."""

    class Step:
        name = "1/128 s"

        def step_time(self, batch: BatchShape) -> float:
            return 1 / 128 if batch.num_seqs else 0.0

    reqs = [RequestSpec("a", 0.0, 4, 40), RequestSpec("b", 3 / 256, 4, 3),  # arrives mid-step 2
            RequestSpec("c", 0.0, 4, 50, cancel_time=5 / 256)]  # cancelled mid-step 3
    res = simulate(reqs, SimConfig(kv_capacity_tokens=256, latency=Step(), cache=PagedCacheSpec(block_size=4)))
    a, b, c = sorted(res.requests, key=lambda r: str(r.req_id))
    assert (a.first_token_s, a.finish_s) == (1 / 128, 40 / 128)
    assert (b.first_token_s, b.finish_s) == (3 / 128, 5 / 128)  # admitted at the end of step 2
    assert (c.status, c.finish_s) == ("aborted", 5 / 256)
    starts = [s.start_s for s in res.steps]
    assert starts == [k / 128 for k in range(len(starts))]


def test_gc_is_paused_during_a_run_and_restored() -> None:
    seen: list[bool] = []

    class Probe:
        name = "probe"

        def step_time(self, batch: BatchShape) -> float:
            seen.append(gc.isenabled())
            if len(seen) == 3 and fail:
                raise RuntimeError("latency model failed")
            return 0.01

    reqs = [RequestSpec(0, 0.0, 10, 5)]
    was = gc.isenabled()
    try:
        for enabled in (True, False):
            for fail in (False, True):
                (gc.enable if enabled else gc.disable)()
                seen.clear()
                if fail:
                    with pytest.raises(RuntimeError, match="latency model failed"):
                        simulate(reqs, SimConfig(kv_capacity_tokens=64, latency=Probe()))
                else:
                    simulate(reqs, SimConfig(kv_capacity_tokens=64, latency=Probe()))
                assert seen and not any(seen)  # paused while the run steps
                assert gc.isenabled() == enabled  # and restored, also after an error
    finally:
        (gc.enable if was else gc.disable)()
