"""The decode-kernel benchmark harness behind `pagesim bench`: measure every config of a grid.

Per config: build (or reuse) the decode problem of its shape, prepare the launch, time it with a
`Timer` (L2 flushed between reps when the working set would fit in it), check the output against the
float64 reference once, and append a row (see gpu.bench.output.COLUMNS) to a resumable CSV. Paged rows
carry their overhead over the contiguous kernel with the same split mode and tile size.
"""

from __future__ import annotations

import math
import zlib
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from gpu.backends.base import Backend, get_backend
from gpu.bench.device import DeviceInfo
from gpu.bench.grid import BenchConfig
from gpu.bench.output import (
    TimingsWriter,
    achieved_bandwidth,
    bandwidth_fraction,
    load_timings,
    overhead_pct,
    write_parquet,
)
from gpu.bench.timing import (
    FLUSH_POLICIES,
    CupyL2Flusher,
    Launch,
    Timer,
    TimingStats,
    should_flush,
    summarize,
)
from gpu.ops import attention
from gpu.ops.layout import gather_tokens
from gpu.ops.reference import decode_attention

#: Max |kernel - float64 reference| accepted per storage dtype on N(0, 1) data: a few units in the last
#: place of the output's storage type (outputs are O(1)), far below any real indexing/softmax bug.
TOLERANCE = {"fp32": 1e-4, "fp16": 5e-3, "bf16": 4e-2}
#: Tile size (BLOCK_SIZE define) of the visible contiguous row; block_size is 0 in the table.
CONTIGUOUS_TILE = 16
#: The reference check reads at most this many (token x query head) rows; longer batches are checked
#: on a deterministic subset of sequences (the longest, the shortest, then evenly spaced ones).
CHECK_BUDGET = 1 << 20


@dataclass(slots=True, frozen=True)
class BenchOptions:
    """How each config is measured. Invariant: reps >= 1, warmup >= 0, flush in FLUSH_POLICIES."""

    reps: int = 100
    warmup: int = 10
    flush: str = "auto"
    check: bool = True

    def check_invariants(self) -> None:
        """Raise ValueError naming the option that is out of range."""
        if self.reps < 1 or self.warmup < 0:
            raise ValueError(f"reps must be >= 1 and warmup >= 0 (got {self.reps}, {self.warmup})")
        if self.flush not in FLUSH_POLICIES:
            raise ValueError(f"flush policy must be one of {FLUSH_POLICIES} (got {self.flush!r})")


@dataclass(slots=True)
class BenchReport:
    """What a run did: the full table (resumed + new rows) and what it skipped or found wrong."""

    table: pd.DataFrame
    measured: list[str] = field(default_factory=list)
    resumed: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (config_id, reason)
    failed_checks: list[str] = field(default_factory=list)


def _problem_rng(cfg: BenchConfig, block_size: int) -> np.random.Generator:
    key = zlib.crc32(repr((cfg.shape_key, block_size)).encode())
    return np.random.default_rng([cfg.seed, key])


def check_subset(context_lens: np.ndarray, num_heads: int, budget: int = CHECK_BUDGET) -> np.ndarray:
    """Indices of the sequences the reference check covers: all when the batch has at most `budget`
    (token x head) rows, else the longest and the shortest plus evenly spaced ones while within budget."""
    lens = np.asarray(context_lens, np.int64)
    if int(lens.sum()) * num_heads <= budget:
        return np.arange(len(lens))
    order = [int(np.argmax(lens)), int(np.argmin(lens)), *np.linspace(0, len(lens) - 1, 8).astype(int).tolist()]
    chosen: list[int] = []
    used = 0
    for i in dict.fromkeys(order):
        if chosen and used + lens[i] * num_heads > budget:
            continue
        chosen.append(i)
        used += int(lens[i]) * num_heads
    return np.asarray(sorted(chosen))


@dataclass(slots=True)
class _Case:
    """A problem plus its lazily computed reference output on the checked subset."""

    problem: attention.DecodeProblem
    subset: np.ndarray
    _ref: np.ndarray | None = None

    def reference(self) -> np.ndarray:
        if self._ref is None:
            # Gather and decode only the checked sequences' tokens: decoding whole pools to float64
            # would need 4x (fp16) the KV bytes of host memory.
            p, st, idx = self.problem, self.problem.storage, self.subset
            kv = [[st.decode(gather_tokens(pool, p.block_tables[i], int(p.context_lens[i]))) for i in idx]
                  for pool in (p.k_pool, p.v_pool)]
            self._ref = decode_attention(st.decode(p.q[idx]), kv[0], kv[1], p.scale)
        return self._ref


