"""Matplotlib figures of simulation results, each saved as PNG and SVG.

Every function takes DataFrames (from analysis.frames / summary.csv), a path stem and a title
(say model, GPU and workload), draws on a fresh `Figure` (no pyplot state, no GUI backend) and
returns the files written. Axes carry units. Figures: memory breakdown bars per system (the vLLM
paper's Fig. 2), memory over time, block-size sweep, rate sweep (Fig. 12 style), latency CDFs,
sharing savings vs n / beam width, the allocator monitor.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from sim.records.results import MEMORY_CATEGORIES

CATEGORY_COLORS: dict[str, str] = {
    "token_states": "#2b7bba",
    "reserved": "#f4a259",
    "internal_frag": "#d1495b",
    "speculative": "#8e6c8a",
    "external_frag": "#6c757d",
    "free": "#dfe7ec",
}
CATEGORY_LABELS: dict[str, str] = {
    "token_states": "token states", "reserved": "reserved", "internal_frag": "internal frag.",
    "speculative": "speculative", "external_frag": "external frag.", "free": "free",
}
FORMATS: tuple[str, ...] = ("png", "svg")


def save_figure(fig: Figure, stem: Path, formats: Sequence[str] = FORMATS) -> list[Path]:
    """Save `fig` as `<stem>.png` and `<stem>.svg`; returns the paths."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    out = []
    for fmt in formats:
        p = stem.with_suffix(f".{fmt}")
        fig.savefig(p, dpi=110, format=fmt)
        out.append(p)
    return out


def _need(df: pd.DataFrame, cols: Sequence[str], what: str) -> None:
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise ValueError(f"{what}: missing column(s) {', '.join(missing)}")
    if df.empty:
        raise ValueError(f"{what}: no rows to plot")


USED_COLUMNS: tuple[str, ...] = tuple(f"{c}_of_used_pct" for c in MEMORY_CATEGORIES if c != "free")


def _stacked(ax: Axes, summary: pd.DataFrame, cats: Sequence[str], suffix: str, legend: bool) -> None:
    systems = summary["system"].astype(str).tolist()
    x = np.arange(len(systems))
    bottom = np.zeros(len(systems))
    for c in cats:
        v = np.nan_to_num(summary[f"{c}{suffix}"].to_numpy(dtype=float))
        ax.bar(x, v, bottom=bottom, color=CATEGORY_COLORS[c], label=CATEGORY_LABELS[c] if legend else None,
               edgecolor="white", lw=0.5)
        bottom += v
    ts = np.nan_to_num(summary[f"token_states{suffix}"].to_numpy(dtype=float))
    for xi, t in zip(x, ts, strict=True):
        ax.text(float(xi), t / 2, f"{t:.1f}%", ha="center", va="center", color="white", fontsize=8, fontweight="bold")
    many = len(systems) > 3
    ax.set_xticks(x, systems, rotation=25 if many else 0, ha="right" if many else "center")
    ax.set_ylim(0, 100)


def plot_memory_breakdown(summary: pd.DataFrame, stem: Path, title: str = "") -> list[Path]:
    """Stacked bars per system: time-weighted share of the KV pool per memory category, and (when the
    summary has the `*_of_used_pct` columns) the share of the memory in use, as in the vLLM paper's Fig. 2."""
    cols = [f"{c}_pct" for c in MEMORY_CATEGORIES]
    _need(summary, ["system", *cols], "memory breakdown plot")
    used = all(c in summary.columns for c in USED_COLUMNS) and summary[list(USED_COLUMNS)].notna().any().any()
    n = len(summary)
    fig = Figure(figsize=((2 if used else 1) * max(3.5, 1.1 * n + 1.5) + 1.8, 4.4), layout="constrained")
    axes = fig.subplots(1, 2 if used else 1, squeeze=False)[0]
    _stacked(axes[0], summary, MEMORY_CATEGORIES, "_pct", legend=True)
    axes[0].set_ylabel("share of KV-cache pool (%, time-weighted)")
    axes[0].set_title("whole pool", fontsize=9)
    if used:
        _stacked(axes[1], summary, [c for c in MEMORY_CATEGORIES if c != "free"], "_of_used_pct", legend=False)
        axes[1].set_ylabel("share of KV memory in use (%)")
        axes[1].set_title("memory in use (vLLM paper Fig. 2 style)", fontsize=9)
    fig.legend(loc="outside right center", fontsize=8, frameon=False)
    fig.suptitle(title or "KV-cache memory breakdown", fontsize=10)
    return save_figure(fig, stem)


