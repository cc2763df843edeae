"""The terminal tables of the simulating commands: column headers, cell formatting and the summary
printout (memory breakdown, Fig. 2 share of memory in use, throughput/latency, allocator monitor).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.table import Table

from sim.records.results import MEMORY_CATEGORIES

if TYPE_CHECKING:
    import pandas as pd

out, err = Console(), Console(stderr=True)
if not out.is_terminal:  # piped or captured: do not squeeze the tables into 80 columns
    out = Console(width=200)
if not err.is_terminal:
    err = Console(stderr=True, width=200)

BREAKDOWN_PCT_COLUMNS = tuple(f"{c}_pct" for c in MEMORY_CATEGORIES)
USED_PCT_COLUMNS = tuple(f"{c}_of_used_pct" for c in MEMORY_CATEGORIES if c != "free")

_HEADERS = {
    "token_states_pct": "token states %", "reserved_pct": "reserved %", "internal_frag_pct": "internal frag %",
    "speculative_pct": "speculative %", "external_frag_pct": "external frag %", "free_pct": "free %",
    "throughput_rps": "req/s", "throughput_tps": "tokens/s", "mean_batch_size": "mean batch",
    "mean_ttft_s": "TTFT s", "mean_tpot_s": "TPOT s", "mean_normalized_latency_s_per_token": "norm. latency s/token",
    "num_preemptions": "preemptions", "sharing_savings_pct": "sharing saved %",
}
_HEADERS.update({f"{c}_of_used_pct": _HEADERS[f"{c}_pct"] for c in MEMORY_CATEGORIES})
_MONITOR_HEADERS = {  # the allocator-monitor table: summary column -> header
    "mean_free_blocks": "free blocks (mean)", "min_free_blocks": "free blocks (min)", "alloc_rate_blocks_per_s": "allocs/s",
    "reuse_rate": "reuse", "mean_refs_2": "refs=2", "mean_refs_3_4": "refs 3-4", "mean_refs_5_8": "refs 5-8",
    "mean_refs_gt8": "refs>8", "num_cows": "CoW copies", "window_released_blocks": "window-freed",
    "swap_out_bytes": "swapped out B", "swap_in_bytes": "swapped in B", "swap_exposed_s": "swap on crit. path s",
    "prefetch_hidden_pct": "prefetch hidden %"}
_HEADERS.update(_MONITOR_HEADERS)
MONITOR_COLUMNS: tuple[str, ...] = tuple(_MONITOR_HEADERS)


def table(df: pd.DataFrame, cols: list[str], title: str, fmt: Callable[[Any], str] | None = None) -> Table:
    t = Table(title=title, title_justify="left", header_style="bold")
    present = [c for c in cols if c in df.columns]
    for c in present:
        t.add_column(_HEADERS.get(c, c), justify="left" if c == "system" else "right",
                     no_wrap=c == "system")
    for _, row in df.iterrows():
        t.add_row(*[(fmt if fmt is not None and c.endswith("_pct") else cell)(row[c]) for c in present])
    if present and present[-1].endswith("_of_used_pct"):
        t.caption = "token states + reserved + internal + speculative + external = 100% of the slots in use"
    return t


def cell(v: Any) -> str:
    if isinstance(v, float):
        return "" if v != v else f"{v:.4g}" if abs(v) < 1e5 else f"{v:.3e}"
    return str(v)


def print_summary(df: pd.DataFrame, title: str, axes: tuple[str, ...] = ()) -> None:
    import pandas as pd

    if "status" in df.columns:
        df = df[df["status"] == "ok"]
    lead = ["system", *[a for a in axes if a != "system"]]
    pct = lambda v: f"{v:.1f}" if isinstance(v, float) and v == v else cell(v)  # noqa: E731
    out.print(table(df, [*lead, *BREAKDOWN_PCT_COLUMNS],
                    f"KV-cache memory breakdown, share of the pool (time-weighted): {title}", pct))
    if all(c in df.columns for c in USED_PCT_COLUMNS):
        out.print(table(df, [*lead, *USED_PCT_COLUMNS],
                        "Share of the KV memory in use (the vLLM paper's Fig. 2)", pct))
    out.print(table(df, [*lead, "throughput_rps", "throughput_tps", "mean_batch_size", "mean_ttft_s",
                         "mean_tpot_s", "mean_normalized_latency_s_per_token", "num_preemptions",
                         "sharing_savings_pct"], "Throughput and latency"))
    mon = [c for c in MONITOR_COLUMNS if c in df.columns and df[c].notna().any()]
    if mon:
        out.print(table(df, [*lead, *mon], "Allocator monitor (run totals; contiguous caches count 1-slot blocks)"))
    lat = sorted({str(v) for v in df.get("latency_model", pd.Series(dtype=object)).dropna()})
    if lat:
        out.print(f"latency model: {', '.join(lat)}")
    eng = sorted({str(v) for v in df.get("engine", pd.Series(dtype=object)).dropna() if str(v)})
    if eng:
        out.print(f"engine profile: {', '.join(eng)}")
    for col, what in (("semantics", "block-manager semantics"), ("scheduler_policy", "scheduler policy")):
        vals = sorted({str(v) for v in df.get(col, pd.Series(dtype=object)).dropna()})
        if vals:
            out.print(f"{what}: {', '.join(vals)}")
