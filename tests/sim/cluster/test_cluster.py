"""Replicas behind a router on one clock: hand-worked routing with real engines, the load bound,
one replica = the single engine, the summed memory series, determinism."""

from __future__ import annotations

import math

import numpy as np
import pytest
from enginekit import cfg

from sim.cluster import Cluster, ClusterResult, ClusterSpec, simulate_cluster, sum_memory
from sim.config import SimConfig
from sim.engine import simulate
from sim.records.results import MEMORY_CATEGORIES
from sim.request import RequestSpec, SpecError


def req(rid: str, t: float, ids: tuple[int, ...], out: int = 2) -> RequestSpec:
    # one prefix id per 4-token block (block_size 4 in enginekit.cfg): ids map to blocks one to one
    return RequestSpec(rid, t, 4 * len(ids), out, prefix_hashes=ids, prefix_unit=4)


def two_conversations() -> list[RequestSpec]:
    # A and B open two conversations at t=0; their follow-ups arrive at t=5 (everything before has
    # finished, the blocks stay in each replica's prefix cache), B's first.
    return [req("A", 0.0, (1, 2, 3, 4)), req("B", 0.0, (5, 6, 7, 8)),
            req("B2", 5.0, (5, 6, 7, 8, 9)), req("A2", 5.0, (1, 2, 3, 4, 10))]


def run(reqs: list[RequestSpec], router: str, n: int = 2, load_factor: float = 1.25) -> ClusterResult:
    # check mode: every replica checks its scheduler, cache and breakdown invariants after each step
    return Cluster(reqs, cfg(capacity=256, prefix=True), ClusterSpec(n, router, load_factor), rng=0,
                   check_invariants=True).run()


def test_prefix_aware_follows_the_cache_round_robin_does_not() -> None:
    pa = run(two_conversations(), "prefix-aware")
    # A -> 0 (tie: lowest index), B -> 1 (least loaded), B2 -> 1 (4 blocks cached there), A2 -> 0
    assert pa.assignment == {"A": 0, "B": 1, "B2": 1, "A2": 0}
    rr = run(two_conversations(), "round-robin")
    assert rr.assignment == {"A": 0, "B": 1, "B2": 0, "A2": 1}
    # hashed prompt blocks: 4 + 4 + 5 + 5 = 18; prefix-aware finds 4 + 4 of them cached, round-robin none
    assert pa.cluster.summary["prefix_cache_hit_rate"] == pytest.approx(8 / 18)
    assert rr.cluster.summary["prefix_cache_hit_rate"] == 0.0
    assert [r["prefix_cache_hit_rate"] for r in pa.per_replica] == [pytest.approx(4 / 9), pytest.approx(4 / 9)]


def test_prefix_aware_respects_the_load_bound() -> None:
    # A warms replica 0's cache; at t=5 four follow-ups sharing A's prefix arrive at one instant.
    reqs = [req("A", 0.0, (1, 2, 3, 4))] + [req(f"A{k}", 5.0, (1, 2, 3, 4, 10 + k)) for k in range(2, 6)]
    res = run(reqs, "prefix-aware")
    # loads before each: A2 [0,0] bound 1 -> 0; A3 [1,0] bound 2 -> 0; A4 [2,0] bound 2: replica 0
    # would hold 3 > 2 -> 1 (least loaded); A5 [2,1] bound 3 -> 0 again (cached there)
    assert [res.assignment[f"A{k}"] for k in range(2, 6)] == [0, 0, 1, 0]
    # without a binding bound every follow-up goes to the cache
    loose = run(reqs, "prefix-aware", load_factor=10.0)
    assert [loose.assignment[f"A{k}"] for k in range(2, 6)] == [0, 0, 0, 0]


def test_least_outstanding_balances_simultaneous_arrivals() -> None:
    reqs = [RequestSpec(f"R{k}", 0.0, 8, 4) for k in range(5)]
    res = simulate_cluster(reqs, cfg(capacity=256), ClusterSpec(3, "least-outstanding"), rng=0)
    assert [res.assignment[f"R{k}"] for k in range(5)] == [0, 1, 2, 0, 1]
    assert [r["num_requests"] for r in res.per_replica] == [2, 2, 1]


def test_one_replica_cluster_is_the_single_engine() -> None:
    from workloads import generate

    reqs = generate("sharegpt", 60, rate=6.0, rng=np.random.default_rng(3))
    reqs = [r if r.req_id % 3 else RequestSpec(r.req_id, r.arrival_time, r.prompt_len, r.output_len, beam_width=3)
            for r in reqs]  # beam search draws from the engine's generator
    config = SimConfig(kv_capacity_tokens=6000)
    single = simulate(reqs, config, rng=7).summary
    cluster = simulate_cluster(reqs, config, ClusterSpec(1), rng=7).cluster.summary
    for k, v in single.items():
        if k in cluster and not isinstance(v, str):
            assert cluster[k] == pytest.approx(v, nan_ok=True, rel=1e-9), k