def plot_memory_over_time(memory: pd.DataFrame, stem: Path, title: str = "", max_points: int = 800) -> list[Path]:
    """Stacked areas of the memory categories (% of pool) over simulated time, one panel per system."""
    _need(memory, ["system", "time_s", "capacity", *MEMORY_CATEGORIES], "memory-over-time plot")
    systems = list(dict.fromkeys(memory["system"].astype(str)))
    fig = Figure(figsize=(8.0, 1.9 * len(systems) + 0.8), layout="constrained")
    axes = fig.subplots(len(systems), 1, sharex=True, squeeze=False)[:, 0]
    for ax, system in zip(axes, systems, strict=True):
        g = memory[memory["system"].astype(str) == system].sort_values("time_s")
        if len(g) > max_points:  # thin for drawing only; the data files keep every sample
            g = g.iloc[np.linspace(0, len(g) - 1, max_points).astype(int)]
        cap = g["capacity"].to_numpy(dtype=float)
        ys = [100.0 * g[c].to_numpy(dtype=float) / cap for c in MEMORY_CATEGORIES]
        ax.stackplot(g["time_s"].to_numpy(dtype=float), *ys, step="post",
                     colors=[CATEGORY_COLORS[c] for c in MEMORY_CATEGORIES],
                     labels=[CATEGORY_LABELS[c] for c in MEMORY_CATEGORIES])
        ax.set_ylim(0, 100)
        ax.set_ylabel("% of pool")
        ax.set_title(system, fontsize=9, loc="left")
    axes[-1].set_xlabel("simulated time (s)")
    axes[0].legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8, frameon=False)
    fig.suptitle(title or "KV-cache memory over time", fontsize=10)
    return save_figure(fig, stem)


def _series(df: pd.DataFrame) -> str | None:
    """The column naming a line: `series` (a sweep's system axis value, e.g. "paged") or `system`."""
    return "series" if "series" in df.columns else "system" if "system" in df.columns else None


def _lines(ax: Axes, df: pd.DataFrame, x: str, y: str, scale: float = 1.0, label_prefix: str = "") -> None:
    col = _series(df)
    groups = df.groupby(col, sort=False) if col else [("", df)]
    for system, g in groups:
        g = g.sort_values(x)
        yv = g[y].to_numpy(dtype=float) * scale
        ax.plot(g[x].to_numpy(dtype=float), yv, marker="o", ms=4, label=f"{label_prefix}{system}".strip())


def plot_block_size_sweep(points: pd.DataFrame, stem: Path, title: str = "") -> list[Path]:
    """A row of panels vs block size: memory waste (%), mean step time (ms), throughput (tokens/s).

    Rows without a block size (contiguous caches: block_size 0 or missing) are drawn as dashed
    horizontal reference lines.
    """
    _need(points, ["block_size", "internal_frag_pct", "throughput_tps"], "block-size sweep plot")
    df = points[points["status"] == "ok"] if "status" in points.columns else points
    df = df.copy()
    df["waste_pct"] = (df["internal_frag_pct"].fillna(0) + df.get("reserved_pct", 0.0).fillna(0)
                       + df.get("external_frag_pct", 0.0).fillna(0))
    if "mean_step_time_s" in df.columns:
        df["mean_step_time_ms"] = df["mean_step_time_s"] * 1e3
    paged = df[df["block_size"] > 0]
    ref = df[~(df["block_size"] > 0)]
    _need(paged, ["block_size"], "block-size sweep plot (rows with a block size)")
    fig = Figure(figsize=(12.0, 3.6), layout="constrained")
    a1, a2, a3 = fig.subplots(1, 3)
    _lines(a1, paged, "block_size", "waste_pct", label_prefix="")
    _lines(a1, paged, "block_size", "internal_frag_pct", label_prefix="internal: ")
    a1.set_ylabel("wasted KV memory (% of pool)")
    a1.set_title("waste = reserved + internal + external", fontsize=9)
    if "mean_step_time_ms" in df.columns:
        _lines(a2, paged, "block_size", "mean_step_time_ms")
    a2.set_ylabel("mean step time (ms)")
    a2.set_title("scheduler step (forward pass) time", fontsize=9)
    _lines(a3, paged, "block_size", "throughput_tps")
    styles = [("--", "0.35"), (":", "0.2"), ("-.", "0.5"), ((0, (5, 1)), "0.65")]
    for ax, y in ((a1, "waste_pct"), (a2, "mean_step_time_ms"), (a3, "throughput_tps")):
        for i, (_, r) in enumerate(ref.iterrows()):
            if y in r and pd.notna(r[y]):
                ls, color = styles[i % len(styles)]
                ax.axhline(float(r[y]), ls=ls, lw=1.2, color=color, label=str(r.get("system", "")))
    a3.set_ylabel("throughput (tokens/s)")
    a3.set_title("throughput", fontsize=9)
    for ax in (a1, a2, a3):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("block size (tokens)")
        ax.grid(alpha=0.3)
    a1.legend(fontsize=7, frameon=False)
    fig.suptitle(title or "Block-size sweep", fontsize=10)
    return save_figure(fig, stem)


