"""FreeBlockQueue: O(1) linked-list operations, checked against a plain Python list model."""

from __future__ import annotations

import numpy as np
import pytest

from sim.memory.free_queue import FreeBlockQueue


def test_initial_order_and_popleft() -> None:
    q = FreeBlockQueue(4)
    q.check_invariants()
    assert list(q) == [0, 1, 2, 3] and len(q) == 4 and q.peek() == 0
    assert [q.popleft() for _ in range(4)] == [0, 1, 2, 3]
    assert len(q) == 0 and q.peek() is None
    with pytest.raises(IndexError):
        q.popleft()
    q.check_invariants()


def test_append_appendleft_remove() -> None:
    q = FreeBlockQueue(5, initially_free=False)
    assert list(q) == []
    q.append(3)
    q.append(1)
    q.appendleft(4)
    assert list(q) == [4, 3, 1]
    q.remove(3)
    assert list(q) == [4, 1] and 3 not in q and 1 in q
    q.remove(4)
    q.remove(1)
    assert list(q) == [] and len(q) == 0
    q.append(0)
    assert q.popleft() == 0
    q.check_invariants()


def test_misuse_raises_with_block_id() -> None:
    q = FreeBlockQueue(3)
    with pytest.raises(ValueError, match="block 1 is already"):
        q.append(1)
    with pytest.raises(ValueError, match="out of range"):
        q.append(3)
    q.remove(2)
    with pytest.raises(ValueError, match="block 2 is not in the free queue"):
        q.remove(2)
    with pytest.raises(ValueError, match="num_blocks"):
        FreeBlockQueue(-1)


def test_bulk_ops_reject_bad_input() -> None:
    q = FreeBlockQueue(3)
    with pytest.raises(IndexError):
        q.popleft_n(4)
    q.popleft_n(2)
    with pytest.raises(ValueError, match="block 2 is already"):
        q.extend([0, 2])
    with pytest.raises(ValueError, match="block 2 is already"):
        q.extendleft([2])


def test_zero_blocks() -> None:
    q = FreeBlockQueue(0)
    assert len(q) == 0 and q.peek() is None
    q.check_invariants()


def test_check_invariants_detects_corruption() -> None:
    q = FreeBlockQueue(4)
    q._len = 3  # noqa: SLF001 - deliberate corruption
    with pytest.raises(AssertionError, match="length"):
        q.check_invariants()


def test_random_ops_match_list_model() -> None:
    rng = np.random.default_rng(7)
    n = 20
    q = FreeBlockQueue(n)
    model = list(range(n))
    for _ in range(3000):
        r = rng.integers(6)
        if r == 0 and model:
            assert q.popleft() == model.pop(0)
        elif r == 4:
            k = int(rng.integers(0, len(model) + 1))
            assert q.popleft_n(k) == model[:k]
            del model[:k]
        elif r == 5:
            absent = [b for b in range(n) if b not in model]
            pick = [int(x) for x in rng.permutation(absent)[:3]]
            if rng.integers(2):
                q.extend(pick)
                model.extend(pick)
            else:
                q.extendleft(pick)
                model[:0] = pick[::-1]
        elif r == 1 and model:
            b = int(rng.choice(model))
            q.remove(b)
            model.remove(b)
        else:
            absent = [b for b in range(n) if b not in model]
            if absent:
                b = int(rng.choice(absent))
                if r == 2:
                    q.append(b)
                    model.append(b)
                else:
                    q.appendleft(b)
                    model.insert(0, b)
        assert len(q) == len(model)
    assert list(q) == model
    q.check_invariants()
