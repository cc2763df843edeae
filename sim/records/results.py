"""Result records of a simulation run: per request, per scheduler step, memory samples.

This module is the contract between the engine (which fills these) and analysis/ (which turns them
into pandas DataFrames with `dataclasses.fields` / `asdict`). Plain slotted dataclasses: no pandas here.
Memory quantities are in token slots of the KV pool; time in simulated seconds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# The summary keys every run produces (analysis writes them as summary.csv columns; keep stable).
SUMMARY_KEYS: tuple[str, ...] = (
    "system", "block_size", "num_requests", "token_states_pct", "reserved_pct", "internal_frag_pct",
    "external_frag_pct", "speculative_pct", "free_pct", "throughput_rps", "throughput_tps",
    "mean_batch_size", "mean_ttft_s", "mean_tpot_s", "mean_normalized_latency_s_per_token",
    "num_preemptions", "sharing_savings_pct", "latency_model", "engine",
)

#: The per-request latency fields the summary averages and takes percentiles of (finished requests).
LATENCY_FIELDS: tuple[str, ...] = ("ttft_s", "tpot_s", "e2e_s", "normalized_latency_s_per_token")

MEMORY_CATEGORIES: tuple[str, ...] = (
    "token_states", "reserved", "internal_frag", "speculative", "external_frag", "free",
)


@dataclass(slots=True)
class RequestRecord:
    """What happened to one request. Times are absolute simulated seconds; NaN where not reached."""

    req_id: int | str
    arrival_s: float
    prompt_len: int
    output_len: int
    n: int
    beam_width: int
    status: str  # "finished" | "aborted" | "rejected"
    first_token_s: float
    finish_s: float
    ttft_s: float
    tpot_s: float
    e2e_s: float
    normalized_latency_s_per_token: float
    num_preemptions: int
    peak_blocks: int
    reason: str = ""  # why rejected/aborted, empty otherwise


@dataclass(slots=True)
class StepRecord:
    """One scheduler iteration (one model forward pass).

    duration_s includes the PCIe transfers on the step's critical path (swap_s); swap_hidden_s is
    transfer time hidden behind the forward pass (swap-in prefetch). The allocator's counters (fresh
    and reused block allocations, window releases, the ref-count histogram) are in MonitorSample,
    taken with each memory sample (every step by default).
    """

    step: int
    start_s: float
    duration_s: float
    batch_size: int  # sequences in the batch
    num_prefill_tokens: int
    num_decode_tokens: int
    blocks_used: int
    blocks_free: int
    num_cows: int
    num_swaps_out: int
    num_swaps_in: int
    num_preempted: int
    num_waiting: int
    swap_out_bytes: float = 0.0
    swap_in_bytes: float = 0.0
    swap_s: float = 0.0
    swap_hidden_s: float = 0.0
    num_prefetch_hidden: int = 0  # swapped-in groups whose transfer ended within the forward pass


@dataclass(slots=True)
class MemorySample:
    """Hindsight memory breakdown at one instant, in token slots; the six categories sum to capacity.

    Valid from `time_s` until the next sample (time-weighted means use that interval).
    """

    time_s: float
    token_states: float
    reserved: float
    internal_frag: float
    speculative: float
    external_frag: float
    free: float
    logical_token_states: float  # tokens counted per sequence (a shared block counts once per user)
    capacity: float

    def check_invariants(self, tol: float = 1e-6) -> None:
        """Raise AssertionError if a category is negative or they do not sum to capacity."""
        parts = (self.token_states, self.reserved, self.internal_frag, self.speculative, self.external_frag,
                 self.free)
        assert all(p >= -tol for p in parts), f"negative category in {parts}"
        assert abs(sum(parts) - self.capacity) <= tol * max(1.0, self.capacity), \
            f"categories sum to {sum(parts)} != capacity {self.capacity}"
        assert self.token_states <= self.logical_token_states + tol, \
            f"physical token states {self.token_states} > logical {self.logical_token_states}"


@dataclass(slots=True)
class MonitorSample:
    """Allocator monitoring at one instant (taken with each memory sample; sim.records.monitor).

    Paged caches count blocks; contiguous caches count 1-slot units. Counters (`*_total`) are
    cumulative since the start of the run; rates cover the interval since the previous sample
    (NaN for the first one, or without allocations for reuse_rate). refs_*: used blocks by how many
    block-table entries reference them (1, 2, 3-4, 5-8, more than 8).
    """

    time_s: float
    free_blocks: int
    used_blocks: int
    kv_bytes_used: float
    alloc_rate_blocks_per_s: float
    reuse_rate: float
    internal_frag_pct: float
    external_frag_pct: float
    refs_1: int
    refs_2: int
    refs_3_4: int
    refs_5_8: int
    refs_gt8: int
    blocks_allocated_total: int
    blocks_reused_total: int
    cows_total: int
    swap_out_blocks_total: int
    swap_in_blocks_total: int
    window_released_total: int


REFCOUNT_BUCKETS: tuple[str, ...] = ("1", "2", "3-4", "5-8", ">8")
"""Labels of MonitorSample's refs_1, refs_2, refs_3_4, refs_5_8, refs_gt8."""


@dataclass(slots=True)
class SimResult:
    """Everything a run produced. `summary` has exactly the keys in SUMMARY_KEYS (plus extras)."""

    system: str
    config: dict[str, Any]
    requests: list[RequestRecord] = field(default_factory=list)
    steps: list[StepRecord] = field(default_factory=list)
    memory: list[MemorySample] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    monitor: list[MonitorSample] = field(default_factory=list)
