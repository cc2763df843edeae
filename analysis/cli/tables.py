"""The terminal tables of the simulating commands and the conclusions under them.

Tables fit 100 columns by default (short headers, only the columns that carry information: the
memory breakdown, the vLLM paper's Fig. 2 share of memory in use, throughput/latency, the allocator
monitor of the paged systems); `--wide` prints every column with long headers, all systems.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.table import Table

from sim.records.results import MEMORY_CATEGORIES

if TYPE_CHECKING:
    import pandas as pd

DEFAULT_WIDTH = 100  # columns when stdout is not a terminal (and the most a compact table needs)
WIDE_WIDTH = 250
BREAKDOWN_PCT_COLUMNS = tuple(f"{c}_pct" for c in MEMORY_CATEGORIES)
USED_PCT_COLUMNS = tuple(f"{c}_of_used_pct" for c in MEMORY_CATEGORIES if c != "free")

# summary column -> (compact header, wide header)
HEADERS: dict[str, tuple[str, str]] = {
    "block_size": ("block", "block size"), "rate": ("rate", "rate req/s"), "kv_budget_gb": ("KV GiB", "KV budget GiB"),
    "token_states_pct": ("tokens", "token states %"), "reserved_pct": ("reserved", "reserved %"),
    "internal_frag_pct": ("internal", "internal frag %"), "speculative_pct": ("spec.", "speculative %"),
    "external_frag_pct": ("external", "external frag %"), "free_pct": ("free", "free %"),
    "throughput_rps": ("req/s", "req/s"), "throughput_tps": ("tok/s", "tokens/s"),
    "mean_batch_size": ("batch", "mean batch"), "mean_ttft_s": ("TTFT s", "TTFT s"),
    "mean_tpot_s": ("TPOT s", "TPOT s"), "mean_normalized_latency_s_per_token": ("s/token", "norm. latency s/token"),
    "num_preemptions": ("preempt", "preemptions"), "num_rejected": ("rejected", "rejected"),
    "sharing_savings_pct": ("shared %", "sharing saved %"),
    "mean_free_slots": ("free slots", "free slots (mean)"), "min_free_slots": ("min free", "free slots (min)"),
    "mean_free_blocks": ("free blocks", "free blocks (mean)"), "min_free_blocks": ("min free", "free blocks (min)"),
    "alloc_rate_blocks_per_s": ("allocs/s", "allocs/s"), "reuse_rate": ("reuse", "reuse"),
    "mean_refs_2": ("refs=2", "refs=2"), "mean_refs_3_4": ("refs 3-4", "refs 3-4"),
    "mean_refs_5_8": ("refs 5-8", "refs 5-8"), "mean_refs_gt8": ("refs>8", "refs>8"),
    "num_cows": ("CoW", "CoW copies"), "window_released_blocks": ("win-freed", "window-freed"),
    "swap_out_bytes": ("swap out B", "swapped out B"), "swap_in_bytes": ("swap in B", "swapped in B"),
    "swap_exposed_s": ("swap s", "swap on crit. path s"), "prefetch_hidden_pct": ("hidden %", "prefetch hidden %"),
}
for _c in MEMORY_CATEGORIES:
    if _c != "free":
        HEADERS[f"{_c}_of_used_pct"] = HEADERS[f"{_c}_pct"]
PERF_COLUMNS: tuple[str, ...] = ("throughput_rps", "throughput_tps", "mean_batch_size", "mean_ttft_s", "mean_tpot_s",
                                 "mean_normalized_latency_s_per_token", "num_preemptions", "num_rejected",
                                 "sharing_savings_pct")
MONITOR_COLUMNS: tuple[str, ...] = (
    "mean_free_blocks", "min_free_blocks", "alloc_rate_blocks_per_s", "reuse_rate", "mean_refs_2", "mean_refs_3_4",
    "mean_refs_5_8", "mean_refs_gt8", "num_cows", "window_released_blocks", "swap_out_bytes", "swap_in_bytes",
    "swap_exposed_s", "prefetch_hidden_pct")


def consoles(wide: bool = False) -> tuple[Console, Console]:
    """(stdout, stderr) consoles: a terminal's own width, else 100 columns (250 with --wide)."""
    out, err = Console(), Console(stderr=True)
    width = WIDE_WIDTH if wide else DEFAULT_WIDTH
    if not out.is_terminal:
        out = Console(width=width)
    if not err.is_terminal:
        err = Console(stderr=True, width=width)
    return out, err


