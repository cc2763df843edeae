"""The shared-block histogram of a paged cache, kept incrementally: ref count (>= 2) -> number of blocks
with that count. Blocks at ref count 1 are the used blocks not listed, so an unshared workload costs
nothing; the allocator monitor reads the histogram every step (PagedKVCache.ref_count_histogram).
"""

from __future__ import annotations

from collections.abc import Iterable


class SharedRefs(dict[int, int]):
    """ref count -> blocks at that count, for counts >= 2 (a dict, so hot loops may update it inline)."""

    __slots__ = ()

    def move(self, old: int, new: int) -> None:
        """One block's ref count changes from old to new."""
        if old >= 2:
            c = self[old] - 1
            if c:
                self[old] = c
            else:
                del self[old]
        if new >= 2:
            self[new] = self.get(new, 0) + 1

    def histogram(self, num_used: int) -> tuple[int, int, int, int, int]:
        """Used blocks by ref count: (1, 2, 3-4, 5-8, > 8), given the number of used blocks."""
        h = [0, 0, 0, 0, 0]
        for r, n in self.items():
            h[1 if r == 2 else 2 if r <= 4 else 3 if r <= 8 else 4] += n
        h[0] = num_used - sum(h)
        return h[0], h[1], h[2], h[3], h[4]

    @classmethod
    def recount(cls, refs: Iterable[int]) -> SharedRefs:
        """The histogram recomputed from every block's ref count (check_invariants)."""
        out = cls()
        for r in refs:
            if r >= 2:
                out[r] = out.get(r, 0) + 1
        return out
