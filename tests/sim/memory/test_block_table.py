"""BlockTable: the consistency check and copy independence."""

from __future__ import annotations

import pytest

from sim.memory.block_table import DROPPED, BlockTable


def test_check_accepts_consistent_tables() -> None:
    BlockTable([], 0).check(4)
    BlockTable([7], 1).check(4)
    BlockTable([7, 2], 8).check(4)
    t = BlockTable([DROPPED, DROPPED, 5], 9, num_dropped=2)
    t.check(4)
    assert t.num_live_blocks == 1 and t.live_blocks() == [5]


@pytest.mark.parametrize(("table", "match"), [
    (BlockTable([1], 5), "1 blocks for 5 tokens"),
    (BlockTable([1, 1], 8), "listed twice"),
    (BlockTable([1, DROPPED], 8), "DROPPED entry outside the dropped prefix"),
    (BlockTable([DROPPED, 2], 8, num_dropped=0), "DROPPED entry outside the dropped prefix"),
    (BlockTable([1, 2], 8, num_dropped=1), "bad dropped prefix"),
])
def test_check_rejects_inconsistent_tables(table: BlockTable, match: str) -> None:
    with pytest.raises(AssertionError, match=match):
        table.check(4, "s")


def test_copy_is_independent() -> None:
    t = BlockTable([1, 2], 5)
    c = t.copy()
    c.blocks.append(3)
    c.num_tokens = 9
    assert t.blocks == [1, 2] and t.num_tokens == 5