class _Cases:
    """Problems by (shape, block size), the two most recent kept (a shape's configs run together)."""

    def __init__(self) -> None:
        self._cache: OrderedDict[tuple[object, ...], _Case] = OrderedDict()

    def get(self, cfg: BenchConfig, block_size: int) -> _Case:
        key = (cfg.shape_key, block_size)
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        p = attention.make_problem(cfg.context_lens, num_heads=cfg.num_heads, num_kv_heads=cfg.num_kv_heads,
                                   head_dim=cfg.head_dim, block_size=block_size, dtype=cfg.dtype,
                                   rng=_problem_rng(cfg, block_size))
        case = _Case(p, check_subset(p.context_lens, p.num_heads))
        self._cache[key] = case
        while len(self._cache) > 2:
            self._cache.popitem(last=False)
        return case


def working_set_bytes(p: attention.DecodeProblem, split: bool) -> int:
    """Bytes one launch touches: K/V read, q, output, block tables, lengths, split partials."""
    ws = attention.kv_bytes_read(p) + 2 * p.q.nbytes + p.block_tables.nbytes + p.context_lens.nbytes
    if split:
        ws += p.num_seqs * p.num_heads * attention.num_partitions(p) * (p.head_dim + 2) * 4
    return ws


class _Measurer:
    """Times launches with one timer, options and flusher; returns (stats, l2_flushed)."""

    def __init__(self, timer: Timer, options: BenchOptions, l2_bytes: int, flusher: Launch | None) -> None:
        self.timer, self.options, self.l2_bytes, self.flusher = timer, options, l2_bytes, flusher

    def time(self, launch: Launch, ws_bytes: int) -> tuple[TimingStats, bool]:
        flush = should_flush(ws_bytes, self.l2_bytes, self.options.flush) and self.flusher is not None
        samples = self.timer.measure(launch, reps=self.options.reps, warmup=self.options.warmup,
                                     flush=self.flusher if flush else None)
        return summarize(samples), flush


def run_bench(configs: Iterable[BenchConfig], *, backend: Backend | str, timer: Timer, device: DeviceInfo,
              out_csv: Path, options: BenchOptions | None = None, resume: bool = False, overwrite: bool = False,
              flusher: Launch | None = None,
              on_config: Callable[[BenchConfig, str], None] | None = None) -> BenchReport:
    """Measure `configs` in order, appending a row per config to `out_csv` (resume: skip config ids
    already there, which must come from the same device). Writes `out_csv` with the Parquet twin
    (same stem) at the end and returns the report. `flusher` evicts L2 (default: a CuPy buffer sized
    from device.l2_bytes on the cupy backend, none on the CPU). `on_config(cfg, status)` is called
    after each config with status "measured", "resumed" or "skipped" (a progress bar hook)."""
    opts = options or BenchOptions()
    opts.check_invariants()
    be = get_backend(backend)
    if flusher is None and be.name == "cupy" and device.l2_bytes > 0 and opts.flush != "never":
        flusher = CupyL2Flusher(device.l2_bytes)
    measurer = _Measurer(timer, opts, device.l2_bytes, flusher)
    report = BenchReport(table=pd.DataFrame())
    cases = _Cases()
    baselines: dict[tuple[str, bool, int], float] = {}  # (contiguous config_id, split, tile) -> median
    torch_reason = _torch_unavailable(be)
    with TimingsWriter(out_csv, resume=resume, overwrite=overwrite, device=device.name) as writer:
        for r in writer.done.values():  # resumed contiguous rows are baselines too
            if r["variant"] == "contiguous":
                baselines[(r["config_id"], r["split"] == "True", CONTIGUOUS_TILE)] = float(r["latency_s"])
        for cfg in configs:
            cid = cfg.config_id
            if cid in writer.done:
                report.resumed.append(cid)
                status = "resumed"
            elif cfg.variant == "torch_sdpa" and torch_reason:
                report.skipped.append((cid, torch_reason))
                status = "skipped"
            else:
                row = _measure(cfg, be, measurer, cases, baselines, device, opts)
                writer.write(row)
                report.measured.append(cid)
                status = "measured"
            if on_config is not None:
                on_config(cfg, status)
    table = load_timings(out_csv)
    write_parquet(table, out_csv.with_suffix(".parquet"))
    report.table = table
    report.failed_checks = table.loc[table["check_ok"].eq(False), "config_id"].tolist()  # resumed rows too
    return report


