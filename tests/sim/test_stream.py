"""Streaming runs: records handed to a sink as the run goes, the summary from running sums, lazy workloads."""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

import numpy as np
import pytest

from sim.config import ContiguousCacheSpec, PagedCacheSpec, SchedulerConfig, SimConfig
from sim.engine import Engine, simulate
from sim.records import stream
from sim.records.results import MemorySample, RequestRecord, StepRecord
from sim.records.stream import LogHistogram, RecordSink, TimeWeighted
from sim.request import RequestSpec, SpecError
from sim.workload import IdSet, stream_workload
from workloads.synthetic import generate


class ListSink:
    """Keeps what it is handed, and the chunk sizes."""

    def __init__(self) -> None:
        self.reqs: list[RequestRecord] = []
        self.steps_: list[StepRecord] = []
        self.mem: list[MemorySample] = []
        self.chunks: list[int] = []

    def requests(self, records: list[RequestRecord]) -> None:
        self.chunks.append(len(records))
        self.reqs += records

    def steps(self, records: list[StepRecord]) -> None:
        self.steps_ += records

    def memory(self, samples: list[MemorySample]) -> None:
        self.mem += samples


def _same_summary(full: dict[str, Any], streamed: dict[str, Any]) -> list[str]:
    """Keys whose values differ beyond summation order (percentiles: beyond the histogram's 0.04%)."""
    bad = []
    assert set(full) == set(streamed)
    for k, v in full.items():
        w = streamed[k]
        if isinstance(v, float):
            tol = 4e-4 if k[0] == "p" and k[1].isdigit() else 1e-9
            if not (math.isclose(v, w, rel_tol=tol, abs_tol=1e-12) or (v != v and w != w)):
                bad.append(f"{k}: {v} vs {w}")
        elif v != w:
            bad.append(f"{k}: {v} vs {w}")
    return bad


def _mixed_workload(n: int = 400) -> list[RequestSpec]:
    reqs = generate("sharegpt-mixed", n, 6.0, np.random.default_rng(3))
    # a few cancellations, and shared prefixes for the prefix cache
    return [replace(r, cancel_time=r.arrival_time + 2.0 if i % 37 == 0 else None,
                    prefix_hashes=(i % 5,) if r.prompt_len >= 64 else (), prefix_unit=64)
            for i, r in enumerate(reqs)]


@pytest.mark.parametrize("config", [
    SimConfig(cache=PagedCacheSpec(block_size=16, prefix_caching=True)),
    SimConfig(cache=PagedCacheSpec(block_size=16), scheduler=SchedulerConfig(preemption_mode="swap"),
              kv_capacity_tokens=6000),
    SimConfig(cache=ContiguousCacheSpec(policy="max")),
], ids=["paged-prefix", "paged-swap", "contig-max"])
def test_a_streamed_run_gives_the_same_records_and_summary(config: SimConfig) -> None:
    reqs = _mixed_workload()
    full = simulate(reqs, config, rng=7)
    sink = ListSink()
    streamed = simulate(iter(reqs), config, rng=7, record_sink=sink)
    assert isinstance(sink, RecordSink)
    assert not streamed.requests and not streamed.steps and not streamed.memory and not streamed.monitor
    assert sorted(sink.reqs, key=lambda r: r.req_id) == sorted(full.requests, key=lambda r: r.req_id)
    assert sink.steps_ == full.steps and sink.mem == full.memory
    assert _same_summary(full.summary, streamed.summary) == []
    assert full.summary["num_aborted"] > 0 and full.summary["num_finished"] > 0  # the cases are exercised


def test_a_streamed_run_keeps_the_invariants_checked_every_step() -> None:
    reqs = _mixed_workload(60)
    cfg = SimConfig(cache=PagedCacheSpec(block_size=16, prefix_caching=True))
    sink = ListSink()
    res = Engine(iter(reqs), cfg, rng=7, record_sink=sink, check_invariants=True).run()
    assert res.summary["num_requests"] == len(sink.reqs) == 60


