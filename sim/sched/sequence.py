"""Runtime state of requests while they are simulated: sequence groups and the per-sequence table.

A `SeqGroup` is one request (its sequences share a prompt: n samples or beams). Per-sequence counters
live in `SeqTable`, slot-indexed NumPy arrays, so per-step work over the running batch is vectorized
(the engine never loops over every token of every sequence in Python).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from sim.request import RequestSpec

# Group statuses.
WAITING, RUNNING, SWAPPED, FINISHED, ABORTED, REJECTED = (
    "waiting", "running", "swapped", "finished", "aborted", "rejected")
LIVE = (WAITING, RUNNING, SWAPPED)

_COLUMNS = ("ctx", "spec", "nblk", "synced", "final", "gen", "olen", "share", "drop")
CTX, SPEC, NBLK, SYNCED, FINAL, GEN, OLEN, SHARE, DROP = range(len(_COLUMNS))  # rows of SeqTable.data


class SeqTable:
    """Per-sequence counters in slot-indexed int64 arrays (a free list recycles slots).

    Columns, for the sequence in slot s:
      ctx[s]    token slots holding KV written so far, this step's tokens included (drafts too);
      spec[s]   of those, draft slots this step will roll back (speculative decoding);
      nblk[s]   paged: blocks in its block table;
      synced[s] paged: tokens the cache has been told about (decodes of single sequences are reported
                lazily, only when a new block is needed: ctx - synced <= block_size);
      final[s]  the most KV slots it will ever hold (prompt + output - 1; the last token is never stored);
      gen[s]    output tokens generated so far; olen[s] output tokens wanted;
      share[s]  contiguous: reserved slots attributed to this sequence (its group's extent / #seqs);
      drop[s]   paged, sliding window: leading blocks released (their table entries are -1), so the
                sequence holds nblk - drop blocks covering tokens [drop * block_size, ctx).
    Invariants (check_invariants): 0 <= spec <= ctx <= final and 0 <= drop <= nblk for live slots;
    free slots are all-zero rows and listed once.
    """

    ctx: np.ndarray
    spec: np.ndarray
    nblk: np.ndarray
    synced: np.ndarray
    final: np.ndarray
    gen: np.ndarray
    olen: np.ndarray
    share: np.ndarray
    drop: np.ndarray

    def __init__(self, capacity: int = 1024) -> None:
        self.capacity = 0
        self._free: list[int] = []
        # One 2-D array, one row per column: a batch's counters gather in one fancy-index op.
        self.data = np.zeros((len(_COLUMNS), 0), dtype=np.int64)
        self._bind()
        self._grow(max(capacity, 16))

    def _bind(self) -> None:
        (self.ctx, self.spec, self.nblk, self.synced, self.final, self.gen, self.olen,
         self.share, self.drop) = self.data

    def _grow(self, new_cap: int) -> None:
        data = np.zeros((len(_COLUMNS), new_cap), dtype=np.int64)
        data[:, : self.capacity] = self.data
        self.data = data
        self._bind()
        # Hand out low slots first (pop from the end of a descending list).
        self._free.extend(range(new_cap - 1, self.capacity - 1, -1))
        self._free.sort(reverse=True)
        self.capacity = new_cap

    def alloc(self, final: int, olen: int) -> int:
        """A fresh slot with all counters zero except final and olen."""
        if not self._free:
            self._grow(self.capacity * 2)
        s = self._free.pop()
        self.final[s] = final
        self.olen[s] = olen
        return s

    def release(self, s: int) -> None:
        """Zero the slot's row and put it back on the free list."""
        self.data[:, s] = 0
        self._free.append(s)

    def copy_row(self, src: int, dst: int) -> None:
        """Make dst's counters equal src's (a forked sequence starts as its parent)."""
        self.data[:, dst] = self.data[:, src]

    @property
    def num_live(self) -> int:
        """Slots in use."""
        return self.capacity - len(self._free)

    def check_invariants(self, live: list[int]) -> None:
        """Raise AssertionError naming the slot if a counter is out of range (live = slots in use)."""
        free = set(self._free)
        assert len(free) == len(self._free), "a slot is listed twice on the free list"
        assert not free & set(live), f"slots {sorted(free & set(live))} are both live and free"
        assert len(free) + len(set(live)) == self.capacity, "slots leaked (neither live nor free)"
        lv = np.array(sorted(set(live)), dtype=np.int64)
        bad = lv[~((self.spec[lv] >= 0) & (self.spec[lv] <= self.ctx[lv]) & (self.ctx[lv] <= self.final[lv])
                   & (self.drop[lv] >= 0) & (self.drop[lv] <= self.nblk[lv]))]
        assert not bad.size, (f"slot {int(bad[0])}: spec={self.spec[bad[0]]} ctx={self.ctx[bad[0]]} "
                              f"final={self.final[bad[0]]} drop={self.drop[bad[0]]} nblk={self.nblk[bad[0]]}")
        fr = np.array(sorted(free), dtype=np.int64)
        dirty = fr[self.data[:, fr].any(axis=0)] if fr.size else fr
        assert not dirty.size, f"free slot {int(dirty[0])} has counters {self.data[:, dirty[0]].tolist()}"


@dataclass(slots=True, eq=False)
class SeqGroup:
    """One request while simulated: its sequences (ids for the cache, slots in the SeqTable) and times.

    order: FCFS rank (arrival order; ties keep the workload's order); the preemption victim is the
    running group with the largest (arrival_time, order).
    prefill_target: tokens the next prefill must hold (the prompt, or prompt + generated tokens when
    a preempted single sequence is recomputed); prefill_done: of those, tokens computed so far.
    output_len: output tokens wanted per sequence (after the too-long rule may have cut it).
    """

    spec: RequestSpec
    order: int
    output_len: int
    status: str = WAITING
    seq_ids: list[object] = field(default_factory=list)
    slots: list[int] = field(default_factory=list)
    prefill_target: int = 0
    prefill_done: int = 0
    decoding: bool = False
    hashes: tuple[int, ...] = ()
    extent: int = 0  # contiguous: reserved slots of its one extent
    first_token_s: float = float("nan")
    finish_s: float = float("nan")
    num_preemptions: int = 0
    peak_blocks: int = 0
    swapped_blocks: int = 0
    next_child: int = 0
    reason: str = ""
    simple: bool = True  # one sequence, no speculation: decoded by the vectorized path

    @property
    def key(self) -> tuple[float, int]:
        """Arrival order key (victim = largest)."""
        return (self.spec.arrival_time, self.order)

    @property
    def num_seqs(self) -> int:
        """Sequences this group runs at once after prefill (what max_num_seqs counts)."""
        return self.spec.num_seqs

    def new_seq_id(self) -> str:
        """A fresh cache id for one of this request's sequences: "<req_id>/<k>"."""
        k = self.next_child
        self.next_child += 1
        return f"{self.spec.req_id}/{k}"
