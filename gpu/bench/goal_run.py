"""Run the `goal` decode benchmark: per shape, build the problem on the device, check paged against
contiguous (and one sequence against the float64 reference), time both in alternating rounds, and
report bandwidth beside the data-sheet peak and a measured read ceiling (gpu/kernels/bandwidth.cu).

    python -m gpu.bench.goal_run OUTDIR [--dry-run] [--budget-s 270]

writes OUTDIR/timings.csv (one row per shape and variant), OUTDIR/verdict.md and OUTDIR/calibration.json
(gpu.calibration.kernels.fit_roofline over the rows). `--dry-run` runs the
tiny grid on the CPU shim (wall-clock timer, no peak): the same code path end to end.
Uses only NumPy and the standard library besides CuPy (a bare GPU machine may lack pandas).
"""

from __future__ import annotations

import argparse
import csv
import functools
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from gpu.backends.base import Backend, get_backend
from gpu.bench.goal import DeviceDecode, GoalShape, build_problem, goal_shapes
from gpu.bench.timing import CudaEventTimer, Timer, WallTimer

COLUMNS = ("shape_id", "variant", "batch", "context", "num_heads", "num_kv_heads", "head_dim", "block_size",
           "kv_dtype", "kv_bytes", "latency_s", "latency_p10_s", "latency_p90_s", "samples", "achieved_bw_Bps",
           "peak_bw_Bps", "ceiling_bw_Bps", "bw_fraction_peak", "bw_fraction_ceiling", "paged_overhead_pct",
           "partition_size", "partitions", "num_ctas", "ctas_per_sm", "num_sms", "waves", "tiles_per_cta",
           "threads", "query_group", "max_paged_contig_diff", "ref_err", "device", "backend", "note")
DRY_RUN_SMS = 132  # the dry run plans splits for an H100-sized GPU (the shim has no SMs)


def _timer(backend: Backend) -> Timer:
    return CudaEventTimer() if backend.name == "cupy" else WallTimer(backend.synchronize)


def read_ceiling(backend: Backend, nbytes: int, num_sms: int, timer: Timer, reps: int = 10) -> float:
    """Bytes/s of the plain read kernel over an nbytes buffer (the best a streaming reader gets)."""
    xp = backend.xp
    n16 = nbytes // 16
    src = xp.zeros((n16, 4), dtype=np.uint32)
    sink = xp.zeros((1,), dtype=np.uint32)
    fn = backend.module("bandwidth.cu", {}).get_function("read_stream")
    grid = (max(1, num_sms * 8 if backend.name == "cupy" else 4),)
    args = (src, np.int64(n16), np.uint32(0xDEADBEEF), sink)
    samples = timer.measure(lambda: fn(grid, (256,), args), reps=reps, warmup=2)
    return float(n16 * 16 / np.median(samples))


def alternating(launches: dict[str, Callable[[], None]], timer: Timer, *, rounds: int, reps: int) -> dict[str, np.ndarray]:
    """Time each launch `reps` times per round, the order flipped every round (paged, contiguous, then
    contiguous, paged, ...), so drift in clocks or temperature hits both alike."""
    names = list(launches)
    out: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        for n in (names if r % 2 == 0 else names[::-1]):
            out[n] += list(timer.measure(launches[n], reps=reps, warmup=1 if r else 3))
    return {n: np.asarray(v) for n, v in out.items()}


def _device_facts(backend: Backend) -> tuple[str, int, float, int]:
    """(device name, SM count, data-sheet peak bytes/s or NaN, free memory bytes)."""
    from gpu.bench.device import detect_device

    if backend.name != "cupy":
        return "cpu-shim", DRY_RUN_SMS, math.nan, 1 << 62
    import cupy

    info = detect_device("cupy")
    props = cupy.cuda.runtime.getDeviceProperties(0)
    free, _total = cupy.cuda.runtime.memGetInfo()
    return info.name, int(props["multiProcessorCount"]), info.peak_bw_Bps, int(free)


def _registers(dd: DeviceDecode) -> int | None:
    try:  # CuPy RawKernel attributes; the shim has none
        return int(dd._fn["paged"].attributes["num_regs"])
    except Exception:
        return None


