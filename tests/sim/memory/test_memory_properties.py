"""Property tests: long random op sequences against the paged and contiguous caches.

Paged (with and without prefix caching): a simulated KV memory receives every token write, so a
missing copy-on-write or a wrong prefix-cache hit shows up as a sequence reading another's tokens;
without prefix caching a reference model (abstract blocks shared by identity) predicts every count.
Contiguous (each placement): a slot-array model predicts holes, placement and admission verdicts.
Invariants are checked after every op. Runs in a few seconds (settings below).
"""

from __future__ import annotations

import itertools

import hypothesis.strategies as st
from hypothesis import HealthCheck, settings
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from sim.memory.contiguous_cache import ContigStatus, ContiguousKVCache
from sim.memory.paged_cache import AllocStatus, PagedKVCache
from sim.memory.prefix import token_block_hashes

SETTINGS = settings(max_examples=50, stateful_step_count=40, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])
TOKENS = st.lists(st.integers(0, 2), max_size=12)  # tiny alphabet: many equal prefixes


class PagedMachine(RuleBasedStateMachine):
    """Drives a PagedKVCache; subclasses fix prefix caching on or off."""

    caching = False

    @initialize(block_size=st.integers(1, 4), num_blocks=st.integers(1, 16),
                watermark=st.sampled_from([0.0, 0.1, 0.25]))
    def setup(self, block_size: int, num_blocks: int, watermark: float) -> None:
        self.B, self.N = block_size, num_blocks
        self.c = PagedKVCache(num_blocks, block_size, watermark=watermark, enable_prefix_caching=self.caching)
        self.tokens: dict[int, list[int]] = {}  # the true content of each sequence
        self.mem: dict[int, list[int | None]] = {}  # simulated KV memory: block -> slots
        self.history: list[list[int]] = []  # every content a sequence has had
        self.ids = itertools.count()
        # reference model (exact without caching): abstract blocks shared by identity
        self.model: dict[int, list[int | None]] = {}
        self.abstract = itertools.count()
        self.model_cows = 0

    # -- helpers --
    def _model_used(self) -> int:
        return len({b for bl in self.model.values() for b in bl if b is not None})

    def _model_refs(self, blk: int) -> int:
        return sum(bl.count(blk) for bl in self.model.values())

    def _write(self, seq: int, start: int) -> None:
        """Store tokens[start:] of seq into its blocks, as the model's forward pass would."""
        table = self.c.block_table(seq)
        for pos in range(start, len(self.tokens[seq])):
            b = table[pos // self.B]
            self.mem.setdefault(b, [None] * self.B)[pos % self.B] = self.tokens[seq][pos]

    def _hashes(self, toks: list[int]) -> tuple[int, ...]:
        return token_block_hashes(toks, self.B)

    # -- rules --
    @rule(toks=TOKENS)
    def allocate(self, toks: list[int]) -> None:
        self._allocate(toks)

    @precondition(lambda self: self.history)
    @rule(data=st.data(), tail=st.lists(st.integers(0, 2), max_size=3))
    def allocate_seen_prefix(self, data: st.DataObject, tail: list[int]) -> None:
        """Reuse a prefix of some earlier content: prefix-cache hits (and stale hashes) get exercised."""
        seen = data.draw(st.sampled_from(self.history))
        self._allocate(seen[:data.draw(st.integers(0, len(seen)))] + tail)

    def _allocate(self, toks: list[int]) -> None:
        seq = next(self.ids)
        need = -(-len(toks) // self.B)
        h = self._hashes(toks)
        status = self.c.can_allocate(len(toks), h)
        assert (status is AllocStatus.NEVER) == (self.N - need < self.c.watermark_blocks)
        ok = self.c.allocate(seq, len(toks), h)
        if status is AllocStatus.OK:
            assert ok, "can_allocate said OK but allocate failed"
        if not self.caching:
            free, wm = self.N - self._model_used(), self.c.watermark_blocks
            want = (AllocStatus.NEVER if self.N - need < wm else
                    AllocStatus.OK if free - need >= wm else AllocStatus.LATER)
            assert status is want
            assert ok == (need <= free)
        if not ok:
            assert not self.c.has_seq(seq)
            return
        self.tokens[seq] = list(toks)
        self.history.append(list(toks))
        hit_tokens = self.c.num_cached_tokens(seq)
        assert hit_tokens % self.B == 0 and hit_tokens <= len(toks)
        if not self.caching:
            assert hit_tokens == 0
        self._write(seq, hit_tokens)  # cached blocks already hold these tokens (checked by content)
        self.model[seq] = [next(self.abstract) for _ in range(need)]

    @precondition(lambda self: self.tokens)
    @rule(data=st.data(), toks=st.lists(st.integers(0, 2), min_size=1, max_size=6))
    def append(self, data: st.DataObject, toks: list[int]) -> None:
        self.append_tokens(data.draw(st.sampled_from(sorted(self.tokens))), toks)

    def append_tokens(self, seq: int, toks: list[int]) -> None:
        old = len(self.tokens[seq])
        new_toks = self.tokens[seq] + toks
        bl = self.model[seq]
        cow = bool(old % self.B) and self._model_refs(bl[-1]) > 1  # type: ignore[arg-type]
        need = -(-len(new_toks) // self.B) - len(bl) + cow
        if not self.caching:
            assert self.c.num_new_blocks_for_append(seq, len(toks)) == need
        can = self.c.can_append(seq, len(toks))
        res = self.c.append(seq, len(toks), self._hashes(new_toks))
        assert res.ok == can
        if not self.caching:
            assert res.ok == (need <= self.N - self._model_used())
            assert len(res.cows) == (cow if res.ok else 0)
        if not res.ok:
            assert res.cows == [] and self.c.num_tokens(seq) == old
            return
        assert len(res.cows) <= 1
        for src, dst in res.cows:  # the caller's block copy
            assert self.c.ref_count(dst) == 1
            self.mem[dst] = list(self.mem[src])
        self.tokens[seq] = new_toks
        self.history.append(new_toks)
        self._write(seq, old)
        if cow:
            bl[-1] = next(self.abstract)
            self.model_cows += 1
        bl.extend(next(self.abstract) for _ in range(-(-len(new_toks) // self.B) - len(bl)))

    @precondition(lambda self: self.tokens)
    @rule(data=st.data(), drafts=st.lists(st.integers(0, 2), min_size=1, max_size=4),
          fix=st.integers(0, 2))
    def speculate(self, data: st.DataObject, drafts: list[int], fix: int) -> None:
        """A speculative-decoding step: append drafts, roll back the rejected ones, append the fix."""
        seq = data.draw(st.sampled_from(sorted(self.tokens)))
        old = len(self.tokens[seq])
        self.append_tokens(seq, drafts)
        accepted = data.draw(st.integers(0, len(drafts) - 1))
        n = len(self.tokens[seq]) - (old + accepted)
        if n > 0:  # the drafts were appended (not out of blocks)
            self._rollback(seq, n)
        self.append_tokens(seq, [fix])

    @precondition(lambda self: self.tokens)
    @rule(data=st.data())
    def fork(self, data: st.DataObject) -> None:
        parent = data.draw(st.sampled_from(sorted(self.tokens)))
        child = next(self.ids)
        free = self.c.num_free_blocks
        self.c.fork(parent, child)
        assert self.c.num_free_blocks == free  # fork allocates nothing
        self.tokens[child] = list(self.tokens[parent])
        self.model[child] = list(self.model[parent])

    @precondition(lambda self: self.tokens)
    @rule(data=st.data())
    def free(self, data: st.DataObject) -> None:
        seq = data.draw(st.sampled_from(sorted(self.tokens)))
        self.c.free(seq)
        del self.tokens[seq], self.model[seq]

    @precondition(lambda self: self.tokens)
    @rule(data=st.data())
    def rollback(self, data: st.DataObject) -> None:
        seq = data.draw(st.sampled_from(sorted(self.tokens)))
        table = self.c.block_table(seq)
        dropped = sum(b == -1 for b in table)
        old = len(self.tokens[seq])
        # never uncover a window-dropped block (the cache refuses; tested elsewhere)
        lo = min(old, dropped * self.B)
        self._rollback(seq, old - data.draw(st.integers(lo, old)))

    def _rollback(self, seq: int, n: int) -> None:
        old = len(self.tokens[seq])
        used = self.c.num_used_blocks
        freed = self.c.rollback(seq, n)
        assert used - self.c.num_used_blocks == freed
        del self.tokens[seq][old - n:]
        del self.model[seq][-(-(old - n) // self.B):]

    @precondition(lambda self: self.tokens)
    @rule(data=st.data())
    def free_before(self, data: st.DataObject) -> None:
        seq = data.draw(st.sampled_from(sorted(self.tokens)))
        tok = data.draw(st.integers(0, len(self.tokens[seq])))
        self.c.free_blocks_before(seq, tok)
        bl = self.model[seq]
        for k in range(tok // self.B):
            bl[k] = None

    # -- checks after every op --
    @invariant()
    def consistent(self) -> None:
        if not hasattr(self, "c"):
            return
        self.c.check_invariants()
        for seq, toks in self.tokens.items():
            assert self.c.num_tokens(seq) == len(toks)
            table = self.c.block_table(seq)
            assert len(table) == len(self.model[seq])
            for k, b in enumerate(table):
                assert (b == -1) == (self.model[seq][k] is None)
                if b == -1:
                    continue
                stored = self.mem[b][:min(self.B, len(toks) - k * self.B)]
                assert stored == toks[k * self.B:(k + 1) * self.B], f"seq {seq} block {k} (#{b}) corrupted"
        if not self.caching:
            assert self.c.num_used_blocks == self._model_used()
            assert self.c.total_cows == self.model_cows
            assert self.c.num_logical_blocks() == sum(b is not None for bl in self.model.values() for b in bl)


class PagedNoCaching(PagedMachine):
    caching = False


class PagedPrefixCaching(PagedMachine):
    caching = True


class ContiguousMachine(RuleBasedStateMachine):
    """Drives a ContiguousKVCache with a slot-array model of ownership."""

    placement = "first_fit"

    @initialize(capacity=st.integers(1, 64))
    def setup(self, capacity: int) -> None:
        self.cap = capacity
        self.c = ContiguousKVCache(capacity, placement=self.placement, max_model_len=capacity)
        self.owner: list[int | None] = [None] * capacity
        self.ids = itertools.count()

    def runs(self) -> list[tuple[int, int]]:
        """Maximal free runs (start, length) of the model."""
        out, start = [], None
        for i, o in enumerate([*self.owner, -1]):
            if o is None and start is None:
                start = i
            elif o is not None and start is not None:
                out.append((start, i - start))
                start = None
        return out

    @rule(size=st.integers(1, 70))
    def allocate(self, size: int) -> None:
        seq = next(self.ids)
        status = self.c.can_allocate(size)
        fp = self.c.footprint(size)
        runs = self.runs()
        ok = self.c.allocate(seq, size)
        assert ok == (status is ContigStatus.OK)
        free = self.owner.count(None)
        if self.placement != "buddy":
            fitting = [r for r in runs if r[1] >= size]
            assert ok == bool(fitting)
            if status is ContigStatus.LATER_FRAGMENTED:
                assert free >= size and not fitting
            if status is ContigStatus.NEVER:
                assert size > self.cap
        if ok:
            off, length = self.c.allocated(seq)
            assert length == fp >= size
            assert all(o is None for o in self.owner[off:off + length]), "extent overlaps a live one"
            if self.placement == "first_fit":
                assert off == min(s for s, n in runs if n >= size)
            elif self.placement == "best_fit":
                assert (self.runs_len_at(runs, off), off) == min((n, s) for s, n in runs if n >= size)
            self.owner[off:off + length] = [seq] * length
        else:
            assert not self.c.has_seq(seq)
            if status is ContigStatus.LATER_FRAGMENTED:
                assert self.c.free_slots >= fp > self.c.largest_free_extent

    @staticmethod
    def runs_len_at(runs: list[tuple[int, int]], off: int) -> int:
        return next(n for s, n in runs if s <= off < s + n)

    @precondition(lambda self: any(o is not None for o in self.owner))
    @rule(data=st.data())
    def free(self, data: st.DataObject) -> None:
        seq = data.draw(st.sampled_from(sorted({o for o in self.owner if o is not None})))
        self.c.free(seq)
        self.owner = [None if o == seq else o for o in self.owner]

    @invariant()
    def consistent(self) -> None:
        if not hasattr(self, "c"):
            return
        self.c.check_invariants()
        free = self.owner.count(None)
        assert self.c.free_slots == free and self.c.used_slots == self.cap - free
        holes = self.c.holes()
        if self.placement == "buddy":  # free blocks tile exactly the model's free slots
            covered = sorted(i for s, n in holes for i in range(s, s + n))
            assert covered == [i for i, o in enumerate(self.owner) if o is None]
        else:
            assert holes == self.runs()
            for need in (1, 5, 17):
                assert self.c.external_fragmentation(need) == sum(n for _, n in holes if n < need)
        assert self.c.largest_free_extent == max((n for _, n in holes), default=0)


class FirstFit(ContiguousMachine):
    placement = "first_fit"


class BestFit(ContiguousMachine):
    placement = "best_fit"


class Buddy(ContiguousMachine):
    placement = "buddy"


TestPagedNoCaching = PagedNoCaching.TestCase
TestPagedPrefixCaching = PagedPrefixCaching.TestCase
TestContiguousFirstFit = FirstFit.TestCase
TestContiguousBestFit = BestFit.TestCase
TestContiguousBuddy = Buddy.TestCase
for _t in (TestPagedNoCaching, TestPagedPrefixCaching, TestContiguousFirstFit, TestContiguousBestFit,
           TestContiguousBuddy):
    _t.settings = SETTINGS
del _t
