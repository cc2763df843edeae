"""Figures of a `pagesim bench` timings table: latency vs context length per block size, fraction of
peak HBM bandwidth vs KV bytes, and paged-vs-contiguous overhead vs block size.

Each function takes the table (gpu.bench.output.load_timings), a path stem and a title, draws on a
fresh Figure (no pyplot state) and returns the PNG/SVG files written (analysis.plots.save_figure).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from analysis.plots import save_figure

VARIANT_COLORS = {"contiguous": "#333333", "torch_sdpa": "#8e6c8a", "paged": "#2b7bba", "partitioned": "#d1495b"}
_SLICE = ("dtype", "num_heads", "num_kv_heads", "head_dim")


def _need(df: pd.DataFrame, cols: tuple[str, ...], what: str) -> None:
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise ValueError(f"{what}: missing column(s) {', '.join(missing)}")
    if df.empty:
        raise ValueError(f"{what}: no rows to plot")


def main_slice(df: pd.DataFrame) -> tuple[pd.DataFrame, str]:
    """The rows of the most measured (dtype, heads, kv heads, head_dim) combination, and its label:
    one figure compares like with like instead of overlaying every head configuration (ties go to
    the combination measured first)."""
    _need(df, _SLICE, "bench plot")
    key = df.groupby(list(_SLICE), sort=False).size().idxmax()  # ties: the first measured
    sel = df[(df[list(_SLICE)] == pd.Series(key, index=_SLICE)).all(axis=1)]
    dtype, h, kv, d = key
    return sel, f"{dtype}, {h} heads / {kv} kv heads, head_dim {d}"


def _series_label(variant: str, block_size: int) -> str:
    return f"{variant} bs{block_size}" if block_size else variant


def plot_latency_vs_context(df: pd.DataFrame, stem: Path, title: str = "") -> list[Path]:
    """Median latency vs context length (fixed-length batches), one panel per batch size, one line per
    variant and block size; p10-p90 as a band. Log-log axes."""
    _need(df, ("variant", "block_size", "batch_size", "context_len_max", "context_mode", "latency_s",
               "latency_p10_s", "latency_p90_s"), "latency plot")
    sel, label = main_slice(df)
    fixed = sel[sel["context_mode"] == "fixed"]
    sel = fixed if not fixed.empty else sel
    batches = sorted(sel["batch_size"].unique())
    fig = Figure(figsize=(max(6.4, 4.2 * len(batches)), 4.0), layout="constrained")
    axes = fig.subplots(1, len(batches), squeeze=False)[0]
    for ax, b in zip(axes, batches, strict=True):
        part = sel[sel["batch_size"] == b]
        for (v, bs), g in part.groupby(["variant", "block_size"], sort=True):
            g = g.groupby("context_len_max")[["latency_s", "latency_p10_s", "latency_p90_s"]].median()
            x = g.index.to_numpy()
            style = "-" if v in ("paged", "contiguous") else "--"
            line = ax.plot(x, g["latency_s"] * 1e6, style, marker="o", ms=3, label=_series_label(str(v), int(bs)),
                           color=VARIANT_COLORS.get(str(v)) if not bs else None)
            ax.fill_between(x, g["latency_p10_s"] * 1e6, g["latency_p90_s"] * 1e6, alpha=0.15,
                            color=line[0].get_color())
        ax.set(xscale="log", yscale="log", xlabel="context length (tokens)", ylabel="latency (us)",
               title=f"batch {b}")
        ax.grid(True, which="both", alpha=0.3)
    axes[-1].legend(fontsize=7)
    fig.suptitle(f"{title} - decode latency".strip(" -") + f"\n{label}", fontsize=10)
    return save_figure(fig, stem)


def plot_bandwidth_fraction(df: pd.DataFrame, stem: Path, title: str = "") -> list[Path]:
    """Fraction of peak HBM bandwidth vs KV bytes read per call, per variant (achieved GB/s when the
    peak is unknown); the 80% performance goal as a line."""
    _need(df, ("variant", "kv_bytes", "bw_fraction", "achieved_bw_Bps"), "bandwidth plot")
    known = bool(np.isfinite(df["bw_fraction"].to_numpy(float)).any())
    col, ylabel = ("bw_fraction", "fraction of peak HBM bandwidth") if known else \
        ("achieved_bw_Bps", "achieved bandwidth (GB/s; peak unknown)")
    scale = 1.0 if known else 1e-9
    fig = Figure(figsize=(6.4, 4.2), layout="constrained")
    ax = fig.subplots()
    for v, g in df.groupby("variant", sort=True):
        ax.scatter(g["kv_bytes"], g[col] * scale, s=14, alpha=0.75, label=str(v), color=VARIANT_COLORS.get(str(v)))
    if known:
        ax.axhline(1.0, color="black", lw=0.8)
        ax.axhline(0.8, color="gray", ls=":", lw=1, label="goal: 80% of peak")
        ax.set_ylim(0, max(1.05, float(np.nanmax(df[col].to_numpy(float))) * 1.05))
    ax.set(xscale="log", xlabel="KV bytes read per call", ylabel=ylabel)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.suptitle(f"{title} - bandwidth".strip(" -"))
    return save_figure(fig, stem)


def plot_paged_overhead(df: pd.DataFrame, stem: Path, title: str = "") -> list[Path]:
    """Paged-vs-contiguous overhead (%) vs block size for paged and partitioned rows: every config as
    a point, the median as a line; 0% and the 5% goal as references."""
    _need(df, ("variant", "block_size", "paged_overhead_pct"), "overhead plot")
    sel = df[df["variant"].isin(["paged", "partitioned"]) & np.isfinite(df["paged_overhead_pct"].to_numpy(float))]
    _need(sel, ("paged_overhead_pct",), "overhead plot (paged rows with a contiguous baseline)")
    fig = Figure(figsize=(6.4, 4.2), layout="constrained")
    ax = fig.subplots()
    offsets = {"paged": -0.06, "partitioned": 0.06}
    for v, g in sel.groupby("variant", sort=True):
        x = np.log2(g["block_size"].to_numpy(float))
        color = VARIANT_COLORS.get(str(v))
        ax.scatter(x + offsets.get(str(v), 0.0), g["paged_overhead_pct"], s=12, alpha=0.5, color=color)
        med = g.groupby("block_size")["paged_overhead_pct"].median()
        ax.plot(np.log2(med.index.to_numpy(float)), med.to_numpy(), "-o", color=color, label=f"{v} (median)")
    sizes = sorted(sel["block_size"].unique())
    ax.set_xticks(np.log2(np.asarray(sizes, float)), [str(int(s)) for s in sizes])
    ax.axhline(0, color="black", lw=0.8)
    ax.axhline(5, color="gray", ls=":", lw=1, label="goal: within 5%")
    ax.set(xlabel="block size (tokens)", ylabel="overhead vs contiguous kernel (%)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.suptitle(f"{title} - paging overhead".strip(" -"))
    return save_figure(fig, stem)


def plot_all(df: pd.DataFrame, out_dir: Path, title: str = "") -> list[Path]:
    """All three figures into out_dir (latency_vs_context, bandwidth_fraction, paged_overhead); the
    overhead figure is left out when no paged row has a baseline. Returns the files written."""
    files = plot_latency_vs_context(df, out_dir / "latency_vs_context", title)
    files += plot_bandwidth_fraction(df, out_dir / "bandwidth_fraction", title)
    paged = df[df["variant"].isin(["paged", "partitioned"])]
    if np.isfinite(paged["paged_overhead_pct"].to_numpy(float)).any():
        files += plot_paged_overhead(df, out_dir / "paged_overhead", title)
    return files
