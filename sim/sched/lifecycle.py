"""Request lifecycle transitions after a step: first tokens, forks, beam selection, speculative
rollback, finishing and freeing; plus arrival checks (the stated rejection rules) and aborts.

`Scheduler.schedule()` allocates a step; `complete_step()` applies what the forward pass produced.
Single-sequence decodes advance in one vectorized update; only sequences that finish take Python work.
"""

from __future__ import annotations

import math

import numpy as np

from sim.request import RequestSpec, SpecError
from sim.sched.scheduler import Scheduler, SchedulerOutput
from sim.sched.sequence import ABORTED, FINISHED, REJECTED, RUNNING, SWAPPED, WAITING, SeqGroup


def admit_request(s: Scheduler, spec: RequestSpec, *, max_model_len: int) -> SeqGroup:
    """Make a group for an arriving request and queue it, or mark it REJECTED by the stated rules.

    Rules, in order: prompt + output > max_model_len -> the scheduler's too_long rule (reject,
    truncate the output, or raise SpecError); more sequences than max_num_seqs -> reject; without
    chunked prefill a prompt longer than the token budget -> reject; a group that could not reach
    its final length alone in an empty cache (paged: blocks beyond num_blocks - watermark;
    contiguous: a reservation larger than the pool) -> reject. Rejected groups get a reason.
    """
    out_len = spec.output_len
    reason = ""
    if spec.total_len > max_model_len:
        rule = s.config.too_long
        msg = (f"prompt_len + output_len = {spec.total_len} exceeds max_model_len = {max_model_len} "
               f"(valid: <= {max_model_len})")
        if rule == "error":
            raise SpecError(f"request {spec.req_id!r}: {msg}")
        if rule == "truncate" and spec.prompt_len < max_model_len:
            out_len = max_model_len - spec.prompt_len
        else:
            reason = msg
    g = s.new_group(spec, out_len)
    if out_len != spec.output_len:
        g.reason = f"output_len truncated from {spec.output_len} to {out_len} (max_model_len)"
    if not reason and spec.num_seqs > s.config.max_num_seqs:
        reason = (f"needs {spec.num_seqs} sequences (n/beam_width) but max_num_seqs = "
                  f"{s.config.max_num_seqs}")
    if not reason and spec.num_seqs > 1 and getattr(s.ops.cache, "semantics", "") == "vllm-v1":
        reason = ("n > 1 / beam search under cache semantics vllm-v1: vLLM v1 runs each sample as its "
                  "own request (no fork, no copy-on-write); not modelled")
    if not reason and not s.config.chunked and spec.prompt_len > s.token_budget:
        reason = (f"prompt_len = {spec.prompt_len} exceeds max_num_batched_tokens = {s.token_budget} "
                  f"without chunked prefill")
    if not reason:
        why = s.ops.never_fits(g)
        if why:
            reason = "can never fit: " + why
    if reason:
        g.status = REJECTED
        g.reason = reason
        return g
    if s.ops.paged and s.ops.cache.enable_prefix_caching and spec.prefix_hashes:
        from sim.memory.prefix import block_hashes

        g.hashes = block_hashes(spec, s.ops.block_size)
    s.enqueue(g)
    return g


def complete_step(s: Scheduler, out: SchedulerOutput, now: float) -> list[SeqGroup]:
    """Apply a finished step at time `now`; returns the groups that finished in it."""
    s.in_flight = False
    # Members of the DecodeSet whose last token this step produced (their counters are lazy).
    done = [] if out.decodes_stalled else [s.slot_group[slot] for slot in s.dset.finishing()]
    if s.deferred_release:
        for slot in s.deferred_release:
            s.table.release(slot)
        s.deferred_release.clear()
    if out.prefills:
        gen = s.table.gen
        for g, _chunk, _before in out.prefills:
            if g.status != RUNNING or g.prefill_done < g.prefill_target:
                continue
            _first_token(s, g, now)
            if gen[g.slots[0]] >= g.output_len:
                done.append(g)
    for g in out.decode_groups:
        if g.status == RUNNING and _advance_group(s, g, out):
            done.append(g)
    for g in done:
        if g.status == RUNNING:
            finish_group(s, g, now, FINISHED)
    if s.pending_joins:
        s.join_decodes()  # after the finishes: a group done at its prefill never joins
    return done


def _first_token(s: Scheduler, g: SeqGroup, now: float) -> None:
    """The prefill produced a token: start decoding; a fresh group forks its other sequences."""
    t = s.table
    s0 = g.slots[0]
    if math.isnan(g.first_token_s):
        g.first_token_s = now
    t.gen[s0] += 1
    if g.num_seqs > 1 and len(g.slots) == 1:
        for _ in range(g.num_seqs - 1):
            slot, _cid = s.ops.fork(g, s0, g.seq_ids[0])
            s.adopt_slot(g, slot)
    s.start_decoding(g)
    _update_peak(s, g)