def plot_rate_sweep(points: pd.DataFrame, stem: Path, title: str = "", x: str = "rate") -> list[Path]:
    """Throughput and mean normalized latency vs request rate, one line per system (Fig. 12 style)."""
    _need(points, [x, "throughput_rps", "mean_normalized_latency_s_per_token"], "rate sweep plot")
    df = points[points["status"] == "ok"] if "status" in points.columns else points
    fig = Figure(figsize=(10.0, 3.8), layout="constrained")
    a1, a2 = fig.subplots(1, 2)
    _lines(a1, df, x, "throughput_rps")
    a1.set_ylabel("throughput (requests/s)")
    _lines(a2, df, x, "mean_normalized_latency_s_per_token")
    a2.set_ylabel("normalized latency (s/token)")
    for ax in (a1, a2):
        ax.set_xlabel("request rate (requests/s)")
        ax.grid(alpha=0.3)
    a2.legend(fontsize=8, frameon=False)
    fig.suptitle(title or "Throughput and latency vs request rate", fontsize=10)
    return save_figure(fig, stem)


def plot_latency_cdf(requests: pd.DataFrame, stem: Path, title: str = "",
                     columns: Sequence[str] = ("normalized_latency_s_per_token", "ttft_s", "e2e_s")) -> list[Path]:
    """Empirical CDFs of per-request latencies over finished requests, one line per system."""
    from analysis.frames import latency_cdf

    _need(requests, ["system", *columns], "latency CDF plot")
    units = {"normalized_latency_s_per_token": "normalized latency (s/token)", "ttft_s": "time to first token (s)",
             "e2e_s": "end-to-end latency (s)", "tpot_s": "time per output token (s)"}
    fig = Figure(figsize=(4.0 * len(columns), 3.6), layout="constrained")
    axes = fig.subplots(1, len(columns), squeeze=False)[0]
    for ax, col in zip(axes, columns, strict=True):
        cdf = latency_cdf(requests, col)
        for system, g in cdf.groupby("system", sort=False):
            ax.step(g["value"], g["cdf"], where="post", label=str(system))
        ax.set_xlabel(units.get(col, col))
        ax.set_ylabel("fraction of requests")
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
    if axes[-1].get_legend_handles_labels()[0]:  # no finished request (all rejected): no lines, no legend
        axes[-1].legend(fontsize=8, frameon=False)
    fig.suptitle(title or "Latency CDFs", fontsize=10)
    return save_figure(fig, stem)


