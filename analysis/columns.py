"""Human names of the summary columns, for the report's tables (the CSV keeps the stable snake_case names)."""

from __future__ import annotations

import pandas as pd

from sim.records.results import MEMORY_CATEGORIES

_CATEGORY_NAMES = {"token_states": "token states", "reserved": "reserved", "internal_frag": "internal frag.",
                   "speculative": "speculative", "external_frag": "external frag.", "free": "free"}

COLUMN_NAMES: dict[str, str] = {
    "system": "system", "point_id": "point", "block_size": "block size (tokens)", "rate": "rate (req/s)",
    "kv_budget_gb": "KV budget (GiB)", "kv_capacity_tokens": "KV pool (token slots)", "sampling": "sampling",
    "n": "parallel samples", "beam_width": "beam width", "num_requests": "requests",
    "num_finished": "finished", "num_rejected": "rejected", "num_aborted": "aborted",
    "throughput_rps": "requests/s", "throughput_tps": "output tokens/s", "mean_batch_size": "mean batch",
    "mean_ttft_s": "mean TTFT (s)", "mean_tpot_s": "mean TPOT (s)",
    "mean_normalized_latency_s_per_token": "mean latency per output token (s)",
    "num_preemptions": "preemptions", "sharing_savings_pct": "memory saved by sharing (%)",
    "latency_model": "latency model", "kv_dtype": "KV dtype", "sliding_window": "attention window (tokens)",
    "pool_blocks": "pool (blocks or slots)", "mean_free_blocks": "free (mean)", "min_free_blocks": "free (min)",
    "peak_kv_bytes_used": "peak KV in use (bytes)", "blocks_allocated": "allocated", "blocks_reused": "reused",
    "alloc_rate_blocks_per_s": "allocations/s", "reuse_rate": "reuse share",
    "mean_refs_1": "refs=1", "mean_refs_2": "refs=2", "mean_refs_3_4": "refs 3-4", "mean_refs_5_8": "refs 5-8",
    "mean_refs_gt8": "refs>8", "num_cows": "copy-on-write copies", "window_released_blocks": "freed by window",
    "monitor_unit": "unit", "num_swap_fallbacks": "swap fallbacks", "swap_out_blocks": "swapped out (blocks)",
    "swap_in_blocks": "swapped in (blocks)", "swap_out_bytes": "swapped out (bytes)",
    "swap_in_bytes": "swapped in (bytes)", "swap_out_s": "swap-out time (s)", "swap_in_s": "swap-in time (s)",
    "swap_exposed_s": "swap time on critical path (s)", "swap_hidden_s": "swap time hidden (s)",
    "num_prefetches": "prefetches", "num_prefetch_hidden": "prefetches hidden",
    "prefetch_hidden_pct": "prefetches hidden (%)", "error": "error", "status": "status",
}
for _c in MEMORY_CATEGORIES:
    COLUMN_NAMES[f"{_c}_pct"] = f"{_CATEGORY_NAMES[_c]} (% of pool)"
    if _c != "free":
        COLUMN_NAMES[f"{_c}_of_used_pct"] = f"{_CATEGORY_NAMES[_c]} (% of used)"


def human(name: str) -> str:
    """The human name of a summary column (unknown names: underscores become spaces)."""
    return COLUMN_NAMES.get(name, name.replace("_", " "))


def humanize(df: pd.DataFrame) -> pd.DataFrame:
    """`df` with human column names (a copy; duplicate columns dropped first)."""
    out = df.loc[:, ~df.columns.duplicated()].copy()
    out.columns = [human(str(c)) for c in out.columns]
    return out
