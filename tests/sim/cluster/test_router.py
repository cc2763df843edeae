"""Routing policies on hand-worked replica states (fake views: a load and prefix hits per replica)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from sim.cluster.router import ROUTERS, load_bound, make_router
from sim.request import RequestSpec, SpecError

REQ = RequestSpec(0, 0.0, 64, 8)


@dataclass
class Fake:
    outstanding: int
    hits: int = 0

    def load(self) -> int:
        return self.outstanding

    def prefix_hits(self, spec: RequestSpec) -> int:
        return self.hits


def views(loads: list[int], hits: list[int] | None = None) -> list[Fake]:
    return [Fake(n, h) for n, h in zip(loads, hits or [0] * len(loads), strict=True)]


def test_round_robin_cycles_blind_to_load_and_content() -> None:
    route = make_router("round-robin")
    reps = views([9, 0, 0], [0, 0, 5])
    assert [route(REQ, reps) for _ in range(7)] == [0, 1, 2, 0, 1, 2, 0]


def test_least_outstanding_picks_fewest_lowest_index_on_tie() -> None:
    route = make_router("least-outstanding")
    assert route(REQ, views([3, 1, 2])) == 1
    assert route(REQ, views([2, 1, 1])) == 1
    assert route(REQ, views([0, 0], [0, 9])) == 0  # blind to the cache


def test_load_bound_is_bounded_loads_capacity() -> None:
    # ceil(1.25 * (total + 1) / replicas)
    assert load_bound([2, 0, 1], 1.25) == 2  # ceil(1.25 * 4 / 3) = ceil(1.67)
    assert load_bound([0, 4, 0, 0], 1.25) == 2  # ceil(1.25 * 5 / 4) = ceil(1.5625)
    assert load_bound([0, 0], 1.0) == 1


def test_prefix_aware_goes_where_the_prefix_is_cached() -> None:
    route = make_router("prefix-aware")
    # bound 2: replicas 1 (load 0) and 2 (load 1) may take it; replica 1 holds 3 of its blocks
    assert route(REQ, views([2, 0, 1], [0, 3, 1])) == 1
    # replica 0 holds the most but is at the bound (2 + 1 > 2): the next best cache wins
    assert route(REQ, views([2, 0, 1], [5, 0, 1])) == 2


def test_prefix_aware_skips_a_replica_over_the_load_bound() -> None:
    route = make_router("prefix-aware")
    # replica 1 caches 5 blocks but holds 4 of the 4 outstanding requests: bound 2, so it is skipped
    assert route(REQ, views([0, 4, 0, 0], [0, 5, 2, 0])) == 2
    # no other replica caches anything: the least loaded (lowest index) takes it
    assert route(REQ, views([0, 4, 0, 0], [0, 5, 0, 0])) == 0
    # a generous load factor lets the cache win: bound ceil(4 * 5 / 4) = 5 >= 4 + 1
    assert make_router("prefix-aware", 4.0)(REQ, views([0, 4, 0, 0], [0, 5, 2, 0])) == 1


def test_prefix_aware_ties_and_misses() -> None:
    route = make_router("prefix-aware")
    assert route(REQ, views([1, 0], [2, 2])) == 1  # equal hits: the lower load
    assert route(REQ, views([1, 1], [2, 2])) == 0  # equal hits and load: the lower index
    assert route(REQ, views([3, 1, 1, 2])) == 1  # no hits anywhere: least loaded


def test_unknown_router_and_bad_load_factor() -> None:
    with pytest.raises(SpecError, match="router.*valid: round-robin, least-outstanding, prefix-aware"):
        make_router("random")
    with pytest.raises(SpecError, match="load_factor"):
        make_router("prefix-aware", 0.5)
    assert set(ROUTERS) == {"round-robin", "least-outstanding", "prefix-aware"}