def test_cluster_memory_sums_the_replicas_pools() -> None:
    res = simulate_cluster([RequestSpec(k, 0.1 * k, 20, 10) for k in range(12)], cfg(capacity=128),
                           ClusterSpec(3, "round-robin"), rng=0)
    mem = res.cluster.memory
    assert mem and all(m.capacity == 3 * 128 for m in mem)  # every replica samples at t=0
    assert res.cluster.summary["capacity_tokens"] == 3 * 128
    for m in mem:
        assert sum(getattr(m, c) for c in MEMORY_CATEGORIES) == pytest.approx(m.capacity)
    times = [m.time_s for m in mem]
    assert times == sorted(set(times))
    assert res.cluster.summary["num_finished"] == 12 == sum(r["num_finished"] for r in res.per_replica)
    assert sum(res.cluster.summary[f"{c}_pct"] for c in MEMORY_CATEGORIES) == pytest.approx(100.0)


def test_sum_memory_holds_each_sample_until_the_next() -> None:
    from sim.records.results import MemorySample

    a = [MemorySample(0.0, 1, 0, 0, 0, 0, 9, 1, 10), MemorySample(2.0, 5, 0, 0, 0, 0, 5, 5, 10)]
    b = [MemorySample(1.0, 2, 0, 0, 0, 0, 8, 2, 10)]
    s = sum_memory([a, b])
    assert [(m.time_s, m.token_states, m.capacity) for m in s] == [(0.0, 1, 10), (1.0, 3, 20), (2.0, 7, 20)]


def test_same_seed_same_cluster_run() -> None:
    from workloads import generate

    reqs = generate("sharegpt", 80, rate=10.0, rng=np.random.default_rng(1))
    one = simulate_cluster(reqs, SimConfig(), ClusterSpec(3, "least-outstanding"), rng=5)
    two = simulate_cluster(reqs, SimConfig(), ClusterSpec(3, "least-outstanding"), rng=5)
    assert one.assignment == two.assignment
    assert one.cluster.summary["p99_ttft"] == two.cluster.summary["p99_ttft"]
    assert not math.isnan(one.cluster.summary["p99_ttft"])


def test_bad_cluster_spec() -> None:
    with pytest.raises(SpecError, match="replicas"):
        ClusterSpec(0)
    with pytest.raises(SpecError, match="router"):
        ClusterSpec(2, "hash")
    with pytest.raises(SpecError, match="load_factor"):
        ClusterSpec(2, "prefix-aware", 0.9)


def test_idle_replicas_and_a_custom_router() -> None:
    # every request to replica 2: replicas 0 and 1 stay idle and still end cleanly
    reqs = [RequestSpec(k, 0.2 * k, 12, 3) for k in range(4)]
    res = simulate_cluster(reqs, cfg(capacity=128), ClusterSpec(3), rng=0, router=lambda spec, views: 2)
    assert [r["num_requests"] for r in res.per_replica] == [0, 0, 4]
    assert res.cluster.summary["num_finished"] == 4 and res.cluster.summary["requests_max_over_mean"] == 3.0
    assert math.isnan(res.per_replica[0]["p99_ttft"])
    with pytest.raises(RuntimeError, match="router returned replica 5"):
        simulate_cluster(reqs, cfg(capacity=128), ClusterSpec(3), rng=0, router=lambda spec, views: 5)


def test_replicas_on_one_clock_run_as_they_would_alone() -> None:
    # Two interleaved workloads routed by parity: each replica's records equal a solo run of its half,
    # so sharing the clock (and the engine's jump-ahead when nothing else is due) changes nothing.
    from workloads import generate

    reqs = generate("sharegpt", 120, rate=10.0, rng=np.random.default_rng(4))
    config = SimConfig(kv_capacity_tokens=5000)  # tight: preemptions happen
    res = simulate_cluster(reqs, config, ClusterSpec(2), rng=0, router=lambda spec, views: spec.req_id % 2)
    for k in (0, 1):
        solo = simulate([r for r in reqs if r.req_id % 2 == k], config, rng=0)
        got = res.replicas[k]
        assert [(r.req_id, r.first_token_s, r.finish_s) for r in got.requests] == \
            [(r.req_id, r.first_token_s, r.finish_s) for r in solo.requests]
        assert len(got.steps) == len(solo.steps) and got.summary["num_preemptions"] == solo.summary["num_preemptions"]
    assert res.replicas[0].summary["num_preemptions"] + res.replicas[1].summary["num_preemptions"] > 0
