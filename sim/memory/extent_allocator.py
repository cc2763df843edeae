"""Extent allocators over one address space [0, capacity): first-fit, best-fit and buddy.

A contiguous KV cache places each request's reservation as one extent here. First-fit and best-fit
keep the free holes sorted by address and by size and coalesce neighbours on free; buddy splits and
merges power-of-two blocks. Holes are real, so external fragmentation is measured, not assumed.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right, insort
from collections.abc import Callable
from typing import Protocol


class ExtentAllocator(Protocol):
    """What the contiguous cache needs from a placement policy."""

    capacity: int

    def alloc(self, size: int) -> int | None: ...
    def free(self, offset: int) -> None: ...
    def footprint(self, size: int) -> int: ...
    def allocated_size(self, offset: int) -> int: ...
    def holes(self) -> list[tuple[int, int]]: ...
    @property
    def largest_free_extent(self) -> int: ...
    @property
    def free_slots(self) -> int: ...
    @property
    def max_alloc(self) -> int: ...
    @property
    def num_holes(self) -> int: ...
    def slots_in_holes_smaller_than(self, need: int) -> int: ...
    def check_invariants(self) -> None: ...


def _check_size(size: object) -> int:
    if not isinstance(size, int) or isinstance(size, bool) or size < 1:
        raise ValueError(f"extent size = {size!r} out of range (valid: integer >= 1)")
    return size


class _HoleListAllocator:
    """Free holes kept twice: start-sorted (for coalescing) and (length, start)-sorted (for best-fit).

    Invariants (check_invariants): holes are disjoint, non-empty, not adjacent (coalesced), and
    disjoint from allocated extents; free_slots + allocated slots == capacity; both indexes agree.
    """

    def __init__(self, capacity: int) -> None:
        if not isinstance(capacity, int) or isinstance(capacity, bool) or capacity < 1:
            raise ValueError(f"capacity = {capacity!r} out of range (valid: integer >= 1 token slots)")
        self.capacity = capacity
        self._starts: list[int] = [0]
        self._len: dict[int, int] = {0: capacity}
        self._by_size: list[tuple[int, int]] = [(capacity, 0)]
        self._alloc: dict[int, int] = {}
        self._free = capacity

    # -- hole bookkeeping --
    def _add_hole(self, start: int, length: int) -> None:
        insort(self._starts, start)
        self._len[start] = length
        insort(self._by_size, (length, start))

    def _del_hole(self, start: int) -> int:
        length = self._len.pop(start)
        del self._starts[bisect_left(self._starts, start)]
        del self._by_size[bisect_left(self._by_size, (length, start))]
        return length

    def _take(self, start: int, size: int) -> int:
        """Allocate `size` slots at the start of the hole at `start`."""
        length = self._del_hole(start)
        if length > size:
            self._add_hole(start + size, length - size)
        self._alloc[start] = size
        self._free -= size
        return start

    def _find(self, size: int) -> int | None:
        raise NotImplementedError

    # -- public API --
    def alloc(self, size: int) -> int | None:
        """Offset of a new extent of `size` slots, or None if no hole is large enough."""
        _check_size(size)
        start = self._find(size)
        return None if start is None else self._take(start, size)

    def free(self, offset: int) -> None:
        """Release the extent starting at offset, merging it with free neighbours."""
        size = self._alloc.pop(offset, None)
        if size is None:
            raise ValueError(f"no extent allocated at offset {offset!r}")
        self._free += size
        start, end = offset, offset + size
        i = bisect_left(self._starts, offset)
        if i < len(self._starts) and self._starts[i] == end:  # right neighbour
            end += self._del_hole(end)
        if i > 0:
            p = self._starts[i - 1]
            if p + self._len[p] == start:  # left neighbour
                self._del_hole(p)
                start = p
        self._add_hole(start, end - start)

    def footprint(self, size: int) -> int:
        """Slots an allocation of `size` occupies (== size: no rounding)."""
        return _check_size(size)

    def allocated_size(self, offset: int) -> int:
        """Slots held by the extent at offset."""
        return self._alloc[offset]

    def holes(self) -> list[tuple[int, int]]:
        """Free holes as (start, length), by address."""
        return [(s, self._len[s]) for s in self._starts]

    @property
    def num_holes(self) -> int:
        """Number of free holes."""
        return len(self._starts)

    @property
    def largest_free_extent(self) -> int:
        """Length of the largest hole (0 when full)."""
        return self._by_size[-1][0] if self._by_size else 0

    @property
    def free_slots(self) -> int:
        """Total free slots over all holes."""
        return self._free

    @property
    def max_alloc(self) -> int:
        """The largest size that fits in an empty address space."""
        return self.capacity

    def slots_in_holes_smaller_than(self, need: int) -> int:
        """Free slots in holes shorter than `need` (they cannot serve a request of that size)."""
        i = bisect_left(self._by_size, (need, -1))
        return sum(length for length, _ in self._by_size[:i])

    def check_invariants(self) -> None:
        """Raise AssertionError naming the offsets if the hole/extent bookkeeping is inconsistent."""
        assert self._starts == sorted(self._len), "hole index out of sync with hole lengths"
        assert self._by_size == sorted((v, k) for k, v in self._len.items()), "size index out of sync"
        spans = sorted([(s, n, "hole") for s, n in self._len.items()]
                       + [(s, n, "extent") for s, n in self._alloc.items()])
        pos = 0
        prev_kind = ""
        for s, n, kind in spans:
            assert n >= 1, f"empty {kind} at {s}"
            assert s == pos, f"{kind} at {s} but previous span ends at {pos} (gap or overlap)"
            assert not (kind == "hole" and prev_kind == "hole"), f"adjacent holes not coalesced at {s}"
            pos, prev_kind = s + n, kind
        assert pos == self.capacity, f"spans cover {pos} of {self.capacity} slots"
        assert self._free == sum(self._len.values()), "free_slots out of sync"


class FirstFitAllocator(_HoleListAllocator):
    """Place each extent at the lowest-address hole that fits (O(holes) scan)."""

    def _find(self, size: int) -> int | None:
        if not self._by_size or self._by_size[-1][0] < size:
            return None  # O(1) rejection when nothing fits
        lens = self._len
        for s in self._starts:
            if lens[s] >= size:
                return s
        return None  # pragma: no cover - excluded by the size check above


class BestFitAllocator(_HoleListAllocator):
    """Place each extent in the smallest hole that fits (lowest address among equals), O(log holes)."""

    def _find(self, size: int) -> int | None:
        i = bisect_left(self._by_size, (size, -1))
        return self._by_size[i][1] if i < len(self._by_size) else None


class BuddyAllocator:
    """Binary buddy allocator: sizes round up to a power of two; free buddies merge back.

    A capacity that is not a power of two is split into power-of-two roots (its binary digits,
    largest first), each aligned to its own size, so no slot is lost; a block never merges past its
    root. holes() lists the free blocks (what the allocator can hand out), not merged address runs.

    Invariants (check_invariants): free blocks are aligned to their size, disjoint from each other
    and from allocated blocks, together cover the capacity exactly, and no two free buddies coexist.
    """

    def __init__(self, capacity: int) -> None:
        if not isinstance(capacity, int) or isinstance(capacity, bool) or capacity < 1:
            raise ValueError(f"capacity = {capacity!r} out of range (valid: integer >= 1 token slots)")
        self.capacity = capacity
        self._free_at: list[set[int]] = [set() for _ in range(capacity.bit_length())]
        self._root_starts: list[int] = []
        self._root_orders: list[int] = []
        pos = 0
        for k in range(capacity.bit_length() - 1, -1, -1):
            if capacity >> k & 1:
                self._root_starts.append(pos)
                self._root_orders.append(k)
                self._free_at[k].add(pos)
                pos += 1 << k
        self._alloc: dict[int, int] = {}  # offset -> order
        self._free = capacity

    @staticmethod
    def order_of(size: int) -> int:
        """Smallest k with 2**k >= size."""
        return (_check_size(size) - 1).bit_length()

    def footprint(self, size: int) -> int:
        """Slots an allocation of `size` occupies (next power of two)."""
        return 1 << self.order_of(size)

    @property
    def max_alloc(self) -> int:
        """The largest size that fits in an empty address space (the largest root)."""
        return 1 << self._root_orders[0]

    def alloc(self, size: int) -> int | None:
        """Offset of a new block of footprint(size) slots (lowest address among the smallest
        sufficient free blocks), or None if no free block is large enough."""
        k = self.order_of(size)
        j = k
        while j < len(self._free_at) and not self._free_at[j]:
            j += 1
        if j >= len(self._free_at):
            return None
        off = min(self._free_at[j])
        self._free_at[j].discard(off)
        while j > k:  # split, keeping the low half, freeing the high half
            j -= 1
            self._free_at[j].add(off + (1 << j))
        self._alloc[off] = k
        self._free -= 1 << k
        return off

    def free(self, offset: int) -> None:
        """Release the block at offset and merge it with its free buddy as far as its root allows."""
        k = self._alloc.pop(offset, None)
        if k is None:
            raise ValueError(f"no extent allocated at offset {offset!r}")
        self._free += 1 << k
        root_order = self._root_orders[bisect_right(self._root_starts, offset) - 1]
        while k < root_order:
            buddy = offset ^ (1 << k)
            if buddy not in self._free_at[k]:
                break
            self._free_at[k].discard(buddy)
            offset = min(offset, buddy)
            k += 1
        self._free_at[k].add(offset)

    def allocated_size(self, offset: int) -> int:
        """Slots held by the block at offset."""
        return 1 << self._alloc[offset]

    def holes(self) -> list[tuple[int, int]]:
        """Free blocks as (start, length), by address."""
        return sorted((off, 1 << k) for k, offs in enumerate(self._free_at) for off in offs)

    @property
    def num_holes(self) -> int:
        """Number of free blocks."""
        return sum(len(s) for s in self._free_at)

    @property
    def largest_free_extent(self) -> int:
        """Size of the largest free block (0 when full)."""
        for k in range(len(self._free_at) - 1, -1, -1):
            if self._free_at[k]:
                return 1 << k
        return 0

    @property
    def free_slots(self) -> int:
        """Total free slots over all free blocks."""
        return self._free

    def slots_in_holes_smaller_than(self, need: int) -> int:
        """Free slots in free blocks shorter than `need`."""
        return sum(len(offs) << k for k, offs in enumerate(self._free_at) if (1 << k) < need)

    def check_invariants(self) -> None:
        """Raise AssertionError naming the offsets if the buddy bookkeeping is inconsistent."""
        spans = sorted([(o, k, "free") for k, offs in enumerate(self._free_at) for o in offs]
                       + [(o, k, "alloc") for o, k in self._alloc.items()])
        pos = 0
        for o, k, kind in spans:
            assert o == pos, f"{kind} block at {o} but previous block ends at {pos} (gap or overlap)"
            root = bisect_right(self._root_starts, o) - 1
            r0 = self._root_starts[root]
            assert k <= self._root_orders[root], f"{kind} block at {o} of order {k} larger than its root"
            assert (o - r0) % (1 << k) == 0, f"{kind} block at {o} not aligned to {1 << k}"
            if kind == "free" and k < self._root_orders[root]:
                assert (o ^ (1 << k)) not in self._free_at[k], f"free buddies {o} and {o ^ (1 << k)} not merged"
            pos = o + (1 << k)
        assert pos == self.capacity, f"blocks cover {pos} of {self.capacity} slots"
        assert self._free == sum(len(s) << k for k, s in enumerate(self._free_at)), "free_slots out of sync"


PLACEMENTS: dict[str, Callable[[int], ExtentAllocator]] = {
    "first_fit": FirstFitAllocator,
    "best_fit": BestFitAllocator,
    "buddy": BuddyAllocator,
}
"""Placement policy name -> allocator constructor (capacity in slots)."""
