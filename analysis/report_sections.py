"""The report's sections, answer first: conclusions in plain words, then the tables and figures behind them.

Order: In short (which system holds how many more requests, where the memory goes, rejections), the
memory breakdown, throughput and latency, memory over time, the allocator, the sweep (its axes as
columns, never point-id hashes), what was run, and the configuration as the TOML that reruns it.
Tables use human column names (analysis.columns); summary.csv keeps the stable snake_case ones.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from analysis import plots
from analysis.columns import humanize
from analysis.conclusions import conclusions
from analysis.frames import BREAKDOWN_PCT_COLUMNS
from analysis.results_io import CONFIG_TOML, ResultsBundle

#: Columns that may be sweep axes, for tables and for sweeps whose config does not list its axes.
SWEEP_AXES: tuple[str, ...] = ("system", "block_size", "rate", "kv_capacity_tokens", "kv_budget_gb",
                               "sampling", "n", "beam_width")
PERF_COLUMNS: tuple[str, ...] = (
    "num_requests", "num_finished", "num_rejected", "throughput_rps", "throughput_tps", "mean_batch_size",
    "mean_ttft_s", "mean_tpot_s", "mean_normalized_latency_s_per_token", "num_preemptions", "sharing_savings_pct",
)
MONITOR_COLUMNS: tuple[str, ...] = (
    "monitor_unit", "pool_blocks", "mean_free_blocks", "min_free_blocks", "blocks_allocated", "blocks_reused",
    "alloc_rate_blocks_per_s", "reuse_rate", "mean_refs_1", "mean_refs_2", "mean_refs_3_4", "mean_refs_5_8",
    "mean_refs_gt8", "num_cows", "window_released_blocks",
)
SWAP_COLUMNS: tuple[str, ...] = (
    "num_preemptions", "num_swap_fallbacks", "swap_out_blocks", "swap_in_blocks", "swap_out_bytes",
    "swap_in_bytes", "swap_out_s", "swap_in_s", "swap_exposed_s", "swap_hidden_s", "num_prefetches",
    "num_prefetch_hidden", "prefetch_hidden_pct",
)


@dataclass(slots=True)
class Section:
    """One report section: an anchor id, a heading, prose, tables, figures (PNG paths), and bullets
    (plain-language findings) or a code block (kind: language, text)."""

    id: str
    title: str
    text: str = ""
    tables: tuple[pd.DataFrame, ...] = ()
    figures: tuple[Path, ...] = ()
    bullets: tuple[str, ...] = ()
    code: tuple[str, str] | None = None


def row_keys(df: pd.DataFrame, axes: list[str]) -> list[str]:
    """The columns that say which row is which: the system and the swept axes (no point-id hashes)."""
    return list(dict.fromkeys(["system", *[a for a in axes if a in df.columns]]))


def _cols(df: pd.DataFrame, keys: list[str], cols: tuple[str, ...]) -> pd.DataFrame:
    """keys then `cols` (those present, each once), with human names."""
    return humanize(df[list(dict.fromkeys([*keys, *[c for c in cols if c in df.columns]]))])


def sections(bundle: ResultsBundle, figs: dict[str, Path], axes: list[str]) -> list[Section]:
    """Every section the bundle's data supports, conclusions first."""
    s = bundle.summary
    if "status" in s.columns:
        s = s[s["status"] == "ok"]
    keys = row_keys(s, axes)
    secs = [Section("conclusions", "In short", bullets=tuple(conclusions(s, tuple(axes))) or (
        "No finished run to draw conclusions from.",))]
    if all(c in s.columns for c in BREAKDOWN_PCT_COLUMNS):
        tables = [_cols(s, keys, BREAKDOWN_PCT_COLUMNS)]
        if all(c in s.columns for c in plots.USED_COLUMNS):
            tables.append(_cols(s, keys, plots.USED_COLUMNS))
        secs.append(Section(
            "memory-breakdown", "Where the KV-cache memory goes",
            "Time-weighted share of the KV pool per category; the six shares add up to 100%. The second table "
            "(and the right-hand panel) leaves out free memory: shares of the memory in use, as in the vLLM "
            "paper's Fig. 2. Waste = reserved + internal + external fragmentation.",
            tuple(tables), tuple(figs[k] for k in ("memory_breakdown",) if k in figs)))
    secs.append(Section("performance", "Throughput and latency",
                        "Requests (finished and rejected), throughput, mean batch size (requests running at "
                        "once) and mean latencies per system.",
                        (_cols(s, keys, PERF_COLUMNS),), tuple(figs[k] for k in ("latency_cdf",) if k in figs)))
    if "memory_over_time" in figs:
        secs.append(Section("memory-over-time", "Memory over time",
                            "Each category's share of the KV pool over simulated time.",
                            figures=(figs["memory_over_time"],)))
    secs += _allocator(s, keys, figs)
    if not bundle.points.empty:
        secs.append(_sweep(bundle.points, axes, figs))
    secs.append(Section("about", "What was run", _about(bundle)))
    if bundle.config:
        p = bundle.path / CONFIG_TOML
        if p.is_file():
            secs.append(Section("configuration", "Configuration",
                                f"The effective configuration, {CONFIG_TOML}; `pagesim run --config "
                                f"{CONFIG_TOML}` reruns it.", code=("toml", p.read_text(encoding="utf-8"))))
    return secs


