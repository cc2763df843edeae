"""The report of a results directory: one self-contained HTML file and a Markdown twin.

`build_report(dir)` loads summary.csv, the per-run records and the sweep points, (re)draws every
figure that the data supports into plots/, and writes report.html (PNGs embedded as base64, inline
CSS: it opens anywhere, offline) and report.md (tables in Markdown, figures linked from plots/).
"""

from __future__ import annotations

import base64
import contextlib
import functools
import html
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from analysis import plots
from analysis.frames import BREAKDOWN_PCT_COLUMNS
from analysis.results_io import PLOTS_DIR, SUMMARY_CSV, ResultsBundle, atomic_write_text, load_results

PERF_COLUMNS: tuple[str, ...] = (
    "system", "block_size", "num_requests", "throughput_rps", "throughput_tps", "mean_batch_size",
    "mean_ttft_s", "mean_tpot_s", "mean_normalized_latency_s_per_token", "num_preemptions",
    "sharing_savings_pct", "latency_model", "engine",
)
MONITOR_COLUMNS: tuple[str, ...] = (
    "system", "kv_dtype", "sliding_window", "pool_blocks", "mean_free_blocks", "min_free_blocks",
    "peak_kv_bytes_used", "blocks_allocated", "blocks_reused", "alloc_rate_blocks_per_s", "reuse_rate",
    "mean_refs_1", "mean_refs_2", "mean_refs_3_4", "mean_refs_5_8", "mean_refs_gt8", "num_cows",
    "window_released_blocks",
)
SWAP_COLUMNS: tuple[str, ...] = (
    "system", "num_preemptions", "num_swap_fallbacks", "swap_out_blocks", "swap_in_blocks", "swap_out_bytes",
    "swap_in_bytes", "swap_out_s", "swap_in_s", "swap_exposed_s", "swap_hidden_s", "num_prefetches",
    "num_prefetch_hidden", "prefetch_hidden_pct",
)


@dataclass(slots=True)
class Section:
    """One report section: an anchor id, a heading, prose, tables and figures (PNG paths)."""

    id: str
    title: str
    text: str = ""
    tables: tuple[pd.DataFrame, ...] = ()
    figures: tuple[Path, ...] = ()


def title_from_config(config: dict[str, Any]) -> str:
    """"<model> on <gpu>, <workload>" from an effective config (pieces that are missing are left out)."""
    parts = [str(config[k]) for k in ("model", "gpu") if config.get(k)]
    head = " on ".join(parts)
    wl = config.get("workload") or {}
    if wl.get("trace"):
        what = f"trace {Path(str(wl['trace'])).name}"
    elif wl.get("preset"):
        what = f"{wl['preset']}-like synthetic"
    else:
        what = ""
    n = wl.get("num_requests")
    if n:
        what += f", {n} requests"
    if wl.get("rate") and "rate" not in ((config.get("sweep") or {}).get("axes") or {}):
        what += f" at {wl['rate']:g} req/s"
    return ", ".join(p for p in (head, what.strip(", ")) if p) or "pagesim results"