def measure_shape(backend: Backend, shape: GoalShape, *, num_sms: int, timer: Timer, rounds: int,
                  target_s: float, notes: list[str] | None = None) -> list[dict[str, Any]]:
    """Rows of one shape: paged and contiguous (same split), checked, timed in alternating rounds, plus
    FlashInfer's kernel where installed (else its reason goes to `notes`, once)."""
    prob = build_problem(backend.xp, shape)
    dd = DeviceDecode(backend, shape, prob, num_sms=num_sms)
    regs = _registers(dd)
    if regs is not None:  # re-plan the split with the compiled register count
        dd = DeviceDecode(backend, shape, prob, num_sms=num_sms, registers=regs)
    for v in ("paged", "contiguous"):
        dd.launch(v)
    diff, ref_err = dd.max_paged_contiguous_diff(), dd.reference_error(0)
    once = float(np.median(timer.measure(lambda: dd.launch("paged"), reps=2, warmup=1)))
    reps = int(min(50, max(3, target_s / rounds / 2 / max(once, 1e-9))))
    launches: dict[str, Callable[[], None]] = {v: functools.partial(dd.launch, v) for v in ("paged", "contiguous")}
    fi_diff = _add_flashinfer(backend, shape, prob, dd, launches, notes)
    samples = alternating(launches, timer, rounds=rounds, reps=reps)
    slots = num_sms * dd.ctas_per_sm
    rows = []
    for v, s in samples.items():
        rows.append({
            "shape_id": shape.shape_id, "variant": v, "batch": shape.batch, "context": shape.context,
            "num_heads": shape.num_heads, "num_kv_heads": shape.num_kv_heads, "head_dim": shape.head_dim,
            "block_size": shape.block_size, "kv_dtype": shape.kv_dtype, "kv_bytes": shape.kv_bytes,
            "latency_s": float(np.median(s)), "latency_p10_s": float(np.percentile(s, 10)),
            "latency_p90_s": float(np.percentile(s, 90)), "samples": len(s),
            "partition_size": dd.partition_size, "partitions": dd.parts, "num_ctas": dd.num_ctas,
            "ctas_per_sm": dd.ctas_per_sm, "num_sms": num_sms, "waves": -(-dd.num_ctas // slots),
            "tiles_per_cta": dd.tiles_per_cta, "threads": dd.geometry.threads, "query_group": dd.geometry.group,
            "max_paged_contig_diff": fi_diff if v == "flashinfer" else diff, "ref_err": ref_err,
            "backend": backend.name, "note": "max_paged_contig_diff: |flashinfer - paged|" if v == "flashinfer" else "",
        })
    return rows


def _add_flashinfer(backend: Backend, shape: GoalShape, prob: Any, dd: DeviceDecode,
                    launches: dict[str, Callable[[], None]], notes: list[str] | None) -> float:
    """Add FlashInfer's launch when it can run; returns max |its output - paged| (NaN when absent)."""
    from gpu.bench import flashinfer_baseline as fi

    reason = fi.unavailable(backend.name, shape)
    if not reason:
        try:
            launch, output = fi.make_launch(shape, prob)
            launch()
            xp = backend.xp
            out = xp.from_dlpack(output()).astype(np.float32)
            launches["flashinfer"] = launch
            return float(xp.max(xp.abs(out - dd.out["paged"].astype(np.float32))))
        except Exception as e:  # an API drift in an optional baseline must not stop the check
            reason = f"flashinfer baseline failed: {type(e).__name__}: {e}"
    if notes is not None and reason not in notes:
        notes.append(reason)
    return math.nan


def finish_rows(rows: list[dict[str, Any]], device: str, peak: float, ceiling: float) -> None:
    """Fill bandwidths, fractions and the paged-over-contiguous overhead in place."""
    contig = {r["shape_id"]: r["latency_s"] for r in rows if r["variant"] == "contiguous"}
    for r in rows:
        bw = r["kv_bytes"] / r["latency_s"]
        r |= {"achieved_bw_Bps": bw, "peak_bw_Bps": peak, "ceiling_bw_Bps": ceiling,
              "bw_fraction_peak": bw / peak if peak > 0 else math.nan,
              "bw_fraction_ceiling": bw / ceiling if ceiling > 0 else math.nan, "device": device,
              "paged_overhead_pct": (100 * (r["latency_s"] / contig[r["shape_id"]] - 1)
                                     if r["variant"] == "paged" and r["shape_id"] in contig else math.nan)}


def write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)


def _pct(x: float) -> str:
    return "n/a" if not math.isfinite(x) else f"{100 * x:.0f}%"