def _allocator(s: pd.DataFrame, keys: list[str], figs: dict[str, Path]) -> list[Section]:
    mon = [c for c in MONITOR_COLUMNS if c in s.columns]
    if "allocator_monitor" not in figs and len(mon) < 2:
        return []
    nonzero = tuple(c for c in MONITOR_COLUMNS if c in ("monitor_unit", "pool_blocks", "mean_free_blocks")
                    or (c in s.columns and not (pd.to_numeric(s[c], errors="coerce").fillna(0) == 0).all()))
    tables: tuple[pd.DataFrame, ...] = (_cols(s, keys, nonzero),) if len(mon) >= 2 else ()
    if "swap_out_blocks" in s.columns and (s["swap_out_blocks"].fillna(0) > 0).any():
        tables += (_cols(s, keys, SWAP_COLUMNS),)
    return [Section(
        "allocator", "Allocator monitoring",
        "Run totals of the KV-cache allocator, in its unit: a block of block-size token slots for a paged "
        "cache, one token slot for a contiguous cache (so compare counts within a unit; the figure converts "
        "allocation rates to token slots for all). Free units (time-weighted mean and minimum), fresh "
        "allocations and reuses (prefix-cache hits and forks), the used units by reference count, "
        "copy-on-write copies and blocks released by the sliding window; when anything was swapped, bytes "
        "and PCIe time each way. Columns that are zero for every system are left out; the per-sample series "
        "are runs/<system>/monitor.parquet.",
        tables, tuple(figs[k] for k in ("allocator_monitor",) if k in figs))]


def _sweep(points: pd.DataFrame, axes: list[str], figs: dict[str, Path]) -> Section:
    failed = points[points["status"] != "ok"] if "status" in points.columns else points.iloc[0:0]
    shown = [a for a in axes if a != "system"]
    text = (f"{len(points)} points over {', '.join(axes) or 'one point'}: {len(points) - len(failed)} finished, "
            f"{len(failed)} failed. Each line figure varies one axis; its title names the value the other "
            f"axes are held at.")
    tables: tuple[pd.DataFrame, ...] = ()
    if not failed.empty:
        cols = [c for c in ("system", *shown, "error") if c in failed.columns]
        tables = (humanize(failed[cols]),)
    figs_ = tuple(figs[k] for k in ("block_size_sweep", "rate_sweep", "sharing_n", "sharing_beam_width") if k in figs)
    if shown:
        text += " Swept: " + "; ".join(f"{a} = {', '.join(str(v) for v in points[a].dropna().unique())}"
                                       for a in shown if a in points.columns) + "."
    return Section("sweep", "Sweep", text, tables, figs_)


def _about(bundle: ResultsBundle) -> str:
    s = bundle.summary
    lines = [f"Results directory: {bundle.path}", f"Rows in summary.csv: {len(s)}"]
    eng = ", ".join(sorted({str(v) for v in s["engine"].dropna() if str(v)})) if "engine" in s else ""
    if eng:
        lines.append(f"Engine profile: {eng} (overheads: docs/latency.md)")
    for col, what in (("latency_model", "Latency model"), ("kv_dtype", "KV storage dtype"),
                      ("sliding_window", "Attention window (tokens, 0: none)"),
                      ("semantics", "Block-manager semantics"), ("scheduler_policy", "Scheduler policy")):
        if col in s.columns:
            vals = ", ".join(sorted({_plain(v) for v in s[col].dropna()}))
            if vals:
                lines.append(f"{what}: {vals}")
    return "\n".join(lines)


def _plain(v: object) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)
