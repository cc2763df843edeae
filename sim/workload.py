"""Checking a workload before (or while) the engine runs it: item types, unique ids, modelled
combinations, and for a streamed workload arrival order, without keeping the requests."""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator

from sim.request import RequestSpec, SpecError

__all__ = ["IdSet", "check_workload", "stream_workload"]


def check_workload(requests: Iterable[RequestSpec], *, start: int = 0) -> list[RequestSpec]:
    """The workload as a list; SpecError for a non-RequestSpec item, a duplicate req_id, or a
    combination the engine does not model (beam search with speculative decoding). `start`: the
    index of the first item (in messages)."""
    specs = list(requests)
    seen: set[object] = set()
    for i, r in enumerate(specs, start):
        if not isinstance(r, RequestSpec):
            raise SpecError(f"workload item {i}: expected a RequestSpec, got {type(r).__name__}")
        if r.req_id in seen:
            raise SpecError(f"request {r.req_id!r}: duplicate req_id (valid: unique ids)")
        seen.add(r.req_id)
        if r.beam_width > 1 and r.spec_k > 0:
            raise SpecError(f"request {r.req_id!r}: beam_width = {r.beam_width} with spec_k = {r.spec_k} "
                            f"is not modelled (valid: spec_k = 0 when beam_width > 1)")
    return specs


def stream_workload(requests: Iterable[RequestSpec]) -> Iterator[RequestSpec]:
    """The workload's requests one by one, checked as check_workload does plus arrival order (a
    stream cannot be sorted), without keeping the requests (ids are remembered in an IdSet)."""
    last_t = -math.inf
    seen = IdSet()
    for i, r in enumerate(requests):
        check_workload((r,), start=i)
        if r.arrival_time < last_t:
            raise SpecError(f"request {r.req_id!r}: arrival_time {r.arrival_time:g} is before the previous "
                            f"request's {last_t:g} (valid: a streamed workload in arrival order)")
        last_t = r.arrival_time
        if not seen.add(r.req_id):
            raise SpecError(f"request {r.req_id!r}: duplicate req_id (valid: unique ids)")
        yield r


class IdSet:
    """A set of request ids in little memory: small non-negative integers (the loaders' and generators'
    ids) as bits of a bytearray (10M ids: 1.25 MB), any other id in a Python set."""

    BITMAP_LIMIT = 1 << 27  # ids below this use the bitmap (at most 16 MiB)

    def __init__(self) -> None:
        self._bits = bytearray()
        self._other: set[object] = set()

    def add(self, rid: object) -> bool:
        """Add an id; False if it was already there."""
        if type(rid) is int and 0 <= rid < self.BITMAP_LIMIT:
            byte, bit = rid >> 3, 1 << (rid & 7)
            bits = self._bits
            if byte >= len(bits):
                bits.extend(bytes(max(byte + 1 - len(bits), len(bits))))  # grow by doubling
            if bits[byte] & bit:
                return False
            bits[byte] |= bit
            return True
        if rid in self._other:
            return False
        self._other.add(rid)
        return True