def verdict(rows: list[dict[str, Any]], device: str, peak: float, ceiling: float, skipped: list[str]) -> str:
    """Markdown: bandwidth fraction per shape (of peak and of the read ceiling), paged overhead."""
    lines = [f"# Decode goal grid on {device}", "",
             f"Peak (data sheet): {peak / 1e12:.2f} TB/s; measured read ceiling (bandwidth.cu read_stream): "
             f"{ceiling / 1e12:.3f} TB/s ({_pct(ceiling / peak) if peak > 0 else 'n/a'} of peak).", "",
             "| shape | split | CTAs x waves | paged % peak | paged % ceiling | contiguous % peak | "
             "paged overhead | flashinfer % peak | max paged-contig diff | ref err |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    by = {(r["shape_id"], r["variant"]): r for r in rows}
    for sid in dict.fromkeys(r["shape_id"] for r in rows):
        p, c = by[(sid, "paged")], by[(sid, "contiguous")]
        f = by.get((sid, "flashinfer"))
        lines.append(f"| {sid} | {p['partitions']} x {p['partition_size']} | {p['num_ctas']} x {p['waves']} | "
                     f"{_pct(p['bw_fraction_peak'])} | {_pct(p['bw_fraction_ceiling'])} | "
                     f"{_pct(c['bw_fraction_peak'])} | {p['paged_overhead_pct']:+.1f}% | "
                     f"{_pct(f['bw_fraction_peak']) if f else '-'} | "
                     f"{p['max_paged_contig_diff']:.2g} | {p['ref_err']:.2g} |")
    paged = [by[(s, "paged")] for s in dict.fromkeys(r["shape_id"] for r in rows)]
    fr = [r["bw_fraction_peak"] for r in paged if math.isfinite(r["bw_fraction_peak"])]
    ov = [r["paged_overhead_pct"] for r in paged]
    lines += ["", f"Shapes: {len(paged)}; paged bandwidth fraction of peak: "
              + (f"median {_pct(float(np.median(fr)))}, min {_pct(min(fr))}" if fr else "n/a (no peak)")
              + (f"; paged overhead median {np.median(ov):+.1f}%, max {max(ov):+.1f}%" if ov else "")]
    if skipped:
        lines += ["", "Skipped / not run:", *(f"- {s}" for s in skipped)]
    return "\n".join(lines) + "\n"


def run_goal(out_dir: Path, *, backend: str = "auto", dry_run: bool = False, budget_s: float = 270.0,
             rounds: int = 3, log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Measure the goal grid (or the dry-run grid) into out_dir/timings.csv and out_dir/verdict.md,
    stopping new shapes once budget_s has passed (the rest are listed as skipped)."""
    be = get_backend("cpu" if dry_run else backend)
    t0 = time.perf_counter()
    timer = _timer(be)
    device, num_sms, peak, free = _device_facts(be)
    ceiling = read_ceiling(be, (1 << 22) if be.name != "cupy" else min(4 << 30, free // 4), num_sms, timer)
    log(f"{device}: {num_sms} SMs, peak {peak / 1e12:.2f} TB/s, read ceiling {ceiling / 1e12:.3f} TB/s")
    shapes = goal_shapes(dry_run=dry_run)
    rows: list[dict[str, Any]] = []
    skipped: list[str] = []
    notes: list[str] = []  # why an optional baseline did not run
    per_shape = budget_s / max(len(shapes), 1) / 4  # a quarter of a shape's share goes to timing
    for shape in shapes:
        if time.perf_counter() - t0 > budget_s:
            skipped.append(f"{shape.shape_id}: time budget ({budget_s:.0f} s) spent")
            continue
        if shape.footprint_bytes() > 0.8 * free:
            skipped.append(f"{shape.shape_id}: needs {shape.footprint_bytes() / 2**30:.1f} GiB, "
                           f"{free / 2**30:.1f} GiB free")
            continue
        rows += measure_shape(be, shape, num_sms=num_sms, timer=timer, rounds=rounds,
                              target_s=per_shape if be.name == "cupy" else 0.0, notes=notes)
        if be.name == "cupy":
            import cupy

            cupy.get_default_memory_pool().free_all_blocks()
        by_v = {r["variant"]: r["latency_s"] for r in rows if r["shape_id"] == shape.shape_id}
        log(f"{shape.shape_id}: " + ", ".join(f"{v} {t * 1e6:.1f} us" for v, t in by_v.items())
            + f" ({time.perf_counter() - t0:.0f} s)")
    finish_rows(rows, device, peak, ceiling)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_csv(rows, out_dir / "timings.csv")
    (out_dir / "verdict.md").write_text(verdict(rows, device, peak, ceiling, skipped + notes))
    if rows:
        from gpu.calibration.kernels import fit_roofline, write_roofline

        write_roofline(fit_roofline(rows, device=device) | {"read_ceiling_Bps": ceiling, "peak_bw_Bps": peak},
                       out_dir / "calibration.json")
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out_dir", type=Path)
    ap.add_argument("--dry-run", action="store_true", help="tiny shapes on the CPU shim")
    ap.add_argument("--backend", default="auto", choices=("auto", "cupy", "cpu"))
    ap.add_argument("--budget-s", type=float, default=270.0, help="stop starting shapes after this (s)")
    a = ap.parse_args(argv)
    if a.budget_s <= 0:
        print(f"--budget-s = {a.budget_s}: must be > 0 seconds", file=sys.stderr)
        return 2
    rows = run_goal(a.out_dir, backend=a.backend, dry_run=a.dry_run, budget_s=a.budget_s,
                    rounds=2 if a.dry_run else 3)
    bad = [r["shape_id"] for r in rows if not r["max_paged_contig_diff"] <= 1e-2 or not r["ref_err"] <= 0.05]
    if bad:
        print(f"output check failed for {', '.join(sorted(set(bad)))}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