def render_plots(bundle: ResultsBundle, title: str | None = None, reuse: bool = False) -> dict[str, Path]:
    """Draw every figure the bundle's data supports into <dir>/plots; returns name -> PNG path.

    reuse: keep a figure whose PNG is newer than summary.csv instead of drawing it again.
    """
    t = title or title_from_config(bundle.config)
    pdir = bundle.path / PLOTS_DIR
    out: dict[str, Path] = {}
    data_mtime = (bundle.path / SUMMARY_CSV).stat().st_mtime if (bundle.path / SUMMARY_CSV).exists() else 0.0

    def attempt(name: str, draw: Callable[[], list[Path]]) -> None:
        png = pdir / f"{name}.png"
        if reuse and png.is_file() and png.stat().st_mtime >= data_mtime and png.with_suffix(".svg").is_file():
            out[name] = png
            return
        # A ValueError means the data does not support this figure (missing column, no rows).
        with contextlib.suppress(ValueError):
            out[name] = draw()[0]

    pts = bundle.points if not bundle.points.empty else pd.DataFrame()
    ok = pts[pts["status"] == "ok"] if "status" in pts.columns else pts
    if ok.empty and _has_breakdown(bundle.summary):
        attempt("memory_breakdown", lambda: plots.plot_memory_breakdown(
            bundle.summary, pdir / "memory_breakdown", f"KV memory breakdown: {t}"))
    if not bundle.memory.empty:
        attempt("memory_over_time", lambda: plots.plot_memory_over_time(
            bundle.memory, pdir / "memory_over_time", f"KV memory over time: {t}"))
    if not bundle.monitor.empty:
        attempt("allocator_monitor", lambda: plots.plot_allocator_monitor(
            bundle.monitor, pdir / "allocator_monitor", f"KV-cache allocator monitor: {t}"))
    if not bundle.requests.empty:
        attempt("latency_cdf", lambda: plots.plot_latency_cdf(
            bundle.requests, pdir / "latency_cdf", f"Latency CDFs: {t}"))
    if not ok.empty:
        axes = _sweep_axes(bundle.config, ok)
        if "block_size" in axes:
            attempt("block_size_sweep", lambda: plots.plot_block_size_sweep(
                _fixed_others(ok, "block_size", axes), pdir / "block_size_sweep", f"Block-size sweep: {t}"))
        if "rate" in axes:
            attempt("rate_sweep", lambda: plots.plot_rate_sweep(
                _fixed_others(ok, "rate", axes), pdir / "rate_sweep", f"Rate sweep: {t}"))
        for x in ("n", "beam_width"):
            if _varies(ok, x):
                attempt(f"sharing_{x}", functools.partial(
                    plots.plot_sharing_savings, _fixed_others(ok, x, [a for a in axes if a != "sampling"]), pdir / f"sharing_{x}",
                    f"Sharing savings: {t}", x=x))
        if _has_breakdown(ok):
            attempt("memory_breakdown", lambda: plots.plot_memory_breakdown(
                _label_points(ok, axes), pdir / "memory_breakdown", f"KV memory breakdown per sweep point: {t}"))
    return out


#: Columns that may be sweep axes, for tables and for sweeps whose config does not list its axes.
SWEEP_AXES: tuple[str, ...] = ("system", "block_size", "rate", "kv_capacity_tokens", "kv_budget_gb",
                               "sampling", "n", "beam_width")


def _sweep_axes(config: dict[str, Any], ok: pd.DataFrame) -> list[str]:
    """The axes with more than one value: from the saved sweep config, else guessed from the columns."""
    axes = (config.get("sweep") or {}).get("axes") or {}
    if axes:
        return [a for a, v in axes.items() if isinstance(v, list) and len(v) > 1 and a in ok.columns]
    return [a for a in SWEEP_AXES if _varies(ok, a)]


def _varies(df: pd.DataFrame, col: str) -> bool:
    return col in df.columns and df[col].nunique(dropna=True) > 1


def _fixed_others(df: pd.DataFrame, x: str, axes: list[str]) -> pd.DataFrame:
    """Rows with the other axes (but system) at their first value: a line plot shows one axis at a time.

    Rows without a block size (contiguous caches, block_size 0) are kept whatever the block-size axis.
    """
    keep = df
    for a in axes:
        if a in (x, "system") or a not in keep.columns or keep[a].nunique(dropna=True) <= 1:
            continue
        if a == "block_size":
            first = keep.loc[keep[a] > 0, a].iloc[0]
            keep = keep[(keep[a] == first) | ~(keep[a] > 0)]
        else:
            keep = keep[keep[a] == keep[a].dropna().iloc[0]]
    return keep


def _label_points(df: pd.DataFrame, axes: list[str]) -> pd.DataFrame:
    shown = [a for a in axes if a not in ("system", "block_size") and a in df.columns]
    out = df.copy()
    if shown:
        out["system"] = [", ".join([str(r["system"])] + [f"{a}={r[a]}" for a in shown]) for _, r in df.iterrows()]
    return out.head(24)  # a bar chart of more points is unreadable; the table has all of them


