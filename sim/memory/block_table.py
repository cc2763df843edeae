"""A sequence's block table: logical block index -> physical block id, plus its token count.

Logical block k holds tokens [k*B, (k+1)*B). Leading entries may be DROPPED (the sliding-window
case: the blocks were released but the indices stay valid); only the cache manager mutates tables.
"""

from __future__ import annotations

from dataclasses import dataclass, field

DROPPED = -1
"""Placeholder physical id for a leading block released by a sliding window."""


@dataclass(slots=True)
class BlockTable:
    """Physical block ids of one sequence, in logical order, and the tokens stored.

    Invariants (check): len(blocks) == ceil(num_tokens / block_size); DROPPED entries form a prefix
    of length num_dropped; no physical id appears twice; num_tokens >= 0.
    """

    blocks: list[int] = field(default_factory=list)
    num_tokens: int = 0
    num_dropped: int = 0  # leading DROPPED entries

    @property
    def num_live_blocks(self) -> int:
        """Entries that reference a physical block."""
        return len(self.blocks) - self.num_dropped

    def live_blocks(self) -> list[int]:
        """The referenced physical ids, in logical order."""
        return self.blocks[self.num_dropped:]

    def copy(self) -> BlockTable:
        """An independent table with the same entries (used by fork)."""
        return BlockTable(self.blocks.copy(), self.num_tokens, self.num_dropped)

    def check(self, block_size: int, name: object = "?") -> None:
        """Raise AssertionError naming the sequence if the table is inconsistent."""
        n = self.num_tokens
        assert n >= 0, f"seq {name!r}: negative token count {n}"
        want = -(-n // block_size)
        assert len(self.blocks) == want, f"seq {name!r}: {len(self.blocks)} blocks for {n} tokens (want {want})"
        assert 0 <= self.num_dropped <= len(self.blocks), f"seq {name!r}: num_dropped {self.num_dropped}"
        assert all(b == DROPPED for b in self.blocks[:self.num_dropped]), f"seq {name!r}: bad dropped prefix"
        live = self.live_blocks()
        assert all(b >= 0 for b in live), f"seq {name!r}: DROPPED entry outside the dropped prefix"
        assert len(set(live)) == len(live), f"seq {name!r}: a physical block listed twice in {live}"
