"""Single-sequence decodes advanced lazily: the common case costs O(1) per step plus O(1) per event.

Every member decodes one token per step, so its counters are `stored value + steps since the last
mark`. Only block-boundary crossings (a new block every block_size tokens), sliding-window releases
(a leading block every block_size tokens once past the window) and finishes are events, found in
dicts keyed by the step they happen in. The per-step context array the latency model needs
is one vector add; memory sums are kept incrementally.
"""

from __future__ import annotations

from collections.abc import Callable
from itertools import count

import numpy as np

from sim.sched.sequence import SeqTable

_EMPTY = np.zeros(0, dtype=np.int64)


class DecodeSet:
    """The running single sequences past their prefill (no drafts, no siblings).

    For a member slot s: true ctx = table.ctx[s] + (sched - ctx_mark); true gen = table.gen[s] +
    (done - gen_mark); nblk, synced and share in the table are exact. `sched` counts scheduled steps,
    `done` completed ones (sched == done + 1 while a step is in flight). Members join only between
    steps (so they decode in every step counted since they joined).
    Invariants (check_invariants): sums equal the members' true values; each member has one live
    crossing event (paged), one release event (paged with a window) and one finish event, at future
    steps.
    """

    def __init__(self, table: SeqTable, block_size: int, window: int | None = None) -> None:
        self.t = table
        self.b = block_size  # 0: contiguous, no crossings
        self.w = window if block_size else None  # paged sliding window: release events
        self.sched = 0
        self.done = 0
        self.ctx_mark = 0
        self.gen_mark = 0
        self.members: dict[int, int] = {}  # slot -> epoch (a re-joined slot gets a new epoch)
        self._epochs = count()
        self._cross: dict[int, list[tuple[int, int]]] = {}
        self._fin: dict[int, list[tuple[int, int]]] = {}
        self._rel: dict[int, list[tuple[int, int]]] = {}
        self._slots = _EMPTY
        self._base = _EMPTY
        self._stale = False
        self.sum_ctx = 0  # of table.ctx (stored values), true sum adds n * (sched - ctx_mark)
        self.sum_alloc = 0  # paged: nblk * b; contiguous: share
        self.sum_capf = 0  # sum of min(alloc, final)
        self.sum_drop = 0  # paged window: blocks released (live sums subtract sum_drop * b)

    def __len__(self) -> int:
        return len(self.members)

    def __contains__(self, slot: int) -> bool:
        return slot in self.members

    # ---- lazy counters --------------------------------------------------------------------------
    def slots(self) -> np.ndarray:
        """Member slots (insertion order) as an array."""
        if self._stale:
            self._slots = np.fromiter(self.members, dtype=np.int64, count=len(self.members))
            self._base = self.t.ctx[self._slots] - self.ctx_mark
            self._stale = False
        return self._slots

    def true_ctx(self) -> np.ndarray:
        """The members' true ctx (slots() order)."""
        s = self.slots()
        return self.t.ctx[s] + (self.sched - self.ctx_mark) if s.size else _EMPTY

    def materialize(self) -> None:
        """Write the members' true ctx and gen into the table (before any member changes)."""
        dc, dg = self.sched - self.ctx_mark, self.done - self.gen_mark
        if self.members and (dc or dg):
            s = self.slots()
            if dc:
                self.t.ctx[s] += dc
                self.sum_ctx += dc * len(self.members)  # _base = ctx - ctx_mark is unchanged
            if dg:
                self.t.gen[s] += dg
        self.ctx_mark, self.gen_mark = self.sched, self.done

    def _alloc_capf(self, s: int) -> tuple[int, int]:
        t = self.t
        alloc = int(t.nblk[s]) * self.b if self.b else int(t.share[s])
        return alloc, min(alloc, int(t.final[s]))

    def join(self, s: int) -> None:
        """Add a slot whose table counters are exact; it decodes from the next step on."""
        assert self.sched == self.done, "members join only between steps"
        self.materialize()
        t = self.t
        e = next(self._epochs)
        self.members[s] = e
        self._stale = True
        self.sum_ctx += int(t.ctx[s])
        a, c = self._alloc_capf(s)
        self.sum_alloc += a
        self.sum_capf += c
        ctx, gen = int(t.ctx[s]), int(t.gen[s])
        if self.b:  # the step whose append finds the last block full
            self._cross.setdefault(int(t.nblk[s]) * self.b - ctx + self.sched + 1, []).append((s, e))
        self._fin.setdefault(int(t.olen[s]) - gen + self.done, []).append((s, e))
        if self.w is not None:  # the first step whose query leaves block drop+1 behind (at least the next)
            d = int(t.drop[s])
            self.sum_drop += d
            j = self.w + (d + 1) * self.b - ctx
            self._rel.setdefault(self.sched + max(1, j), []).append((s, e))

    def leave(self, s: int) -> None:
        """Remove a member; its table counters become exact."""
        self.materialize()
        e = self.members.pop(s)
        self._stale = True
        t = self.t
        if self.b:  # drop its crossing event now, so crossing_count needs no liveness filter
            self._cross[int(t.nblk[s]) * self.b - int(t.ctx[s]) + self.sched + 1].remove((s, e))
        self.sum_ctx -= int(t.ctx[s])
        a, c = self._alloc_capf(s)
        self.sum_alloc -= a
        self.sum_capf -= c
        if self.w is not None:
            self.sum_drop -= int(self.t.drop[s])

    # ---- a step -------------------------------------------------------------------------------
    def release_due(self, release: Callable[[int, int, int], None]) -> None:
        """Sliding window, before the next step is scheduled: members whose query in that step (at
        position ctx - 1, ctx counting its token) leaves a whole block behind call
        `release(slot, first needed token, tokens stored before the step)`, which must set their
        table `drop` (KVOps.release_window); each gets its next release event."""
        d = self.sched + 1
        lst = self._rel.pop(d, None)
        if not lst:
            return
        t, b, w, members = self.t, self.b, self.w, self.members
        assert w is not None
        ctx, drop = t.ctx, t.drop
        off = d - self.ctx_mark
        for s, e in lst:
            if members.get(s) != e:
                continue
            c = ctx.item(s) + off  # true ctx in step d
            old = drop.item(s)
            if (c - w) // b > old:
                release(s, c - w, c - 1)
                self.sum_drop += drop.item(s) - old
            self._rel.setdefault(d + w + (drop.item(s) + 1) * b - c, []).append((s, e))

    def crossing_count(self) -> int:
        """Members whose append in the next scheduled step needs a new block."""
        lst = self._cross.get(self.sched + 1)
        return len(lst) if lst else 0  # leave() removes a member's crossing event

    def advance(self, append: Callable[[int, int], None], *, want_ctx: bool = True) -> np.ndarray | None:
        """Schedule one step: every member appends a token; crossing members get a block through
        `append(slot, tokens to report)`. Returns the members' context lengths after the append, or
        None with want_ctx=False (true_ctx() gives them until the next step; the sums are kept anyway)."""
        self.sched = d = self.sched + 1
        lst = self._cross.pop(d, None)
        if lst:
            t, b, members = self.t, self.b, self.members
            ctx, synced, nblk, final = t.ctx, t.synced, t.nblk, t.final
            off = d - self.ctx_mark
            nxt = self._cross.setdefault(d + b, [])
            for s, e in lst:
                if members.get(s) != e:
                    continue
                true_ctx = ctx.item(s) + off
                append(s, true_ctx - synced.item(s))
                synced[s] = true_ctx
                nb, fin = nblk.item(s), final.item(s)
                nblk[s] = nb + 1
                self.sum_alloc += b
                self.sum_capf += min((nb + 1) * b, fin) - min(nb * b, fin)
                nxt.append((s, e))
        if not want_ctx:
            return None
        if not self.members:
            return _EMPTY
        if self._stale:
            self.slots()
        return self._base + d

    def finishing(self) -> list[int]:
        """Mark the in-flight step done; returns members whose last token it produced."""
        self.done += 1
        lst = self._fin.pop(self.done, None)
        if not lst:
            return []
        return [s for s, e in lst if self.members.get(s) == e]

    # ---- sums and checks ----------------------------------------------------------------------
    def true_sum_ctx(self) -> int:
        """Sum of the members' true ctx."""
        return self.sum_ctx + (self.sched - self.ctx_mark) * len(self.members)

    def check_invariants(self) -> None:
        """Raise AssertionError if the kept sums or events disagree with the members."""
        self.materialize()
        s = self.slots()
        t = self.t
        alloc = t.nblk[s] * self.b if self.b else t.share[s]
        assert self.sum_ctx == int(t.ctx[s].sum()), f"sum_ctx {self.sum_ctx} != {int(t.ctx[s].sum())}"
        assert self.sum_alloc == int(alloc.sum()), "sum_alloc drifted"
        assert self.sum_capf == int(np.minimum(alloc, t.final[s]).sum()), "sum_capf drifted"
        if self.w is not None:
            assert self.sum_drop == int(t.drop[s].sum()), f"sum_drop {self.sum_drop} != {int(t.drop[s].sum())}"
            rels = {x for k, v in self._rel.items() if k > self.sched for x in v}
            for slot, e in self.members.items():
                assert (slot, e) in rels, f"member slot {slot} has no window-release event"
        fins = {x for k, v in self._fin.items() if k > self.done for x in v}
        crosses = {x for k, v in self._cross.items() if k > self.sched for x in v}
        assert all(self.members.get(x[0]) == x[1] for v in self._cross.values() for x in v), "stale crossing event"
        assert sum(map(len, self._cross.values())) == (len(self.members) if self.b else 0), "crossing events drifted"
        for slot, e in self.members.items():
            assert (slot, e) in fins, f"member slot {slot} has no finish event"
            assert not self.b or (slot, e) in crosses, f"member slot {slot} has no crossing event"
            assert t.gen[slot] < t.olen[slot], f"member slot {slot} is past its output length"