def plot_sharing_savings(points: pd.DataFrame, stem: Path, title: str = "", x: str = "n") -> list[Path]:
    """Memory saved by block sharing (%) vs parallel samples n or beam width, one line per system."""
    _need(points, [x, "sharing_savings_pct"], "sharing savings plot")
    df = points[points["status"] == "ok"] if "status" in points.columns else points
    fig = Figure(figsize=(7.5, 4.0), layout="constrained")
    ax = fig.add_subplot()
    _lines(ax, df.sort_values(x), x, "sharing_savings_pct")
    ax.set_xlabel({"n": "parallel samples n", "beam_width": "beam width"}.get(x, x))
    ax.set_ylabel("KV memory saved by sharing (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, frameon=False)
    fig.suptitle(title or "Sharing savings", fontsize=9)
    return save_figure(fig, stem)


REFCOUNT_COLUMNS: tuple[str, ...] = ("refs_1", "refs_2", "refs_3_4", "refs_5_8", "refs_gt8")


def _binned(g: pd.DataFrame, cols: Sequence[str], bins: int) -> tuple[np.ndarray, list[np.ndarray], np.ndarray]:
    """Bin edges over the samples' time span; per column the increase of a cumulative counter in each bin."""
    t = g["time_s"].to_numpy(dtype=float)
    edges = np.linspace(t[0], t[-1], bins + 1) if t[-1] > t[0] else np.array([t[0], t[0] + 1.0])
    idx = np.searchsorted(t, edges, side="right") - 1
    incs = []
    for c in cols:
        v = g[c].to_numpy(dtype=float)
        at = np.where(idx >= 0, v[np.clip(idx, 0, len(v) - 1)], 0.0)
        incs.append(np.diff(at))
    return edges, incs, np.diff(edges)


def plot_allocator_monitor(monitor: pd.DataFrame, stem: Path, title: str = "", bins: int = 60,
                           slots_per_block: Mapping[str, int] | None = None) -> list[Path]:
    """The allocator's monitoring metrics, one line (or bar) per system: KV memory in use (GiB) and the
    allocation rate over time in token slots/s (a paged block counts its `slots_per_block[system]`
    slots, a contiguous cache's unit is one slot, so paged and contiguous compare like with like), and,
    when any block was shared or reused, the share of allocations served by reuse (prefix-cache hits,
    forks) over time and the time-weighted ref-count histogram of the used blocks. Panels with nothing
    to show are left out and the title says so. Rates are binned over `bins` equal time intervals."""
    _need(monitor, ["system", "time_s", "kv_bytes_used", "blocks_allocated_total", "blocks_reused_total",
                    *REFCOUNT_COLUMNS], "allocator monitor plot")
    systems = list(dict.fromkeys(monitor["system"].astype(str)))
    unit = {sy: int((slots_per_block or {}).get(sy, 1) or 1) for sy in systems}
    shared = bool((monitor["blocks_reused_total"].fillna(0) > 0).any()
                  or (monitor[list(REFCOUNT_COLUMNS[1:])].fillna(0) > 0).any().any())
    fig = Figure(figsize=(11.0, 6.4 if shared else 3.6), layout="constrained")
    if shared:
        (a1, a2), (a3, a4) = fig.subplots(2, 2)
    else:
        a1, a2 = fig.subplots(1, 2)
    hist = np.zeros((len(systems), len(REFCOUNT_COLUMNS)))
    for i, system in enumerate(systems):
        g = monitor[monitor["system"].astype(str) == system].sort_values("time_s")
        t = g["time_s"].to_numpy(dtype=float)
        a1.step(t, g["kv_bytes_used"].to_numpy(dtype=float) / 2**30, where="post", label=system, lw=1)
        edges, (da, dr), width = _binned(g, ["blocks_allocated_total", "blocks_reused_total"], bins)
        mid = (edges[:-1] + edges[1:]) / 2
        a2.plot(mid, da * unit[system] / width, lw=1, label=system)
        if shared:
            with np.errstate(invalid="ignore", divide="ignore"):
                a3.plot(mid, np.where(da + dr > 0, 100.0 * dr / (da + dr), np.nan), lw=1, marker=".", ms=3,
                        label=system)
        w = np.diff(np.append(t, t[-1])) if len(t) > 1 else np.ones(1)
        if w.sum() <= 0:
            w = np.ones_like(t)
        rows = g[list(REFCOUNT_COLUMNS)].to_numpy(dtype=float)
        hist[i] = (rows * w[:, None]).sum(axis=0) / w.sum()
    a1.set_ylabel("KV memory in use (GiB)")
    a2.set_ylabel("allocation rate (token slots/s)")
    for ax in (a1, a2):
        ax.set_xlabel("simulated time (s)")
        ax.grid(alpha=0.3)
    a1.legend(fontsize=7, frameon=False)
    if shared:
        _reuse_panels(a3, a4, systems, hist)
    note = "" if shared else " (no block was shared or reused: reuse and ref-count panels left out)"
    fig.suptitle((title or "KV-cache allocator monitor") + note, fontsize=10)
    return save_figure(fig, stem)


def _reuse_panels(a3: Axes, a4: Axes, systems: list[str], hist: np.ndarray) -> None:
    """Reuse share over time (already drawn on a3: axes only) and the ref-count histogram bars on a4."""
    a3.set_ylabel("allocations served by reuse (%)")
    a3.set_xlabel("simulated time (s)")
    a3.grid(alpha=0.3)
    a3.set_ylim(-2, 102)
    used = hist.sum(axis=1, keepdims=True)
    share = np.divide(100.0 * hist, used, out=np.zeros_like(hist), where=used > 0)
    x = np.arange(len(systems))
    bottom = np.zeros(len(systems))
    colors = ("#2b7bba", "#59a14f", "#f4a259", "#d1495b", "#8e6c8a")
    for j, label in enumerate(("1", "2", "3-4", "5-8", ">8")):
        a4.bar(x, share[:, j], bottom=bottom, color=colors[j], label=f"{label} refs", edgecolor="white", lw=0.5)
        bottom += share[:, j]
    a4.set_xticks(x, systems, rotation=25 if len(systems) > 3 else 0, ha="right" if len(systems) > 3 else "center")
    a4.set_ylim(0, 100)
    a4.set_ylabel("used blocks by ref count (%, time-weighted)")
    a4.legend(fontsize=7, frameon=False, loc="upper left", bbox_to_anchor=(1.0, 1.0))
