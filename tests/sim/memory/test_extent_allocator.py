"""Extent allocators: first-fit vs best-fit placement, coalescing, buddy split/merge, holes."""

from __future__ import annotations

import pytest

from sim.memory.extent_allocator import PLACEMENTS, BestFitAllocator, BuddyAllocator, FirstFitAllocator


def carve(a: FirstFitAllocator | BestFitAllocator) -> None:
    """Leave holes of 10 at 0 and 5 at 20, with extents in between."""
    offs = [a.alloc(n) for n in (10, 10, 5, 75)]
    assert offs == [0, 10, 20, 25]
    a.free(0)
    a.free(20)


def test_first_fit_takes_lowest_hole() -> None:
    a = FirstFitAllocator(100)
    carve(a)
    assert a.holes() == [(0, 10), (20, 5)]
    assert a.alloc(4) == 0
    a.check_invariants()


def test_best_fit_takes_smallest_hole() -> None:
    a = BestFitAllocator(100)
    carve(a)
    assert a.alloc(4) == 20
    assert a.holes() == [(0, 10), (24, 1)]
    a.check_invariants()


@pytest.mark.parametrize("cls", [FirstFitAllocator, BestFitAllocator])
def test_coalescing_on_free(cls: type[FirstFitAllocator]) -> None:
    a = cls(30)
    assert [a.alloc(10), a.alloc(10), a.alloc(10)] == [0, 10, 20]
    assert a.holes() == [] and a.largest_free_extent == 0
    assert a.alloc(1) is None
    a.free(0)
    a.free(20)
    assert a.holes() == [(0, 10), (20, 10)] and a.free_slots == 20 and a.largest_free_extent == 10
    assert a.alloc(15) is None  # 20 free slots, no hole of 15: external fragmentation
    assert a.slots_in_holes_smaller_than(15) == 20 and a.slots_in_holes_smaller_than(10) == 0
    a.free(10)  # merges left and right
    assert a.holes() == [(0, 30)] and a.num_holes == 1
    a.check_invariants()


@pytest.mark.parametrize("name", sorted(PLACEMENTS))
def test_errors(name: str) -> None:
    a = PLACEMENTS[name](16)
    with pytest.raises(ValueError, match="size = 0"):
        a.alloc(0)
    with pytest.raises(ValueError, match="offset 3"):
        a.free(3)
    with pytest.raises(ValueError, match="capacity"):
        PLACEMENTS[name](0)


def test_buddy_split_and_merge() -> None:
    b = BuddyAllocator(16)
    assert b.footprint(3) == 4 and b.footprint(4) == 4 and b.footprint(5) == 8
    x = b.alloc(3)
    assert x == 0 and b.allocated_size(0) == 4
    assert b.holes() == [(4, 4), (8, 8)] and b.free_slots == 12
    y = b.alloc(4)
    assert y == 4 and b.holes() == [(8, 8)]
    b.free(x)
    assert b.holes() == [(0, 4), (8, 8)]  # 0's buddy 4 is in use
    b.free(y)
    assert b.holes() == [(0, 16)] and b.largest_free_extent == 16
    b.check_invariants()


def test_buddy_non_power_of_two_capacity_uses_every_slot() -> None:
    b = BuddyAllocator(100)  # roots 64 @0, 32 @64, 4 @96
    assert b.holes() == [(0, 64), (64, 32), (96, 4)] and b.max_alloc == 64
    assert b.alloc(65) is None
    offs = [b.alloc(4) for _ in range(25)]
    got = [o for o in offs if o is not None]
    assert sorted(got) == list(range(0, 100, 4)) and b.free_slots == 0
    for o in got:
        b.free(o)
    # roots never merge with each other
    assert b.holes() == [(0, 64), (64, 32), (96, 4)]
    b.check_invariants()


def test_buddy_prefers_smallest_sufficient_block() -> None:
    b = BuddyAllocator(100)
    assert b.alloc(4) == 96  # the 4-slot root, not a split of 64
    assert b.alloc(20) == 64  # footprint 32: the 32 root
    b.check_invariants()


def test_check_invariants_detects_corruption() -> None:
    a = FirstFitAllocator(10)
    a.alloc(4)
    a._free += 1  # noqa: SLF001 - deliberate corruption
    with pytest.raises(AssertionError, match="free_slots"):
        a.check_invariants()