def _has_breakdown(df: pd.DataFrame) -> bool:
    return all(c in df.columns for c in BREAKDOWN_PCT_COLUMNS) and df[list(BREAKDOWN_PCT_COLUMNS)].notna().any().any()


def _sections(bundle: ResultsBundle, figs: dict[str, Path]) -> list[Section]:
    s = bundle.summary
    cfg = bundle.config
    secs = [Section("overview", "Overview", _overview_text(bundle))]
    if _has_breakdown(s):
        secs.append(Section(
            "memory-breakdown", "Where the KV-cache memory goes",
            "Time-weighted share of the KV pool per category; the six shares add up to 100%. The second "
            "table (and the right-hand panel) leaves out free memory: shares of the memory in use, as in the "
            "vLLM paper's Fig. 2. Waste = reserved + internal + external fragmentation.",
            tuple(s[[c for c in ("system", "point_id", *SWEEP_AXES[1:], *cols) if c in s.columns]]
                  for cols in (BREAKDOWN_PCT_COLUMNS, plots.USED_COLUMNS) if all(c in s.columns for c in cols)),
            tuple(figs[k] for k in ("memory_breakdown",) if k in figs)))
    secs.append(Section("performance", "Throughput and latency",
                        "Throughput, mean batch size and latencies per system or sweep point.",
                        (s[[c for c in (*PERF_COLUMNS, "point_id", *SWEEP_AXES[1:]) if c in s.columns]],),
                        tuple(figs[k] for k in ("latency_cdf",) if k in figs)))
    if "memory_over_time" in figs:
        secs.append(Section("memory-over-time", "Memory over time",
                            "Each category's share of the KV pool over simulated time.",
                            figures=(figs["memory_over_time"],)))
    mon = [c for c in MONITOR_COLUMNS if c in s.columns]
    if "allocator_monitor" in figs or len(mon) > 2:
        mon_tables: tuple[pd.DataFrame, ...] = (s[mon],) if len(mon) > 2 else ()
        swp = [c for c in SWAP_COLUMNS if c in s.columns]
        if "swap_out_blocks" in s.columns and (s["swap_out_blocks"].fillna(0) > 0).any():
            mon_tables += (s[swp],)
        secs.append(Section(
            "allocator", "Allocator monitoring",
            "Run totals of the KV-cache allocator: free blocks (time-weighted mean and minimum), fresh block "
            "allocations and reuses (prefix-cache hits and forks) with their rate and share, the used blocks "
            "by reference count (time-weighted means), copy-on-write copies and blocks released by the "
            "sliding window; when anything was swapped, bytes and PCIe time each way, the transfer time on "
            "the steps' critical path and how many prefetched swap-ins the forward pass hid. Contiguous "
            "caches count 1-slot blocks. The per-sample series are runs/<system>/monitor.parquet.",
            mon_tables, tuple(figs[k] for k in ("allocator_monitor",) if k in figs)))
    sweep_figs = tuple(figs[k] for k in ("block_size_sweep", "rate_sweep", "sharing_n", "sharing_beam_width")
                       if k in figs)
    if not bundle.points.empty:
        failed = bundle.points[bundle.points["status"] != "ok"]
        text = f"{len(bundle.points)} points finished, {len(failed)} failed."
        tables: tuple[pd.DataFrame, ...] = ()
        if not failed.empty:
            tables = (failed[[c for c in ("point_id", *SWEEP_AXES, "error") if c in failed.columns]],)
        secs.append(Section("sweep", "Sweep", text, tables, sweep_figs))
    if cfg:
        secs.append(Section("configuration", "Configuration",
                            "The effective configuration (config.toml reruns it with `pagesim run --config`):\n"
                            + json.dumps(cfg, indent=2)))
    return secs


