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
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

from analysis import plots
from analysis.frames import BREAKDOWN_PCT_COLUMNS
from analysis.report_sections import SWEEP_AXES, sections
from analysis.results_io import PLOTS_DIR, SUMMARY_CSV, ResultsBundle, atomic_write_text, load_results


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
            bundle.monitor, pdir / "allocator_monitor", f"KV-cache allocator monitor: {t}",
            slots_per_block=_slots_per_block(bundle.summary)))
    if not bundle.requests.empty:
        attempt("latency_cdf", lambda: plots.plot_latency_cdf(
            bundle.requests, pdir / "latency_cdf", f"Latency CDFs: {t}"))
    if not ok.empty:
        axes = _sweep_axes(bundle.config, ok)
        if "block_size" in axes:
            bs, at = _fixed_others(ok, "block_size", axes)
            attempt("block_size_sweep", lambda: plots.plot_block_size_sweep(
                bs, pdir / "block_size_sweep", f"Block-size sweep{at}: {t}"))
        if "rate" in axes:
            rt, at_r = _fixed_others(ok, "rate", axes)
            attempt("rate_sweep", lambda: plots.plot_rate_sweep(rt, pdir / "rate_sweep", f"Rate sweep{at_r}: {t}"))
        for x in ("n", "beam_width"):
            if _varies(ok, x):
                sh, at_s = _fixed_others(ok, x, [a for a in axes if a != "sampling"])
                attempt(f"sharing_{x}", functools.partial(
                    plots.plot_sharing_savings, sh, pdir / f"sharing_{x}", f"Sharing savings{at_s}: {t}", x=x))
        if _has_breakdown(ok):
            attempt("memory_breakdown", lambda: plots.plot_memory_breakdown(
                _label_points(ok, axes), pdir / "memory_breakdown", f"KV memory breakdown per sweep point: {t}"))
    return out


def _sweep_axes(config: dict[str, Any], ok: pd.DataFrame) -> list[str]:
    """The axes with more than one value: from the saved sweep config, else guessed from the columns."""
    axes = (config.get("sweep") or {}).get("axes") or {}
    if axes:
        return [a for a, v in axes.items() if isinstance(v, list) and len(v) > 1 and a in ok.columns]
    return [a for a in SWEEP_AXES if _varies(ok, a)]


def _varies(df: pd.DataFrame, col: str) -> bool:
    return col in df.columns and df[col].nunique(dropna=True) > 1


def _fixed_others(df: pd.DataFrame, x: str, axes: list[str]) -> tuple[pd.DataFrame, str]:
    """Rows with the other axes (but system) at their first value, and " at rate=1, ..." naming those
    values for the figure's title: a line plot shows one axis at a time and says which slice it is.

    Rows without a block size (contiguous caches, block_size 0) are kept whatever the block-size axis.
    """
    keep = df
    fixed = []
    for a in axes:
        if a in (x, "system") or a not in keep.columns or keep[a].nunique(dropna=True) <= 1:
            continue
        if a == "block_size":
            first = keep.loc[keep[a] > 0, a].iloc[0]
            keep = keep[(keep[a] == first) | ~(keep[a] > 0)]
        else:
            first = keep[a].dropna().iloc[0]
            keep = keep[keep[a] == first]
        fixed.append(f"{a}={_fmt(first)}")
    return keep, (" at " + ", ".join(fixed) if fixed else "")


def _slots_per_block(summary: pd.DataFrame) -> dict[str, int]:
    """system -> token slots per allocator unit (the block size; 1 for a contiguous cache's slots)."""
    if "block_size" not in summary.columns:
        return {}
    return {str(r["system"]): int(r["block_size"]) if r["block_size"] == r["block_size"] and r["block_size"] > 0
            else 1 for _, r in summary.iterrows()}


def _label_points(df: pd.DataFrame, axes: list[str]) -> pd.DataFrame:
    shown = [a for a in axes if a not in ("system", "block_size") and a in df.columns]
    out = df.copy()
    if shown:
        out["system"] = [", ".join([str(r["system"])] + [f"{a}={r[a]}" for a in shown]) for _, r in df.iterrows()]
    return out.head(24)  # a bar chart of more points is unreadable; the table has all of them


def _has_breakdown(df: pd.DataFrame) -> bool:
    return all(c in df.columns for c in BREAKDOWN_PCT_COLUMNS) and df[list(BREAKDOWN_PCT_COLUMNS)].notna().any().any()


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
    pts = bundle.points
    secs = sections(bundle, figs, _sweep_axes(bundle.config, pts[pts["status"] == "ok"]
                                              if "status" in pts.columns else pts) if not pts.empty else [])

    nav = "".join(f'<a href="#{x.id}">{html.escape(x.title)}</a>' for x in secs)
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(head)}</title>"
             f"<style>{_CSS}</style></head><body><h1>{html.escape(head)}</h1><nav>{nav}</nav>"]
    md = [f"# {head}", ""]
    for sec in secs:
        parts.append(f'<section id="{sec.id}"><h2>{html.escape(sec.title)}</h2>')
        md += [f"## {sec.title}", ""]
        if sec.text:
            parts.append("".join(f"<p>{html.escape(line)}</p>" for line in sec.text.splitlines()))
            md += [line + "  " for line in sec.text.splitlines()] + [""]
        if sec.bullets:
            parts.append("<ul>" + "".join(f"<li>{html.escape(b)}</li>" for b in sec.bullets) + "</ul>")
            md += [f"- {b}" for b in sec.bullets] + [""]
        if sec.code is not None:
            lang, body = sec.code
            parts.append(f'<pre><code class="language-{lang}">{html.escape(body)}</code></pre>')
            md += [f"```{lang}", body.rstrip("\n"), "```", ""]
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
