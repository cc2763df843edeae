"""What one scheduler step decided: the batch (prefill chunks, decodes) and the memory events it caused
(copies, preemptions, swaps, rejections). The scheduler fills it, the engine times it, the lifecycle
applies it (sim.sched.lifecycle.complete_step)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from sim.sched.sequence import SeqGroup

_EMPTY = np.zeros(0, dtype=np.int64)


@dataclass(slots=True)
class SchedulerOutput:
    """One step's batch and the memory events scheduling it caused.

    prefills: (group, chunk tokens, tokens already in the cache before the chunk);
    num_simple / simple_slots: single-sequence decodes (the DecodeSet, first in decode_ctx, in
    simple_slots' order); decode_groups: the other decoding
    groups (several sequences and/or speculative drafts); decode_ctx / decode_q: context length
    (this step's tokens included) and query tokens per decoding sequence, simple ones first
    (decode_ctx None: only DecodeSet members decode and the array was not built, Scheduler.lazy_ctx);
    accepted: slot -> draft tokens accepted this step (speculative sequences);
    blocked: the head waiting group could not be admitted for memory (why: LATER/LATER_FRAGMENTED);
    head_need: what that head group needs (contiguous: slots; paged: blocks), 0 if nothing waits.
    decodes_stalled: a prefill-only step (scheduler policy vllm-v0): running sequences got no token.
    swap_out_s / swap_in_s: PCIe transfer times of this step's swaps (the engine decides how much of
    the swap-in is hidden behind the forward pass: SchedulerConfig.swap_prefetch).
    """

    prefills: list[tuple[SeqGroup, int, int]] = field(default_factory=list)
    num_simple: int = 0
    simple_slots: np.ndarray = field(default_factory=lambda: _EMPTY)
    decode_groups: list[SeqGroup] = field(default_factory=list)
    decode_ctx: np.ndarray | None = field(default_factory=lambda: _EMPTY)  # None: lazy (Scheduler.lazy_ctx)
    decode_q: np.ndarray | None = None
    accepted: dict[int, int] = field(default_factory=dict)
    preempted: list[SeqGroup] = field(default_factory=list)
    swapped_in: list[SeqGroup] = field(default_factory=list)
    rejected: list[SeqGroup] = field(default_factory=list)
    num_cows: int = 0
    swap_out_blocks: int = 0
    swap_in_blocks: int = 0
    swap_time_s: float = 0.0  # swap_out_s + swap_in_s
    swap_out_s: float = 0.0
    swap_in_s: float = 0.0
    swap_in_groups_s: list[float] = field(default_factory=list)  # per swapped-in group, in copy order
    swap_exposed_s: float = 0.0  # set by the engine: transfer time on the step's critical path
    swap_hidden: int = 0  # set by the engine: swapped-in groups whose copy the forward pass hid
    num_prefill_tokens: int = 0
    num_decode_tokens: int = 0
    blocked: str = ""
    head_need: int = 0
    decodes_stalled: bool = False