def _overview_text(bundle: ResultsBundle) -> str:
    s = bundle.summary
    lat = ", ".join(sorted({str(v) for v in s["latency_model"].dropna()})) if "latency_model" in s else ""
    lines = [f"Results directory: {bundle.path}", f"Rows in summary.csv: {len(s)}"]
    if lat:
        lines.append(f"Latency model: {lat}")
    eng = ", ".join(sorted({str(v) for v in s["engine"].dropna() if str(v)})) if "engine" in s else ""
    if eng:
        lines.append(f"Engine profile: {eng} (overheads: docs/latency.md)")
    for col, what in (("kv_dtype", "KV storage dtype"), ("sliding_window", "Attention window (tokens, 0: none)"),
                      ("semantics", "Block-manager semantics"), ("scheduler_policy", "Scheduler policy")):
        if col in s.columns:
            vals = ", ".join(sorted({_fmt(v) for v in s[col].dropna()}))
            if vals:
                lines.append(f"{what}: {vals}")
    return "\n".join(lines)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        if math.isnan(v):
            return ""
        return f"{v:.4g}" if abs(v) < 1e5 else f"{v:.3e}"
    return str(v)


def _html_table(df: pd.DataFrame) -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in df.columns)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_fmt(v))}</td>" for v in row) + "</tr>"
                   for row in df.itertuples(index=False))
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def markdown_table(df: pd.DataFrame) -> str:
    """A GitHub-flavoured Markdown table of `df` (floats to 4 significant digits)."""
    esc = [str(c).replace("|", "\\|") for c in df.columns]
    lines = ["| " + " | ".join(esc) + " |", "|" + "|".join("---" for _ in esc) + "|"]
    for row in df.itertuples(index=False):
        lines.append("| " + " | ".join(_fmt(v).replace("|", "\\|") for v in row) + " |")
    return "\n".join(lines)


_CSS = """body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;font-size:13px;margin:1em 0;display:block;overflow-x:auto}
th,td{border:1px solid #ccc;padding:3px 7px;text-align:right}th{background:#f2f4f7}
td:first-child,th:first-child{text-align:left}img{max-width:100%;margin:0.5em 0}
pre{background:#f6f8fa;padding:1em;overflow-x:auto;font-size:12px}nav a{margin-right:1em}"""


def build_report(out_dir: Path | str, title: str | None = None) -> tuple[Path, Path]:
    """Write report.html and report.md for a results directory; returns their paths.

    Raises FileNotFoundError (naming the path) when the directory has no summary.csv.
    """
    bundle = load_results(out_dir)
    head = title or f"pagesim report: {title_from_config(bundle.config)}"
    figs = render_plots(bundle, reuse=True)
    secs = _sections(bundle, figs)

    nav = "".join(f'<a href="#{x.id}">{html.escape(x.title)}</a>' for x in secs)
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(head)}</title>"
             f"<style>{_CSS}</style></head><body><h1>{html.escape(head)}</h1><nav>{nav}</nav>"]
    md = [f"# {head}", ""]
    for sec in secs:
        parts.append(f'<section id="{sec.id}"><h2>{html.escape(sec.title)}</h2>')
        md += [f"## {sec.title}", ""]
        if sec.text:
            if sec.id == "configuration":
                intro, _, body = sec.text.partition("\n")
                parts.append(f"<p>{html.escape(intro)}</p><pre>{html.escape(body)}</pre>")
                md += [intro, "", "```json", body, "```", ""]
            else:
                parts.append("".join(f"<p>{html.escape(line)}</p>" for line in sec.text.splitlines()))
                md += [line + "  " for line in sec.text.splitlines()] + [""]
        for t in sec.tables:
            parts.append(_html_table(t))
            md += [markdown_table(t), ""]
        for f in sec.figures:
            b64 = base64.b64encode(f.read_bytes()).decode("ascii")
            parts.append(f'<figure><img alt="{html.escape(f.stem)}" src="data:image/png;base64,{b64}"></figure>')
            md += [f"![{f.stem}]({f.relative_to(bundle.path).as_posix()})", ""]
        parts.append("</section>")
    parts.append("</body></html>")
    html_path, md_path = bundle.path / "report.html", bundle.path / "report.md"
    atomic_write_text(html_path, "\n".join(parts))
    atomic_write_text(md_path, "\n".join(md))
    return html_path, md_path
