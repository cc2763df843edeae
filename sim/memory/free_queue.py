"""The free-block queue: an intrusive doubly linked list over block ids 0..n-1.

Every operation is O(1): take the head, add at the tail or the head, and unlink any block by id
(a prefix-cache hit on a free cached block takes it out of the middle). The head is the least
recently released block, so taking from the head evicts cached blocks least recently used first.
"""

from __future__ import annotations

from collections.abc import Iterator


class FreeBlockQueue:
    """Doubly linked list of free block ids, kept in two int arrays (prev, next) plus a sentinel.

    Index `n` (== num_blocks) is the sentinel: next[n] is the head, prev[n] is the tail, so no
    operation needs an empty-list branch. A block not in the queue has prev == next == -1.

    Invariants (check_invariants): walking next from the sentinel visits every queued block exactly
    once and returns to the sentinel after len(self) steps; prev is the mirror of next; blocks not
    visited have prev == next == -1.
    """

    __slots__ = ("_n", "_prev", "_next", "_len")

    def __init__(self, num_blocks: int, *, initially_free: bool = True) -> None:
        if not isinstance(num_blocks, int) or num_blocks < 0:
            raise ValueError(f"num_blocks = {num_blocks!r} out of range (valid: integer >= 0)")
        n = num_blocks
        self._n = n
        if initially_free:
            # Block i links to i-1 and i+1; block 0 and block n-1 link to the sentinel n.
            self._prev = [i - 1 for i in range(n + 1)]
            self._next = [i + 1 for i in range(n + 1)]
            self._prev[0] = n
            self._next[n] = 0 if n else n
            self._prev[n] = n - 1 if n else n
            if n:
                self._next[n - 1] = n
            self._len = n
        else:
            self._prev = [-1] * (n + 1)
            self._next = [-1] * (n + 1)
            self._prev[n] = self._next[n] = n
            self._len = 0

    def __len__(self) -> int:
        return self._len

    def __contains__(self, block_id: int) -> bool:
        return 0 <= block_id < self._n and self._next[block_id] != -1

    def __iter__(self) -> Iterator[int]:
        """Blocks from head (next to be taken) to tail."""
        nxt, s = self._next, self._n
        b = nxt[s]
        while b != s:
            yield b
            b = nxt[b]

    def peek(self) -> int | None:
        """The head block (the one popleft would return), or None when empty."""
        h = self._next[self._n]
        return None if h == self._n else h

    def popleft(self) -> int:
        """Remove and return the head block. IndexError when empty."""
        s = self._n
        b = self._next[s]
        if b == s:
            raise IndexError("popleft from an empty FreeBlockQueue")
        nb = self._next[b]
        self._next[s] = nb
        self._prev[nb] = s
        self._prev[b] = self._next[b] = -1
        self._len -= 1
        return b

    def popleft_n(self, n: int) -> list[int]:
        """Remove and return the first n blocks (head first), relinking the list once."""
        if n > self._len or n < 0:
            raise IndexError(f"popleft_n({n}) from a FreeBlockQueue of {self._len}")
        s, nxt, prv = self._n, self._next, self._prev
        out = []
        b = nxt[s]
        for _ in range(n):
            out.append(b)
            nb = nxt[b]
            nxt[b] = prv[b] = -1
            b = nb
        nxt[s] = b
        prv[b] = s
        self._len -= n
        return out

    def append(self, block_id: int) -> None:
        """Add a block at the tail (taken last). ValueError if it is already queued or out of range."""
        self._check_absent(block_id)
        s = self._n
        t = self._prev[s]
        self._next[t] = block_id
        self._prev[block_id] = t
        self._next[block_id] = s
        self._prev[s] = block_id
        self._len += 1

    def appendleft(self, block_id: int) -> None:
        """Add a block at the head (taken first). ValueError if it is already queued or out of range."""
        self._check_absent(block_id)
        s = self._n
        h = self._next[s]
        self._prev[h] = block_id
        self._next[block_id] = h
        self._prev[block_id] = s
        self._next[s] = block_id
        self._len += 1

    def extend(self, block_ids: list[int]) -> None:
        """append each block in order (the last one ends at the tail), linking the chain once."""
        if not block_ids:
            return
        s, nxt, prv = self._n, self._next, self._prev
        for b in block_ids:
            if type(b) is not int or not 0 <= b < s or nxt[b] != -1:
                self._check_absent(b)  # raises naming the block (the inline test is the fast common case)
        p = prv[s]
        for b in block_ids:
            nxt[p] = b
            prv[b] = p
            p = b
        nxt[p] = s
        prv[s] = p
        self._len += len(block_ids)

    def extendleft(self, block_ids: list[int]) -> None:
        """appendleft each block in order (the last one ends at the head), like deque.extendleft."""
        if not block_ids:
            return
        s, nxt, prv = self._n, self._next, self._prev
        for b in block_ids:
            if type(b) is not int or not 0 <= b < s or nxt[b] != -1:
                self._check_absent(b)  # raises naming the block
        h = nxt[s]
        for b in block_ids:
            prv[h] = b
            nxt[b] = h
            h = b
        prv[h] = s
        nxt[s] = h
        self._len += len(block_ids)

    def remove(self, block_id: int) -> None:
        """Unlink a queued block by id. ValueError if it is not in the queue."""
        if block_id not in self:
            raise ValueError(f"block {block_id} is not in the free queue")
        p, nx = self._prev[block_id], self._next[block_id]
        self._next[p] = nx
        self._prev[nx] = p
        self._prev[block_id] = self._next[block_id] = -1
        self._len -= 1

    def _check_absent(self, block_id: int) -> None:
        if not (isinstance(block_id, int) and 0 <= block_id < self._n):
            raise ValueError(f"block id {block_id!r} out of range (valid: 0..{self._n - 1})")
        if self._next[block_id] != -1:
            raise ValueError(f"block {block_id} is already in the free queue")

    def check_invariants(self) -> None:
        """Raise AssertionError naming the block if the list structure is broken."""
        s, nxt, prv = self._n, self._next, self._prev
        seen = [False] * (self._n + 1)
        b, steps = nxt[s], 0
        while b != s:
            assert 0 <= b < self._n, f"free queue: link to out-of-range block {b}"
            assert not seen[b], f"free queue: block {b} listed twice"
            seen[b] = True
            assert nxt[prv[b]] == b, f"free queue: prev/next mismatch at block {b}"
            steps += 1
            assert steps <= self._n, "free queue: cycle without the sentinel"
            b = nxt[b]
        assert nxt[prv[s]] == s, "free queue: the tail does not link back to the sentinel"
        assert steps == self._len, f"free queue: length {self._len} but {steps} blocks linked"
        for i in range(self._n):
            if not seen[i]:
                assert prv[i] == -1 and nxt[i] == -1, f"free queue: unlinked block {i} has stale links"