def _advance_group(s: Scheduler, g: SeqGroup, out: SchedulerOutput) -> bool:
    """Post-step update of a multi-sequence or speculative group; True if the group finished."""
    t, ops = s.table, s.ops
    for slot, sid in zip(g.slots, g.seq_ids, strict=True):
        a = out.accepted.get(slot)
        if a is None:
            t.gen[slot] += 1
        else:
            ops.rollback(slot, sid, int(t.spec[slot]))
            t.spec[slot] = 0
            t.gen[slot] += a + 1
    _update_peak(s, g)
    if g.spec.beam_width > 1:
        if t.gen[g.slots[0]] >= g.output_len:
            return True
        _select_beams(s, g)
        return False
    # Parallel samples: a sequence that reached its length is freed now (paged); the group finishes
    # with its last sequence. Contiguous: its share of the extent stays reserved until then.
    i = 0
    while i < len(g.slots):
        slot = g.slots[i]
        if t.gen[slot] >= t.olen[slot] and t.final[slot] > 0:
            if len(g.slots) == 1 or all(t.gen[x] >= t.olen[x] for x in g.slots):
                return True
            if ops.paged:
                s.drop_slot(slot)
                ops.drop_seq(g, i)
                continue
            t.ctx[slot] = t.final[slot] = t.gen[slot] = 0  # a dead share: internal fragmentation
        i += 1
    return all(t.final[x] == 0 or t.gen[x] >= t.olen[x] for x in g.slots)


def _select_beams(s: Scheduler, g: SeqGroup) -> None:
    """Keep k beams. After gen tokens, each new beam descends from a uniformly drawn current beam with
    probability beam_switch_prob * h / (h + gen), else continues its own parent. Parents left without
    a child are freed (pruned); a parent with c children forks c - 1 copies sharing all its blocks
    (the next append copies the shared partial last block)."""
    k = len(g.slots)
    rng, cfg = s.rng, s.config
    h = cfg.beam_switch_halflife
    switch = cfg.beam_switch_prob * h / (h + float(s.table.gen[g.slots[0]]))
    parents = np.where(rng.random(k) < switch, rng.integers(0, k, size=k), np.arange(k))
    children = np.bincount(parents, minlength=k)
    if children.max() == 1:
        return
    ops = s.ops
    if not ops.paged:
        return  # every beam owns its region of the extent: a fork is a copy within it
    forks = [(g.slots[i], g.seq_ids[i], int(children[i]) - 1) for i in range(k) if children[i] > 1]
    for i in sorted(np.flatnonzero(children == 0).tolist(), reverse=True):
        s.drop_slot(g.slots[i])
        ops.drop_seq(g, i)
    for slot, sid, c in forks:
        for _ in range(c):
            child, _cid = ops.fork(g, slot, sid)
            s.adopt_slot(g, child)


def _update_peak(s: Scheduler, g: SeqGroup) -> None:
    if s.ops.paged:
        g.peak_blocks = max(g.peak_blocks, s.ops.group_blocks(g))


def finish_group(s: Scheduler, g: SeqGroup, now: float, status: str, reason: str = "") -> None:
    """End a live group (finished or aborted): free its memory at once and drop it from its queue."""
    t, ops = s.table, s.ops
    if g.status == RUNNING:
        if g.simple and ops.paged:
            g.peak_blocks = max(g.peak_blocks, int(t.nblk[g.slots[0]] - t.drop[g.slots[0]]))
        ops.free_group(g)
        s.remove_running(g)
    elif g.status == WAITING:
        s.waiting.remove(g)
    elif g.status == SWAPPED:
        s.swapped.remove(g)
        assert s.swap is not None
        s.swap.discard(g.order)
    else:
        raise ValueError(f"request {g.spec.req_id!r}: cannot end a group in state {g.status}")
    for slot in g.slots:
        s.drop_slot(slot)
        if s.in_flight:
            s.deferred_release.append(slot)
        else:
            t.release(slot)
    g.slots.clear()
    g.status = status
    g.finish_s = now
    if reason:
        g.reason = reason


def abort_group(s: Scheduler, g: SeqGroup, now: float) -> bool:
    """Client cancel: a live group is ended at once (memory freed now); False if already done."""
    if g.status not in (WAITING, RUNNING, SWAPPED):
        return False
    finish_group(s, g, now, ABORTED, f"cancelled at {now:.6g} s (cancel_time after arrival)")
    return True
