"""The contiguous KV cache: each request reserves one extent of token slots up front and never grows.

This is the pre-PagedAttention baseline (FasterTransformer/Orca style). A reservation policy sizes
the extent (max_model_len, next power of two of the whole length or of the output, or the exact
final length); a placement policy puts it in one address space. Admission can tell "not enough free
slots" from "enough free slots, but no hole large enough" (external fragmentation), measured from
the real holes.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Hashable
from typing import Any

from sim.memory.extent_allocator import PLACEMENTS, ExtentAllocator
from sim.memory.outcomes import CacheError

SeqId = Hashable


def _check_lens(prompt_len: int, final_len: int, max_model_len: int) -> None:
    if not (isinstance(prompt_len, int) and isinstance(final_len, int) and isinstance(max_model_len, int)):
        raise ValueError(f"lengths must be integers: prompt_len={prompt_len!r}, final_len={final_len!r}, "
                         f"max_model_len={max_model_len!r}")
    if not 1 <= prompt_len <= final_len <= max_model_len:
        raise ValueError(f"need 1 <= prompt_len ({prompt_len}) <= final_len ({final_len}) <= "
                         f"max_model_len ({max_model_len})")


def reserve_max(prompt_len: int, final_len: int, max_model_len: int) -> int:
    """Reserve max_model_len slots (what a static-batching server without length knowledge does)."""
    _check_lens(prompt_len, final_len, max_model_len)
    return max_model_len


def reserve_pow2(prompt_len: int, final_len: int, max_model_len: int) -> int:
    """Reserve the next power of two >= final_len, capped at max_model_len (at most 2x over)."""
    _check_lens(prompt_len, final_len, max_model_len)
    return min(1 << (final_len - 1).bit_length(), max_model_len)


def reserve_pow2_output(prompt_len: int, final_len: int, max_model_len: int) -> int:
    """Reserve the prompt plus the next power of two >= the output length (final_len - prompt_len),
    capped at max_model_len: the vLLM paper's Orca (Pow2), which over-reserves the output by up to 2x
    (an output of 25 tokens reserves 32 slots for it)."""
    _check_lens(prompt_len, final_len, max_model_len)
    out = final_len - prompt_len
    return min(prompt_len + (1 << (out - 1).bit_length() if out else 0), max_model_len)


def reserve_oracle(prompt_len: int, final_len: int, max_model_len: int) -> int:
    """Reserve exactly prompt + output length (an oracle that knows the output length)."""
    _check_lens(prompt_len, final_len, max_model_len)
    return final_len


RESERVATION_POLICIES: dict[str, Callable[[int, int, int], int]] = {
    "max": reserve_max,
    "pow2": reserve_pow2,
    "pow2-output": reserve_pow2_output,
    "oracle": reserve_oracle,
}
"""Policy name -> (prompt_len, final_len, max_model_len) -> slots to reserve."""


class ContigStatus(enum.Enum):
    """Admission verdict for a contiguous reservation.

    LATER_FRAGMENTED: enough free slots in total but no hole large enough (external fragmentation).
    """

    OK = "OK"
    LATER = "LATER"
    LATER_FRAGMENTED = "LATER_FRAGMENTED"
    NEVER = "NEVER"


def _choice(option: str, value: str, choices: dict[str, Any]) -> None:
    if value not in choices:
        raise ValueError(f"{option} = {value!r} is not valid (valid: {', '.join(sorted(choices))})")


class ContiguousKVCache:
    """Per-sequence extents in one address space of `capacity_tokens` slots.

    Invariants (check_invariants): the allocator's invariants hold (extents and holes tile the
    address space, holes coalesced); every live sequence owns exactly one allocated extent;
    used_slots + free_slots == capacity_tokens.
    """

    def __init__(self, capacity_tokens: int, *, policy: str = "max", placement: str = "first_fit",
                 max_model_len: int, op_sink: Callable[[dict[str, Any]], None] | None = None) -> None:
        _choice("policy", policy, RESERVATION_POLICIES)
        _choice("placement", placement, PLACEMENTS)
        if not isinstance(max_model_len, int) or isinstance(max_model_len, bool) or max_model_len < 1:
            raise ValueError(f"max_model_len = {max_model_len!r} out of range (valid: integer >= 1)")
        self.capacity_tokens = capacity_tokens
        self.policy = policy
        self.placement = placement
        self.max_model_len = max_model_len
        self._policy = RESERVATION_POLICIES[policy]
        self._alloc: ExtentAllocator = PLACEMENTS[placement](capacity_tokens)
        self._seqs: dict[SeqId, int] = {}  # seq -> offset
        self._used = 0
        self._sink = op_sink
        if op_sink is not None:
            op_sink({"op": "config", "kind": "contiguous", "capacity_tokens": capacity_tokens,
                     "placement": placement, "policy": policy, "max_model_len": max_model_len})

    def reservation_size(self, prompt_len: int, final_len: int) -> int:
        """Slots the policy reserves for a request (ValueError if final_len > max_model_len)."""
        return self._policy(prompt_len, final_len, self.max_model_len)

    def footprint(self, size: int) -> int:
        """Slots an extent of `size` really occupies (buddy placement rounds up to a power of two)."""
        return self._alloc.footprint(size)

    def can_allocate(self, size: int) -> ContigStatus:
        """OK if a hole fits `size` now; LATER_FRAGMENTED if the free slots would suffice but no hole
        is large enough; LATER if there are too few free slots; NEVER if it exceeds the largest
        extent an empty address space can give."""
        fp = self._alloc.footprint(size)
        if fp > self._alloc.max_alloc:
            return ContigStatus.NEVER
        if self._alloc.largest_free_extent >= fp:
            return ContigStatus.OK
        if self._alloc.free_slots >= fp:
            return ContigStatus.LATER_FRAGMENTED
        return ContigStatus.LATER

    def allocate(self, seq_id: SeqId, size: int) -> bool:
        """Reserve an extent of `size` slots; False (nothing changed) if no hole fits.

        CacheError if seq_id exists.
        """
        if seq_id in self._seqs:
            raise CacheError(f"sequence {seq_id!r} already allocated")
        off = self._alloc.alloc(size)
        if off is None:
            return False
        self._seqs[seq_id] = off
        self._used += self._alloc.allocated_size(off)
        if self._sink is not None:
            self._sink({"op": "allocate", "seq": seq_id, "n": size})
        return True

    def free(self, seq_id: SeqId) -> None:
        """Release the sequence's extent (coalescing with free neighbours). CacheError if unknown."""
        off = self._seqs.pop(seq_id, None)
        if off is None:
            raise CacheError(f"unknown sequence {seq_id!r}")
        self._used -= self._alloc.allocated_size(off)
        self._alloc.free(off)
        if self._sink is not None:
            self._sink({"op": "free", "seq": seq_id})

    def has_seq(self, seq_id: SeqId) -> bool:
        """True if the sequence holds an extent."""
        return seq_id in self._seqs

    def allocated(self, seq_id: SeqId) -> tuple[int, int]:
        """(offset, length) of the sequence's extent; length includes buddy rounding."""
        off = self._seqs.get(seq_id)
        if off is None:
            raise CacheError(f"unknown sequence {seq_id!r}")
        return off, self._alloc.allocated_size(off)

    @property
    def num_seqs(self) -> int:
        """Live sequences."""
        return len(self._seqs)

    @property
    def used_slots(self) -> int:
        """Slots held by extents."""
        return self._used

    @property
    def free_slots(self) -> int:
        """Slots in holes."""
        return self._alloc.free_slots

    @property
    def largest_free_extent(self) -> int:
        """Length of the largest hole (the largest allocation possible now, as a footprint)."""
        return self._alloc.largest_free_extent

    @property
    def num_holes(self) -> int:
        """Number of holes."""
        return self._alloc.num_holes

    def holes(self) -> list[tuple[int, int]]:
        """Holes as (start, length), by address (buddy: the free blocks)."""
        return self._alloc.holes()

    def external_fragmentation(self, need: int) -> int:
        """Free slots in holes smaller than the footprint of `need` (useless to such a request)."""
        return self._alloc.slots_in_holes_smaller_than(self._alloc.footprint(need))

    def check_invariants(self) -> None:
        """Raise AssertionError naming the sequence or offset if an invariant (class doc) is broken."""
        self._alloc.check_invariants()
        total = 0
        offs = set()
        for s, off in self._seqs.items():
            assert off not in offs, f"seq {s!r}: offset {off} shared with another sequence"
            offs.add(off)
            total += self._alloc.allocated_size(off)
        assert total == self._used, f"used_slots {self._used} != {total} held by sequences"
        assert self._used + self.free_slots == self.capacity_tokens, "used + free != capacity"
