"""The iteration-level (continuous-batching) scheduler: what runs in the next step.

Pure state change, no clock: given the waiting / running / swapped queues, the cache and the
budgets, `schedule()` decodes every running sequence first (preempting the latest arrivals when
blocks run out), then swaps groups back in, then admits waiting prefills FCFS while memory,
`max_num_seqs` and the token budget allow. `complete()` (sim.sched.lifecycle) applies the step's results.
"""

from __future__ import annotations

from bisect import insort
from collections import deque

import numpy as np

from sim.config import SchedulerConfig
from sim.request import RequestSpec
from sim.sched.decode_set import DecodeSet
from sim.sched.kv_ops import LATER, NEVER, OK, KVOps, cdiv
from sim.sched.sequence import RUNNING, SWAPPED, WAITING, SeqGroup
from sim.sched.step_output import SchedulerOutput
from sim.sched.swap import SwapSpace

_EMPTY = np.zeros(0, dtype=np.int64)


class Scheduler:
    """Queues and per-step decisions over one KV cache (paged or contiguous).

    Invariants (check_invariants): every live group is in exactly one queue matching its status;
    running groups are sorted by arrival key; num_running_seqs == sum of their num_seqs <=
    max_num_seqs; the cache holds exactly the running groups' sequences; SeqTable slots are live iff
    they belong to a live group; the swap pool holds exactly the swapped groups.
    """

    def __init__(self, ops: KVOps, config: SchedulerConfig, *, token_budget: int,
                 swap: SwapSpace | None = None, rng: np.random.Generator | None = None) -> None:
        self.ops = ops
        self.table = ops.table
        self.config = config
        self.token_budget = token_budget
        self.swap = swap
        self.rng = rng if rng is not None else np.random.default_rng(0)
        self.waiting: deque[SeqGroup] = deque()
        self.running: list[SeqGroup] = []  # sorted by key: running[-1] is the latest arrival
        self.swapped: deque[SeqGroup] = deque()
        self.num_running_seqs = 0
        self.slot_group: dict[int, SeqGroup] = {}
        self.dset = DecodeSet(self.table, ops.block_size, ops.window if ops.paged else None)
        self._window = ops.window if ops.paged else None
        self.pending_joins: list[int] = []  # swapped-in single sequences: join dset after the step
        # Kept incrementally (no per-step scan of the running list): the decoding groups that are not
        # single plain sequences, and the running slots outside the DecodeSet (for memory sampling).
        self._complex: dict[SeqGroup, None] = {}
        self._others: dict[int, None] = {}
        self._step_cows = 0
        self._order = 0
        self.num_swap_fallbacks = 0  # swap-mode preemptions done by recompute (host pool full)
        # While a step is in flight (between schedule and complete) an aborted group's slots are
        # still indexed by the step's arrays: their release waits for complete_step.
        self.in_flight = False
        self.deferred_release: list[int] = []
        self._chunked = config.chunked
        # vLLM v0 without chunked prefill runs a step of waiting prefills alone whenever one fits.
        self._prefill_first = config.policy == "vllm-v0" and not config.chunked
        # vLLM v0 swaps out a group of several sequences even in recompute mode; v1 never swaps.
        self._may_swap = config.policy != "vllm-v1"
        # Set by the engine when its latency model times decode-only steps from the DecodeSet's kept
        # sums: such steps then skip building the per-sequence context array (SchedulerOutput.decode_ctx
        # is None; DecodeSet.true_ctx() gives it when a step needs it after all).
        self.lazy_ctx = False

    # ---- queue entry --------------------------------------------------------------------------
    def new_group(self, spec: RequestSpec, output_len: int) -> SeqGroup:
        """A group for an arrived request (not queued yet)."""
        g = SeqGroup(spec=spec, order=self._order, output_len=output_len)
        self._order += 1
        g.simple = spec.num_seqs == 1 and spec.spec_k == 0
        g.prefill_target = spec.prompt_len
        return g

    def enqueue(self, g: SeqGroup) -> None:
        """Append an admitted-for-queueing group to the waiting queue (FCFS)."""
        g.status = WAITING
        self.waiting.append(g)

    def has_work(self) -> bool:
        """True if any group waits, runs or is swapped out."""
        return bool(self.waiting or self.running or self.swapped)

    def other_slots(self) -> np.ndarray:
        """Running slots outside the DecodeSet (prefilling, several sequences, drafts), for sampling."""
        o = self._others
        return np.fromiter(o, dtype=np.int64, count=len(o)) if o else _EMPTY

    def adopt_slot(self, g: SeqGroup, slot: int) -> None:
        """A new sequence slot of a running group (a fork)."""
        self.slot_group[slot] = g
        self._others[slot] = None

    def drop_slot(self, slot: int) -> None:
        """Forget a running group's slot (its sequence ended or was pruned)."""
        self.slot_group.pop(slot, None)
        self._others.pop(slot, None)

    def start_decoding(self, g: SeqGroup) -> None:
        """The group's prefill is complete: a plain single sequence joins the DecodeSet after this step
        (join_decodes); any other group decodes through the per-group path."""
        g.decoding = True
        if g.simple:
            self.pending_joins.append(g.slots[0])
        else:
            self._complex[g] = None

    def join_decodes(self) -> None:
        """Between steps: move pending single sequences (fresh decoders, swap-ins) into the DecodeSet."""
        for slot in self.pending_joins:
            g = self.slot_group.get(slot)
            if g is not None and g.status == RUNNING and g.slots and g.slots[0] == slot:
                self.dset.join(slot)
                self._others.pop(slot, None)
        self.pending_joins.clear()

    # ---- the step -----------------------------------------------------------------------------
    def schedule(self) -> SchedulerOutput:
        """Decide and allocate the next step (see the module doc)."""
        out = SchedulerOutput()
        if self._prefill_first and self.waiting and not self.swapped:
            self._schedule_admissions(out, self.token_budget)
            if out.prefills:  # a prefill-only step: the running sequences wait (vLLM v0)
                out.decodes_stalled = True
                return out
        budget = self.token_budget - self._schedule_decodes(out)
        if self._chunked:
            budget = self._schedule_running_prefills(out, budget)
        if not out.preempted:
            if self.swapped:
                self._schedule_swap_in(out)
            if self.waiting and not self.swapped and not self._prefill_first:
                self._schedule_admissions(out, budget)
        if self.waiting and not out.head_need:
            out.head_need = self._need(self.waiting[0])
        return out

    def _complex_need(self) -> int:
        """Free blocks the multi-sequence / speculative decodes take this step (paged)."""
        return sum(self.ops.decode_need(g) for g in self._complex)

    def _append_simple(self, slot: int, n: int) -> None:
        res = self.ops.cache.append(self.slot_group[slot].seq_ids[0], n)
        if not res.ok:
            raise RuntimeError(f"append to {self.slot_group[slot].seq_ids[0]!r} failed after counting free blocks")
        if res.cows:
            self._step_cows += len(res.cows)

    def _release_simple(self, slot: int, first_needed: int, stored: int) -> None:
        g = self.slot_group[slot]
        t = self.table
        g.peak_blocks = max(g.peak_blocks, int(t.nblk[slot] - t.drop[slot]))  # the most it held, just before
        self.ops.release_window(slot, g.seq_ids[0], first_needed, stored)

    def _schedule_decodes(self, out: SchedulerOutput) -> int:
        """Append this step's token slots to every decoding sequence; returns tokens used."""
        ops, dset = self.ops, self.dset
        if self._window is not None:  # release blocks out of the window before counting what the step needs
            dset.release_due(self._release_simple)
            for g in self._complex:
                ops.release_group_window(g)
        if ops.paged:
            cache = ops.cache
            # The semantics' headroom (vLLM v0: one free block at each sequence's turn) applies when
            # sequences decode.
            head = cache.append_headroom if (len(dset) or self._complex) else 0
            while True:
                need = dset.crossing_count() + (self._complex_need() if self._complex else 0) + head
                if need <= cache.num_free_blocks or not self.running:
                    break
                self._preempt(self.running[-1], out)
        self._step_cows = 0
        lazy = self.lazy_ctx and not self._complex
        c1 = dset.advance(self._append_simple, want_ctx=not lazy)
        out.num_cows += self._step_cows
        out.simple_slots = dset.slots()
        out.num_simple = len(dset)
        if not self._complex:  # the common case: nothing but single plain sequences
            out.decode_ctx = c1  # None if lazy: the engine times the step from the DecodeSet's sums
            out.num_decode_tokens = out.num_simple
            return out.num_simple
        assert c1 is not None
        cc: list[int] = []
        cq: list[int] = []
        for g in self._complex:
            out.num_cows += ops.decode_group(g, self.rng, out.accepted, cc, cq)
        out.decode_groups = list(self._complex)
        q = np.array(cq, dtype=np.int64)
        out.decode_ctx = np.concatenate([c1, np.array(cc, dtype=np.int64)])
        if q.size and q.max() > 1:
            out.decode_q = np.concatenate([np.ones(c1.size, dtype=np.int64), q])
        out.num_decode_tokens = out.num_simple + int(q.sum())
        return out.num_decode_tokens

    def _schedule_running_prefills(self, out: SchedulerOutput, budget: int) -> int:
        """Chunked prefill: continue admitted prompts with the budget left after decodes."""
        if not self._chunked:
            return budget  # without chunking every prefill completes in the step that admits it
        for g in self.running:
            if g.decoding or g.prefill_done >= g.prefill_target:
                continue
            if budget <= 0:
                break
            chunk = min(g.prefill_target - g.prefill_done, budget)
            w = self._window
            if w is not None and g.prefill_done - w + 1 > 0:  # the chunk's first query needs only the window
                s0 = g.slots[0]
                g.peak_blocks = max(g.peak_blocks, self.ops.group_blocks(g))
                self.ops.release_window(s0, g.seq_ids[0], g.prefill_done - w + 1, int(self.table.synced[s0]))
            self._add_prefill(out, g, chunk)
            budget -= chunk
        return budget

    def _add_prefill(self, out: SchedulerOutput, g: SeqGroup, chunk: int) -> None:
        out.prefills.append((g, chunk, g.prefill_done))
        g.prefill_done += chunk
        self.table.ctx[g.slots[0]] = g.prefill_done
        out.num_prefill_tokens += chunk

    def _schedule_swap_in(self, out: SchedulerOutput) -> None:
        ops = self.ops
        while self.swapped and ops.paged:
            g = self.swapped[0]
            need = ops.restore_blocks(g)
            if ops.cache.num_free_blocks - need < ops.cache.watermark_blocks:
                break
            if self.num_running_seqs + g.num_seqs > self.config.max_num_seqs:
                break
            self.swapped.popleft()
            got = ops.restore(g)
            assert self.swap is not None
            dt = self.swap.swap_in(g.order, got)
            out.swap_time_s += dt
            out.swap_in_s += dt
            out.swap_in_groups_s.append(dt)
            out.swap_in_blocks += got
            out.swapped_in.append(g)
            self._add_running(g)

    def _schedule_admissions(self, out: SchedulerOutput, budget: int) -> None:
        ops, chunked = self.ops, self._chunked
        while self.waiting:
            g = self.waiting[0]
            if self.num_running_seqs + g.num_seqs > self.config.max_num_seqs:
                break
            cached = min(ops.prefix_hit_tokens(g), g.prefill_target - 1)
            todo = g.prefill_target - cached
            if chunked:
                if budget <= 0:
                    break
            elif todo > budget and not (todo > self.token_budget and not out.prefills):
                # A recomputed prompt longer than the whole budget runs as a step's first prefill.
                break
            if ops.paged and not g.hashes and (ops.cache.num_free_blocks - cdiv(g.prefill_target, ops.block_size)
                                               < ops.cache.watermark_blocks):
                verdict = LATER  # the common blocked case, without a call into the cache
            else:
                verdict = ops.can_admit(g)
            if verdict == NEVER:
                self.waiting.popleft()
                g.reason = "can never be admitted: " + (ops.never_fits(g) or "prompt exceeds the pool")
                out.rejected.append(g)
                continue
            if verdict != OK:
                out.blocked = verdict
                out.head_need = self._need(g)
                break
            self.waiting.popleft()
            if not g.slots:
                g.slots.append(self.table.alloc(g.spec.prompt_len + g.output_len - 1, g.output_len))
                g.seq_ids.append(g.new_seq_id())
            hit = ops.admit(g)
            g.prefill_done = min(hit, g.prefill_target - 1)
            self.table.ctx[g.slots[0]] = g.prefill_done
            self._add_running(g)
            chunk = g.prefill_target - g.prefill_done
            if chunked:
                chunk = min(chunk, budget)
            self._add_prefill(out, g, chunk)
            budget -= chunk

    def _need(self, g: SeqGroup) -> int:
        if self.ops.paged:
            return cdiv(g.prefill_target, self.ops.block_size)
        return self.ops.reservation(g)

    # ---- queue moves --------------------------------------------------------------------------
    def _add_running(self, g: SeqGroup) -> None:
        g.status = RUNNING
        insort(self.running, g, key=lambda x: x.key)
        self.num_running_seqs += g.num_seqs
        for s in g.slots:
            self.adopt_slot(g, s)
        if g.decoding:  # swapped back in
            self.start_decoding(g)

    def remove_running(self, g: SeqGroup) -> None:
        """Take a group out of the running list (finish, abort, preemption); counters become exact."""
        if g.simple and g.slots and g.slots[0] in self.dset:
            self.dset.leave(g.slots[0])
        self.running.remove(g)
        self.num_running_seqs -= g.num_seqs
        for s in g.slots:
            self._others.pop(s, None)
        self._complex.pop(g, None)

    def _preempt(self, g: SeqGroup, out: SchedulerOutput) -> None:
        """Preempt a whole group: swap it out (swap mode, or several sequences in either mode, as
        vLLM v0), or free it and requeue it at the head of the queue (recompute)."""
        ops, t = self.ops, self.table
        self.remove_running(g)
        g.num_preemptions += 1
        out.preempted.append(g)
        g.peak_blocks = max(g.peak_blocks, ops.group_blocks(g))
        # vLLM v0 recomputes only single sequences: a group of several is swapped in either mode.
        if g.decoding and self._may_swap and (self.config.preemption_mode == "swap" or len(g.slots) > 1):
            blocks = ops.cache.unique_blocks(g.seq_ids)
            assert self.swap is not None
            if self.swap.can_swap_out(blocks):
                for s, sid in zip(g.slots, g.seq_ids, strict=True):
                    ops.sync(s, sid)
                ops.free_group(g)
                dt = self.swap.swap_out(g.order, blocks)
                out.swap_time_s += dt
                out.swap_out_s += dt
                out.swap_out_blocks += blocks
                g.status = SWAPPED
                self.swapped.appendleft(g)
                return
            self.num_swap_fallbacks += 1
        ops.free_group(g)
        # Recompute: a single sequence keeps its output (prompt + generated tokens are prefilled
        # again); a group of several sequences (the host pool was full) restarts from its prompt.
        while len(g.slots) > 1:
            s = g.slots.pop()
            g.seq_ids.pop()
            self.drop_slot(s)
            t.release(s)
        s0 = g.slots[0]
        gen = int(t.gen[s0]) if g.num_seqs == 1 else 0
        t.gen[s0] = gen
        t.ctx[s0] = t.nblk[s0] = t.synced[s0] = t.spec[s0] = t.drop[s0] = 0
        g.prefill_target = g.spec.prompt_len + gen
        g.prefill_done = 0
        g.decoding = False
        g.status = WAITING
        self.waiting.appendleft(g)

    # ---- checking -----------------------------------------------------------------------------
    def live_slots(self) -> list[int]:
        """SeqTable slots owned by live groups."""
        out: list[int] = []
        for q in (self.waiting, self.running, self.swapped):
            for g in q:
                out.extend(g.slots)
        return out

    def check_invariants(self) -> None:
        """Raise AssertionError naming the request if an invariant (class doc) is broken."""
        self.dset.check_invariants()  # also makes the table's counters exact
        for slot in self.dset.members:
            g = self.slot_group[slot]
            assert g.status == RUNNING and g.decoding and g.simple, f"request {g.spec.req_id!r} in DecodeSet"
        run_slots = {x for g in self.running for x in g.slots}
        assert set(self._others) == run_slots - set(self.dset.members), "other-slot index drifted"
        assert list(self._complex) == [g for g in self._complex if g.status == RUNNING]
        assert set(self._complex) == {g for g in self.running if g.decoding and not g.simple}, \
            "complex-group index drifted"
        for x in run_slots:
            assert self.slot_group[x].status == RUNNING, f"slot {x} maps to a non-running group"
        for q, st in ((self.waiting, WAITING), (self.running, RUNNING), (self.swapped, SWAPPED)):
            for g in q:
                assert g.status == st, f"request {g.spec.req_id!r}: status {g.status} but queued as {st}"
        keys = [g.key for g in self.running]
        assert keys == sorted(keys), "running groups not sorted by arrival"
        n = sum(g.num_seqs for g in self.running)
        assert n == self.num_running_seqs <= self.config.max_num_seqs, \
            f"running sequences {n} (counter {self.num_running_seqs}, max {self.config.max_num_seqs})"
        ids = {sid for g in self.running for sid in (g.seq_ids if self.ops.paged else g.seq_ids[:1])}
        assert len(ids) == self.ops.cache.num_seqs, \
            f"cache holds {self.ops.cache.num_seqs} sequences, running groups {len(ids)}"
        for sid in ids:
            assert self.ops.cache.has_seq(sid), f"running sequence {sid!r} not in the cache"
        self.table.check_invariants(self.live_slots())
        if self.ops.paged:
            b = self.ops.block_size
            for g in self.running:
                for s, sid in zip(g.slots, g.seq_ids, strict=True):
                    bt = self.ops.cache.block_table(sid)
                    assert self.table.nblk[s] == len(bt), f"seq {sid!r}: nblk {self.table.nblk[s]} != cache table length"
                    assert self.table.drop[s] == bt.count(-1), \
                        f"seq {sid!r}: drop {self.table.drop[s]} != {bt.count(-1)} released blocks"
                    assert self.table.ctx[s] - self.table.synced[s] <= b, f"seq {sid!r}: lag beyond a block"
        if self.swap is not None:
            self.swap.check_invariants()
            held = sum(self.swap.held(g.order) for g in self.swapped)
            assert held == self.swap.used_blocks, "swap pool holds blocks of non-swapped groups"