def test_lean_streamed_run_matches_lean_kept_run_and_holds_few_groups(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(stream, "CHUNK", 1000)  # hand records over in chunks of 1000
    reqs = generate("sharegpt", 6000, 2.0, np.random.default_rng(0))  # unsaturated: ~30 live
    lean = SimConfig(record_steps=False, memory_sample_interval_s=1.0)
    full = simulate(reqs, lean, rng=0)
    sink = ListSink()
    eng = Engine(iter(reqs), lean, rng=0, record_sink=sink)
    streamed = eng.run()
    assert _same_summary(full.summary, streamed.summary) == []
    assert len(sink.reqs) == 6000 and not sink.steps_
    assert sink.chunks[0] >= 1000 and len(sink.chunks) >= 2  # records left during the run, not only at its end
    assert eng._stream is not None and eng._stream.max_held <= 4096  # collected whenever 4096 are held


def test_an_iterator_workload_runs_like_a_list() -> None:
    reqs = generate("sharegpt", 300, 4.0, np.random.default_rng(1))
    a = simulate(reqs, SimConfig(), rng=2)
    b = simulate(iter(reqs), SimConfig(), rng=2)
    assert a.summary == pytest.approx(b.summary, nan_ok=True) and a.requests == b.requests


def test_a_streamed_workload_is_checked_as_it_goes() -> None:
    ok = [RequestSpec(i, float(i), 8, 4) for i in range(3)]
    with pytest.raises(SpecError, match="before the previous request"):
        list(stream_workload([*ok, RequestSpec(9, 0.5, 8, 4)]))
    with pytest.raises(SpecError, match="duplicate req_id"):
        list(stream_workload([*ok, RequestSpec(1, 5.0, 8, 4)]))
    with pytest.raises(SpecError, match="duplicate req_id"):
        list(stream_workload([RequestSpec("a", 0.0, 8, 4), RequestSpec("a", 1.0, 8, 4)]))
    with pytest.raises(SpecError, match="workload item 3: expected a RequestSpec"):
        list(stream_workload([*ok, "x"]))  # type: ignore[list-item]
    with pytest.raises(SpecError, match="before the previous request"):  # raised by the engine's run too
        simulate(iter([*ok, RequestSpec(9, 0.5, 8, 4)]), SimConfig())


def test_id_set() -> None:
    ids = IdSet()
    assert ids.add(5) and ids.add(0) and ids.add(IdSet.BITMAP_LIMIT) and ids.add(-1) and ids.add("5")
    assert not ids.add(5) and not ids.add(IdSet.BITMAP_LIMIT) and not ids.add(-1) and not ids.add("5")
    assert ids.add(10_000_000) and not ids.add(10_000_000) and ids.add(9_999_999)


def test_log_histogram_percentiles_are_within_its_bound() -> None:
    x = np.random.default_rng(0).lognormal(-2, 2, 20001)
    h = LogHistogram()
    for v in x.tolist():
        h.add(v)
    h.add(float("nan"))  # ignored
    assert len(h) == x.size
    bound = 2 ** (1 / 2048) - 1
    for q in (0, 1, 50, 90, 99, 99.9, 100):
        assert abs(h.quantile(q) / np.percentile(x, q) - 1) <= bound * 1.01, q
    z = LogHistogram()
    assert math.isnan(z.quantile(50))
    for v in (0.0, 0.0, 1.0):
        z.add(v)
    assert z.quantile(0) == 0.0 and z.quantile(50) == 0.0 and z.quantile(100) == pytest.approx(1.0, rel=1e-3)


def test_time_weighted_means_and_a_replaced_sample() -> None:
    tw = TimeWeighted(2)
    assert tw.empty and tw.means(1.0) == []
    tw.add(0.0, (1.0, 2.0))
    tw.add(1.0, (3.0, 9.0))  # replaced by the next sample at the same instant: never holds
    tw.add(1.0, (5.0, 0.0))
    tw.add(3.0, (0.0, 1.0))
    assert tw.means(4.0) == [pytest.approx(11 / 4), pytest.approx(3 / 4)]
    assert tw.maxima() == [5.0, 2.0]
    sums, span = tw.integrals(4.0)
    assert span == 4.0 and sums == [pytest.approx(11.0), pytest.approx(3.0)]
    one = TimeWeighted(1)
    one.add(2.0, (7.0,))
    assert one.means(2.0) == [7.0]  # an empty span: the sample's own value
