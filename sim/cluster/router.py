"""Routing policies: which replica an arriving request goes to.

A router is a plain callable `(spec, replicas) -> index` over views of the replicas at the arrival
instant (their load and what their prefix caches hold); `ROUTERS` maps a policy name to a factory
taking the load factor. Policies:
  round-robin         replicas in turn, blind to load and content;
  least-outstanding   the replica with the fewest outstanding requests (waiting + running + swapped);
  prefix-aware        the replica whose prefix cache holds most of the request's leading blocks,
                      among replicas under the load bound (consistent hashing with bounded loads,
                      Mirrokni et al. 2018): a replica may take the request only if its load + 1 <=
                      ceil(load_factor * (total load + 1) / replicas); no hit anywhere -> least loaded.
Ties go to the lower load, then the lower index, so every decision is deterministic.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Protocol

from sim.request import RequestSpec, SpecError


class ReplicaView(Protocol):
    """What a router may look at on a replica."""

    def load(self) -> int:
        """Outstanding requests: queued, running or swapped out."""
        ...

    def prefix_hits(self, spec: RequestSpec) -> int:
        """Leading full prompt blocks of `spec` its prefix cache holds now (0 without prefix caching)."""
        ...


Router = Callable[[RequestSpec, Sequence[ReplicaView]], int]


def round_robin(load_factor: float = 1.25) -> Router:
    """Replicas in turn (0, 1, ..., N-1, 0, ...)."""
    turn = [0]

    def route(spec: RequestSpec, replicas: Sequence[ReplicaView]) -> int:
        i = turn[0] % len(replicas)
        turn[0] += 1
        return i

    return route


def least_outstanding(load_factor: float = 1.25) -> Router:
    """The replica with the fewest outstanding requests (lowest index on a tie)."""

    def route(spec: RequestSpec, replicas: Sequence[ReplicaView]) -> int:
        loads = [r.load() for r in replicas]
        return loads.index(min(loads))

    return route


def load_bound(loads: Sequence[int], load_factor: float) -> int:
    """The most outstanding requests a replica may hold after taking one more (bounded loads)."""
    return math.ceil(load_factor * (sum(loads) + 1) / len(loads))


def prefix_aware(load_factor: float = 1.25) -> Router:
    """Most cached leading blocks among replicas within the load bound; else the least loaded.

    With load_factor >= 1 the least-loaded replica is always within the bound, so a request always
    has somewhere to go; larger factors favour cache affinity over balance.
    """
    if not load_factor >= 1.0:
        raise SpecError(f"config field 'load_factor' = {load_factor!r} out of range (valid: >= 1)")

    def route(spec: RequestSpec, replicas: Sequence[ReplicaView]) -> int:
        loads = [r.load() for r in replicas]
        bound = load_bound(loads, load_factor)
        best, best_key = -1, (-1, 0)
        for i, r in enumerate(replicas):
            if loads[i] + 1 > bound:  # over the load bound: its cache does not count
                continue
            key = (r.prefix_hits(spec), -loads[i])
            if key > best_key:  # strict: the lower index wins a tie
                best, best_key = i, key
        return best

    return route


ROUTERS: dict[str, Callable[[float], Router]] = {
    "round-robin": round_robin,
    "least-outstanding": least_outstanding,
    "prefix-aware": prefix_aware,
}


def make_router(name: str, load_factor: float = 1.25) -> Router:
    """The router of a policy name; ValueError naming the valid ones."""
    factory = ROUTERS.get(name)
    if factory is None:
        raise SpecError(f"config field 'router' = {name!r} out of range (valid: {', '.join(ROUTERS)})")
    return factory(load_factor)