def cell(v: Any) -> str:
    """A table cell: floats to 4 significant digits, NaN empty."""
    if isinstance(v, float):
        return "" if v != v else f"{v:.4g}" if abs(v) < 1e5 else f"{v:.3e}"
    return str(v)


def _pct(v: Any) -> str:
    return f"{v:.1f}" if isinstance(v, float) and v == v else cell(v)


def table(df: pd.DataFrame, cols: list[str], title: str, wide: bool = False, caption: str = "") -> Table:
    """A rich table of `cols` (those present), headers compact or wide."""
    t = Table(title=title, title_justify="left", header_style="bold", caption=caption or None,
              caption_justify="left")
    present = [c for c in cols if c in df.columns]
    for c in present:
        head = HEADERS.get(c, (c, c))[1 if wide else 0]
        t.add_column(head, justify="left" if c in ("system", "point") else "right", no_wrap=c == "system")
    for _, row in df.iterrows():
        t.add_row(*[(_pct if c.endswith("_pct") else cell)(row[c]) for c in present])
    return t


def _informative(df: pd.DataFrame, cols: tuple[str, ...]) -> list[str]:
    """Columns with a non-zero value somewhere (compact tables leave out all-zero and empty ones)."""
    out = []
    for c in cols:
        if c in df.columns:
            v = df[c]
            if v.notna().any() and not (v.fillna(0) == 0).all():
                out.append(c)
    return out


def print_summary(out: Console, df: pd.DataFrame, title: str, axes: tuple[str, ...] = (), wide: bool = False) -> None:
    """The memory breakdown, throughput/latency and allocator tables (compact unless `wide`)."""
    import pandas as pd

    if "status" in df.columns:
        df = df[df["status"] == "ok"]
    lead = ["system", *[a for a in axes if a != "system"]]
    head = "KV-cache memory breakdown, % of the pool (time-weighted)" + (f": {title}" if wide else "")
    out.print(table(df, [*lead, *BREAKDOWN_PCT_COLUMNS], head, wide,
                    "the six add up to 100%"))
    if all(c in df.columns for c in USED_PCT_COLUMNS):
        out.print(table(df, [*lead, *USED_PCT_COLUMNS], "KV memory in use, % (the vLLM paper's Fig. 2)", wide,
                        "the five add up to 100% of the memory in use"))
    perf = list(PERF_COLUMNS) if wide else [c for c in PERF_COLUMNS if c in _informative(df, (c,))
                                            or c in ("throughput_rps", "throughput_tps", "mean_batch_size",
                                                     "mean_ttft_s", "mean_tpot_s")]
    out.print(table(df, [*lead, *perf], "Throughput and latency (means)", wide))
    mon = (MONITOR_COLUMNS if wide else ("mean_free_blocks", "min_free_blocks", *_informative(df, MONITOR_COLUMNS[2:])))
    mon_cols = [c for c in mon if c in df.columns and df[c].notna().any()]
    if mon_cols:
        paged = df[df.get("block_size", pd.Series(0, index=df.index)).fillna(0) > 0] if not wide else df
        if not paged.empty:
            out.print(table(paged, [*lead, *mon_cols], "Allocator monitor (run totals" + (
                "; contiguous caches count 1-slot blocks)" if wide else ", paged caches)"), wide))
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


def wrap(line: str, out: Console, first: str = "") -> str:
    """`first` + `line` wrapped to the console width with a hanging indent (continuations under the text)."""
    import textwrap

    lead = len(line) - len(line.lstrip(" "))
    return textwrap.fill(line.strip(), width=max(40, out.width - 1), initial_indent=first + " " * lead,
                         subsequent_indent=" " * (lead + (len(first) or 2)))


def print_conclusions(out: Console, lines: list[str]) -> None:
    """The findings in plain words, after the tables ("In short:" and one bullet per line)."""
    if lines:
        out.print("In short:", style="bold")
        for line in lines:
            out.print(wrap(line, out, "- "), markup=False, highlight=False)
