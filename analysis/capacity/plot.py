"""The capacity figure: each target's latency against the request rate, one line per system, the
target as a dashed line and each system's capacity (the knee: the last rate meeting every target)
marked on every panel."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

from analysis.capacity.slo import Target
from analysis.plots import save_figure


def plot_capacity(points: pd.DataFrame, capacity: pd.DataFrame, targets: Sequence[Target], stem: Path,
                  title: str = "") -> list[Path]:
    """Latency vs rate per target (log-log), knees marked; returns the files written."""
    if points.empty:
        raise ValueError("capacity plot: no evaluated points to plot")
    fig = Figure(figsize=(4.6 * len(targets), 3.8), layout="constrained")
    axes = fig.subplots(1, len(targets), squeeze=False)[0]
    colors = [f"C{i}" for i in range(10)]
    systems = list(dict.fromkeys(capacity["series"].astype(str)))
    for ax, t in zip(axes, targets, strict=True):
        for i, s in enumerate(systems):
            sub = points[points["series"] == s].sort_values("rate")
            if sub.empty:
                continue
            c = colors[i % len(colors)]
            cap = float(capacity.loc[capacity["series"] == s, "capacity_rps"].iloc[0])
            ax.plot(sub["rate"], sub[t.name], marker="o", ms=3, color=c, label=f"{s}: {cap:.3g} req/s")
            knee = sub[sub["rate"] == cap]
            if not knee.empty:
                ax.plot(knee["rate"], knee[t.name], marker="*", ms=13, color=c, mec="black", mew=0.6)
                ax.axvline(cap, color=c, ls=":", lw=0.9)
        ax.axhline(t.bound, color="black", ls="--", lw=1, label=f"target {t.bound:g}")
        ax.set_xscale("log")
        ax.set_yscale("log")
        unit = "s/token" if t.metric == "norm" else "s"
        ax.set_xlabel("request rate (req/s)")
        ax.set_ylabel(f"{t.metric} {t.stat} ({unit})")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=7, loc="upper left")
    fig.suptitle((title + "\n" if title else "") + "latency vs rate; star = capacity (knee)", fontsize=9)
    return save_figure(fig, stem)
