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
    "num_preemptions", "sharing_savings_pct", "latency_model",
)

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
    """One scheduler iteration (one model forward pass)."""

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


@dataclass(slots=True)
class SimResult:
    """Everything a run produced. `summary` has exactly the keys in SUMMARY_KEYS (plus extras)."""

    system: str
    config: dict[str, Any]
    requests: list[RequestRecord] = field(default_factory=list)
    steps: list[StepRecord] = field(default_factory=list)
    memory: list[MemorySample] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
