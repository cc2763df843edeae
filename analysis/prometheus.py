"""Run totals in the Prometheus text exposition format (version 0.0.4), so dashboards built for a
serving system's allocator metrics can read a simulated run.

`prometheus_text(rows)` turns summary rows (one per system: summary.csv / `analysis.frames.summary_row`)
into metric families: `# HELP` and `# TYPE` lines, then one sample per system labelled
`system="..."`. Counters end in `_total`; gauges are time-weighted means over the run unless their
help says otherwise; the ref-count histogram is a gauge family with a `refs` bucket label.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sim.records.results import MEMORY_CATEGORIES, REFCOUNT_BUCKETS

METRICS_FORMATS: tuple[str, ...] = ("none", "prometheus")
METRICS_FILE = "metrics.prom"


@dataclass(frozen=True, slots=True)
class Metric:
    """One metric family: name, type (counter/gauge), help, and (extra labels, summary key, scale) per sample."""

    name: str
    type: str
    help: str
    samples: tuple[tuple[tuple[tuple[str, str], ...], str, float], ...]


def _one(name: str, type_: str, help_: str, key: str, scale: float = 1.0) -> Metric:
    return Metric(name, type_, help_, (((), key, scale),))


def _by(name: str, type_: str, help_: str, label: str, pairs: Iterable[tuple[str, str]], scale: float = 1.0) -> Metric:
    return Metric(name, type_, help_, tuple((((label, v),), key, scale) for v, key in pairs))


_DIRS = (("out", "out"), ("in", "in"))
METRICS: tuple[Metric, ...] = (
    _one("pagesim_kv_pool_blocks", "gauge", "KV pool size (paged: blocks; contiguous: token slots).", "pool_blocks"),
    _one("pagesim_kv_free_blocks", "gauge", "Free KV blocks (time-weighted mean).", "mean_free_blocks"),
    _one("pagesim_kv_free_blocks_min", "gauge", "Fewest free KV blocks at any sample.", "min_free_blocks"),
    _one("pagesim_kv_memory_used_bytes", "gauge", "KV memory held by sequences, bytes (time-weighted mean).",
         "mean_kv_bytes_used"),
    _one("pagesim_kv_memory_used_bytes_peak", "gauge", "Most KV memory held at any sample, bytes.",
         "peak_kv_bytes_used"),
    _one("pagesim_kv_blocks_allocated_total", "counter",
         "Block-table entries filled with a fresh block from the pool (copy-on-write copies included).",
         "blocks_allocated"),
    _one("pagesim_kv_blocks_reused_total", "counter",
         "Block-table entries served by an existing block (prefix-cache hit or fork).", "blocks_reused"),
    _one("pagesim_kv_allocation_rate_blocks_per_second", "gauge",
         "Fresh blocks allocated per simulated second, over the whole run.", "alloc_rate_blocks_per_s"),
    _one("pagesim_kv_reuse_ratio", "gauge", "Share of block allocations served by reuse, over the whole run.",
         "reuse_rate"),
    _by("pagesim_kv_fragmentation_ratio", "gauge",
        "Fragmentation as a share of the KV pool (time-weighted): internal = allocated, never used "
        "(stale sliding-window slots included); external = free slots the next waiting request cannot use.",
        "kind", (("internal", "internal_frag_pct"), ("external", "external_frag_pct")), 0.01),
    _by("pagesim_kv_memory_share_ratio", "gauge", "Share of the KV pool per hindsight category (time-weighted).",
        "category", ((c, f"{c}_pct") for c in MEMORY_CATEGORIES), 0.01),
    _by("pagesim_kv_blocks_by_refcount", "gauge",
        "Used KV blocks by the number of block-table entries referencing them (time-weighted mean).",
        "refs", zip(REFCOUNT_BUCKETS, ("mean_refs_1", "mean_refs_2", "mean_refs_3_4", "mean_refs_5_8",
                                       "mean_refs_gt8"), strict=True)),
    _one("pagesim_kv_cow_copies_total", "counter", "Copy-on-write block copies.", "num_cows"),
    _by("pagesim_kv_swap_blocks_total", "counter", "KV blocks swapped between GPU and host.", "direction",
        (("out", "swap_out_blocks"), ("in", "swap_in_blocks"))),
    _by("pagesim_kv_swap_bytes_total", "counter", "Bytes swapped between GPU and host.", "direction",
        (("out", "swap_out_bytes"), ("in", "swap_in_bytes"))),
    _by("pagesim_kv_swap_transfer_seconds_total", "counter", "PCIe transfer time of the swaps, seconds.",
        "direction", (("out", "swap_out_s"), ("in", "swap_in_s"))),
    _one("pagesim_kv_swap_exposed_seconds_total", "counter",
         "Swap transfer time on the steps' critical path, seconds.", "swap_exposed_s"),
    _one("pagesim_kv_swap_fallbacks_total", "counter", "Swap preemptions done by recompute (host pool full).",
         "num_swap_fallbacks"),
    _one("pagesim_kv_prefetch_total", "counter", "Swap-ins issued as prefetches.", "num_prefetches"),
    _one("pagesim_kv_prefetch_hidden_total", "counter",
         "Prefetched swap-ins whose transfer ended within the forward pass.", "num_prefetch_hidden"),
    _one("pagesim_kv_window_released_blocks_total", "counter",
         "Block-table entries released by the sliding window.", "window_released_blocks"),
    _one("pagesim_preemptions_total", "counter", "Sequence-group preemptions.", "num_preemptions"),
    _by("pagesim_requests_total", "counter", "Requests by final status.", "status",
        (("finished", "num_finished"), ("aborted", "num_aborted"), ("rejected", "num_rejected"))),
    _one("pagesim_scheduler_steps_total", "counter", "Scheduler steps (forward passes).", "num_steps"),
    _one("pagesim_simulated_seconds", "gauge", "Simulated time from the first arrival to the end.", "duration_s"),
    _one("pagesim_throughput_tokens_per_second", "gauge", "Output tokens per simulated second.", "throughput_tps"),
)


def _label(v: str) -> str:
    return v.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _value(v: Any) -> str | None:
    """The sample value as the format writes it; None when the row has no number there."""
    if isinstance(v, bool) or v is None:
        return None
    if isinstance(v, int):
        return str(v)
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    if math.isnan(f):
        return "NaN"
    if math.isinf(f):
        return "+Inf" if f > 0 else "-Inf"
    return str(int(f)) if f.is_integer() and abs(f) < 2**53 else repr(f)


def prometheus_text(rows: Iterable[Mapping[str, Any]]) -> str:
    """The exposition text of summary rows (each needs `system`). A system listed twice gets
    `#2`, `#3` appended so every series stays unique. Missing values are left out; counters are never
    written as NaN."""
    rows = list(rows)
    names: list[str] = []
    for r in rows:
        base = str(r.get("system", "run"))
        name, k = base, 2
        while name in names:
            name, k = f"{base}#{k}", k + 1
        names.append(name)
    lines: list[str] = []
    for m in METRICS:
        body: list[str] = []
        for row, system in zip(rows, names, strict=True):
            for extra, key, scale in m.samples:
                v = row.get(key)
                if v is not None and not isinstance(v, (bool, str)) and scale != 1.0:
                    v = float(v) * scale
                text = _value(v)
                if text is None or (m.type == "counter" and text == "NaN"):
                    continue
                labels = ",".join(f'{k}="{_label(x)}"' for k, x in (("system", system), *extra))
                body.append(f"{m.name}{{{labels}}} {text}")
        if body:
            lines += [f"# HELP {m.name} {m.help}", f"# TYPE {m.name} {m.type}", *body]
    return "\n".join(lines) + "\n"


def write_metrics(out_dir: Path, rows: Iterable[Mapping[str, Any]], fmt: str) -> Path | None:
    """Write the run totals in `fmt` ("prometheus": <out_dir>/metrics.prom); "none" writes nothing."""
    check_format(fmt)
    if fmt == "none":
        return None
    from analysis.results_io import atomic_write_text

    path = Path(out_dir) / METRICS_FILE
    atomic_write_text(path, prometheus_text(rows))
    return path


def check_format(fmt: str) -> None:
    """ValueError naming the valid choices for an unknown metrics format."""
    if fmt not in METRICS_FORMATS:
        raise ValueError(f"metrics format {fmt!r} unknown (valid: {', '.join(METRICS_FORMATS)})")
