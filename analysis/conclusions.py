"""The answer first: plain sentences from a summary table, for the terminal and the report.

Which system holds how many more requests at once (mean batch size), where each system's memory
goes (token states vs the waste categories), throughput and latency differences that matter, block
sharing, and every rejection with its reason and what to change. Sweeps get one sentence per
swept axis instead (best value of each axis).
"""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

from analysis.rejections import rejection_lines

WASTE: tuple[tuple[str, str], ...] = (
    ("reserved", "reserved for later tokens"), ("internal_frag", "internal fragmentation"),
    ("external_frag", "external fragmentation"), ("speculative", "speculative drafts"))


def _f(v: Any) -> float:
    try:
        x = float(v)
    except (TypeError, ValueError):
        return math.nan
    return x


def memory_sentence(row: pd.Series) -> str:
    """"contig-max: 18% of the KV memory in use holds tokens; 82% is waste (61% internal ...)"."""
    used = 100.0 - _f(row.get("free_pct"))

    def of_used(cat: str) -> float:  # the *_of_used_pct column, or the pool share rescaled to the used part
        v = _f(row.get(f"{cat}_of_used_pct"))
        return v if not math.isnan(v) or not used > 0 else 100.0 * _f(row.get(f"{cat}_pct")) / used

    tok = of_used("token_states")
    if math.isnan(tok):
        return ""
    parts = sorted(((of_used(c), what) for c, what in WASTE), reverse=True)
    waste = [f"{v:.0f}% {what}" for v, what in parts if v >= 0.5]
    free = _f(row.get("free_pct"))
    tail = f"; {free:.0f}% of the pool stayed free" if not math.isnan(free) else ""
    if not waste:
        return f"{row['system']}: {tok:.0f}% of the KV memory in use holds tokens{tail}."
    return (f"{row['system']}: {tok:.0f}% of the KV memory in use holds tokens, {100 - tok:.0f}% is waste "
            f"({', '.join(waste)}){tail}.")


def conclusions(summary: pd.DataFrame, axes: tuple[str, ...] = ()) -> list[str]:
    """Plain-language findings of a summary table (rows: systems, or sweep points with `axes`)."""
    s = summary
    if "status" in s.columns:
        s = s[s["status"] == "ok"]
    if s.empty or "system" not in s.columns:
        return []
    lines: list[str] = []
    swept = [a for a in axes if a != "system" and a in s.columns and s[a].nunique(dropna=True) > 1]
    if swept:
        lines += _sweep_lines(s, swept)
    else:
        lines += _batch_lines(s)
        lines += [x for x in (memory_sentence(r) for _, r in s.iterrows()) if x]
        lines += _speed_lines(s)
        for _, r in s.iterrows():
            lines += _sharing_lines(r)
    lines += _rejections(s, swept)
    return lines


def _sharing_lines(r: pd.Series) -> list[str]:
    out = []
    share = _f(r.get("sharing_savings_pct"))
    if share > 0.05:
        out.append(f"{r['system']}: blocks shared between running sequences saved {share:.1f}% of the KV memory.")
    reused, fresh = _f(r.get("blocks_reused")), _f(r.get("blocks_allocated"))
    if reused > 0 and fresh >= 0:
        out.append(f"{r['system']}: {reused:,.0f} of {reused + fresh:,.0f} block allocations "
                   f"({100 * reused / (reused + fresh):.1f}%) were served by the prefix cache or a fork "
                   "instead of fresh memory.")
    return out


def _rejections(s: pd.DataFrame, swept: list[str]) -> list[str]:
    """Rejection lines per row; rows with the same rejections share one line ("all 4 systems: ...")."""
    by_text: dict[str, list[str]] = {}
    for _, r in s.iterrows():
        label = str(r["system"]) + "".join(f", {a}={r[a]}" for a in swept)
        for line in rejection_lines("\0", r):
            by_text.setdefault(line, []).append(label)
    out = []
    for line, labels in by_text.items():
        who = labels[0] if len(labels) == 1 else (
            f"all {len(labels)} systems" if len(labels) == len(s) else ", ".join(labels))
        out.append(line.replace("\0", who, 1))
    return out


def _batch_lines(s: pd.DataFrame) -> list[str]:
    if "mean_batch_size" not in s.columns or len(s) < 2:
        return []
    b = s.set_index("system")["mean_batch_size"].astype(float)
    best = str(b.idxmax())
    others = [(str(k), v) for k, v in b.items() if k != best and v > 0]
    if not others:
        return []
    if b[best] < 1.05 * min(v for _, v in others):  # within 5%: memory did not limit the batch
        return [f"All systems ran about as many requests at once (mean batch {b.min():.1f}-{b.max():.1f}): "
                "the KV pool did not limit the batch on this workload."]
    ratios = ", ".join(f"{v and b[best] / v:.1f}x {k} ({v:.1f})" for k, v in others)
    return [f"{best} holds the most requests at once: mean batch {b[best]:.1f}, that is {ratios}."]


def _speed_lines(s: pd.DataFrame) -> list[str]:
    out = []
    for col, what, unit, fmt in (("throughput_tps", "Throughput", "output tokens/s", "{:.0f}"),
                                 ("mean_normalized_latency_s_per_token", "Mean normalized latency",
                                  "s/token", "{:.3g}")):
        if col not in s.columns or len(s) < 2:
            continue
        v = s.set_index("system")[col].astype(float).dropna()
        if v.empty or v.min() <= 0 or v.max() / v.min() < 1.05:
            continue
        out.append(f"{what}: " + ", ".join(f"{k} {fmt.format(x)}" for k, x in v.items()) + f" {unit}.")
    return out


def _sweep_lines(s: pd.DataFrame, swept: list[str]) -> list[str]:
    """Per plotted series (paged, max, ...): where its mean batch is largest and smallest over the grid."""
    out = []
    key = "series" if "series" in s.columns else "system"
    for name, g in s.groupby(key, sort=False):
        if "mean_batch_size" not in g.columns or not g["mean_batch_size"].notna().any():
            continue
        b = g["mean_batch_size"].astype(float)
        hi, lo = g.loc[b.idxmax()], g.loc[b.idxmin()]

        def where(r: pd.Series) -> str:
            return ", ".join(f"{a}={r[a]:g}" if isinstance(r[a], float) else f"{a}={r[a]}"
                             for a in swept if not (a == "block_size" and not r[a]))

        tok = _f(hi.get("token_states_of_used_pct"))
        mem = not math.isnan(tok)
        line = f"{name}: the largest mean batch, {float(hi['mean_batch_size']):.1f}, is at {where(hi) or 'every point'}"
        line += f" ({tok:.0f}% of the used memory holds tokens there)" if mem else ""
        if len(g) > 1 and where(lo) != where(hi):
            line += f"; the smallest, {float(lo['mean_batch_size']):.1f}, at {where(lo)}"
        out.append(line + ".")
    return out