def _measure(cfg: BenchConfig, be: Backend, measurer: _Measurer, cases: _Cases,
             baselines: dict[tuple[str, bool, int], float], device: DeviceInfo, opts: BenchOptions) -> dict[str, Any]:
    paged = cfg.variant in ("paged", "partitioned")
    case = cases.get(cfg, cfg.block_size if paged else CONTIGUOUS_TILE)
    p = case.problem
    kv_bytes, blocks = attention.kv_bytes_read(p), attention.num_blocks_touched(p) if paged else 0
    runner: Any  # PreparedDecode or TorchSdpa: call = one launch, output() = float32 result
    if cfg.variant == "torch_sdpa":
        from gpu.bench.torch_sdpa import TorchSdpa

        runner = TorchSdpa(p)
        split, kv_bytes = False, runner.kv_bytes
    else:
        # contiguous: split or not by the rule a server applies (choose_variant); paged: by variant
        want = None if cfg.variant == "contiguous" else cfg.variant == "partitioned"
        runner = attention.prepare(p, cfg.variant, be, partitioned=want)
        split = runner.partitioned
    stats, flushed = measurer.time(runner, working_set_bytes(p, split))
    err, checked = math.nan, 0
    if opts.check:
        runner()
        out = runner.output()[case.subset]
        err, checked = float(np.max(np.abs(out - case.reference()), initial=0.0)), len(case.subset)
    del runner  # free its device buffers before a baseline is prepared
    baseline = math.nan
    contiguous_id = replace(cfg, variant="contiguous", block_size=0).config_id  # names the shape
    if cfg.variant == "contiguous":
        baselines[(contiguous_id, split, CONTIGUOUS_TILE)] = stats.median
    elif paged:
        key = (contiguous_id, split, cfg.block_size)
        if key not in baselines:
            base = attention.prepare(p, "contiguous", be, partitioned=split)
            baselines[key] = measurer.time(base, working_set_bytes(p, split))[0].median
        baseline = baselines[key]
    achieved = achieved_bandwidth(kv_bytes, stats.median)
    return {
        "variant": cfg.variant, "batch_size": cfg.batch_size, "block_size": cfg.block_size,
        "num_heads": cfg.num_heads, "num_kv_heads": cfg.num_kv_heads, "head_dim": cfg.head_dim,
        "dtype": cfg.dtype, "kv_bytes": kv_bytes, "num_blocks_touched": blocks, "latency_s": stats.median,
        "context_len_mean": float(np.mean(cfg.context_lens)), "context_len_max": cfg.context_len,
        "latency_p10_s": stats.p10, "latency_p90_s": stats.p90, "latency_std_s": stats.std, "reps": stats.reps,
        "achieved_bw_Bps": achieved, "peak_bw_Bps": device.peak_bw_Bps,
        "bw_fraction": bandwidth_fraction(achieved, device.peak_bw_Bps),
        "paged_overhead_pct": overhead_pct(stats.median, baseline) if paged else math.nan,
        "max_abs_err": err, "device": device.name, "driver": device.driver, "cuda_version": device.cuda_version,
        "cupy_version": device.cupy_version, "config_id": cfg.config_id, "context_mode": cfg.context_mode,
        "latency_min_s": stats.min, "l2_flushed": flushed,
        "check_ok": (err <= TOLERANCE[cfg.dtype]) if opts.check else "",
        "checked_seqs": checked, "split": split, "baseline_latency_s": baseline, "backend": be.name,
        "peak_bw_source": device.peak_bw_source, "seed": cfg.seed,
    }


def _torch_unavailable(be: Backend) -> str:
    """Why torch_sdpa rows cannot run here ('' when they can)."""
    if be.name != "cupy":
        return "torch_sdpa needs the cupy backend (a CUDA GPU)"
    try:
        import torch
    except ImportError:
        return "torch is not installed (pip install 'pagesim[gpu]')"
    if not torch.cuda.is_available():
        return "torch sees no CUDA device (a CPU-only torch build?)"
    return ""

