"""`pagesim bench`: time the decode-attention kernels over a grid on a GPU (gpu.bench.harness).

Writes <out>/timings.csv (one row per config, appended as measured; `--resume` continues it),
<out>/timings.parquet and <out>/plots/. Without a GPU it exits 2 unless `--backend cpu` asks for the
CPU shim, which exercises the harness but gives meaningless timings. Bad options exit 2 with one line.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from analysis.cli.errors import fail

NO_GPU = ("pagesim bench needs a CUDA GPU (none found: {reason}); use --backend cpu to exercise the harness "
          "on the CPU shim (timings then mean nothing)")
# (reps, warmup) per backend when not given: CUDA events resolve microseconds, the CPU shim is slow.
DEFAULT_REPS = {"cupy": (100, 10), "cpu": (3, 1)}



def gpu_absent_reason() -> str:
    """Why no CUDA GPU is usable here ('' when one is), in the words of CuPy/CUDA."""
    try:
        import cupy

        n = cupy.cuda.runtime.getDeviceCount()
    except ImportError as e:
        return f"CuPy is not installed ({e})"
    except Exception as e:  # CUDARuntimeError: no driver, no device, ...
        return f"{type(e).__name__}: {e}".strip()
    return "" if n > 0 else "CUDA reports 0 devices"


def _ints(opt: str, text: str) -> tuple[int, ...]:
    try:
        vals = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise fail("bench", f"{opt} {text!r}: expected comma-separated integers, e.g. 1,8,32") from None
    if not vals or min(vals) < 1:
        raise fail("bench", f"{opt} {text!r}: expected integers >= 1")
    return vals


def _words(opt: str, text: str, valid: tuple[str, ...]) -> tuple[str, ...]:
    vals = tuple(x.strip() for x in text.split(",") if x.strip())
    bad = [v for v in vals if v not in valid]
    if not vals or bad:
        raise fail("bench", f"{opt} {text!r}: {bad[0] if bad else 'empty'} is not one of {', '.join(valid)}")
    return vals


def _heads(text: str) -> tuple[tuple[int, int], ...]:
    out = []
    for item in (x.strip() for x in text.split(",") if x.strip()):
        h, _, kv = item.partition(":")
        try:
            pair = (int(h), int(kv or h))
        except ValueError:
            raise fail("bench", f"--heads {text!r}: {item!r} is not HEADS or HEADS:KV_HEADS (e.g. 32:8)") from None
        if min(pair) < 1 or pair[0] % pair[1]:
            raise fail("bench", f"--heads {text!r}: {item!r} needs heads >= 1 and a multiple of kv heads >= 1")
        out.append(pair)
    if not out:
        raise fail("bench", "--heads: empty (e.g. 32:8,32:32)")
    return tuple(out)


def build_grid(name: str, seed: int | None = None, **axes: str | None) -> Any:
    """The named grid with the given axis overrides (comma-separated text), checked against what the
    kernels are built for; exits 2 naming the option on bad input."""
    from gpu.bench.grid import ALL_VARIANTS, CONTEXT_MODES, DTYPES, GRIDS
    from gpu.ops.layout import SUPPORTED_BLOCK_SIZES, SUPPORTED_HEAD_DIMS

    if name not in GRIDS:
        raise fail("bench", f"--grid {name!r}: valid are {', '.join(GRIDS)}")
    parse = {"variants": lambda t: _words("--variants", t, ALL_VARIANTS),
             "batch_sizes": lambda t: _ints("--batch-sizes", t),
             "context_lens": lambda t: _ints("--context-lens", t),
             "context_modes": lambda t: _words("--context-modes", t, CONTEXT_MODES),
             "block_sizes": lambda t: _ints("--block-sizes", t),
             "heads": _heads,
             "head_dims": lambda t: _ints("--head-dims", t),
             "dtypes": lambda t: _words("--dtypes", t, DTYPES)}
    changes: dict[str, Any] = {k: parse[k](v) for k, v in axes.items() if k in parse and v is not None}
    if seed is not None:
        changes["seed"] = seed
    grid = dataclasses.replace(GRIDS[name], **changes)
    for opt, vals, ok in (("--block-sizes", grid.block_sizes, SUPPORTED_BLOCK_SIZES),
                          ("--head-dims", grid.head_dims, SUPPORTED_HEAD_DIMS)):
        bad = [v for v in vals if v not in ok]
        if bad:
            raise fail("bench", f"{opt}: {bad[0]} is not supported by the kernels (valid: {', '.join(map(str, ok))})")
    try:
        grid.check_invariants()
    except ValueError as e:
        raise fail("bench", str(e)) from None
    return grid


def bench(
    quick: Annotated[bool, typer.Option("--quick", help="The 'quick' grid (under two minutes on one GPU; "
                                        "'tiny' on --backend cpu).")] = False,
    grid_name: Annotated[str | None, typer.Option("--grid", help="Named grid: full, quick, goal, tiny "
                                                  "(default full; tiny on --backend cpu).")] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Output directory.")] = Path("results/bench"),
    resume: Annotated[bool, typer.Option("--resume", help="Continue <out>/timings.csv, skipping finished configs.")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing <out>/timings.csv.")] = False,
    peak_bw: Annotated[float | None, typer.Option("--peak-bw", help="Peak HBM bandwidth in GB/s (default: "
                                                  "the GPU preset matching the device name).")] = None,
    backend: Annotated[str, typer.Option("--backend", help="cupy (a CUDA GPU) or cpu (the CPU shim).")] = "cupy",
    reps: Annotated[int | None, typer.Option("--reps", help="Timed repetitions per config (default 100; 3 on cpu).")] = None,
    warmup: Annotated[int | None, typer.Option("--warmup", help="Untimed launches first (default 10; 1 on cpu).")] = None,
    flush: Annotated[str, typer.Option("--flush", help="L2 flush between reps: auto (when the working set "
                                       "fits in 2x L2), always, never.")] = "auto",
    check: Annotated[bool, typer.Option("--check/--no-check", help="Check each config against the float64 "
                                        "reference.")] = True,
    variants: Annotated[str | None, typer.Option("--variants", help="e.g. paged,partitioned,contiguous,torch_sdpa")] = None,
    batch_sizes: Annotated[str | None, typer.Option("--batch-sizes", help="e.g. 1,8,32")] = None,
    context_lens: Annotated[str | None, typer.Option("--context-lens", help="Longest context per batch, e.g. 512,2048")] = None,
    context_modes: Annotated[str | None, typer.Option("--context-modes", help="fixed and/or mixed (lengths "
                                                      "uniform on [1, L], one at L)")] = None,
    block_sizes: Annotated[str | None, typer.Option("--block-sizes", help="e.g. 8,16,32")] = None,
    heads: Annotated[str | None, typer.Option("--heads", help="HEADS:KV_HEADS pairs, e.g. 32:8,32:32")] = None,
    head_dims: Annotated[str | None, typer.Option("--head-dims", help="e.g. 128 (kernels: 64, 128, 256)")] = None,
    dtypes: Annotated[str | None, typer.Option("--dtypes", help="fp16, bf16, fp32")] = None,
    seed: Annotated[int | None, typer.Option("--seed", help="Seed of the mixed lengths and the data.")] = None,
    plots: Annotated[bool, typer.Option("--plots/--no-plots", help="Draw figures into <out>/plots.")] = True,
    gemm: Annotated[str | None, typer.Option("--gemm", help="Also time this model's linear-layer GEMMs with torch "
                                             "(e.g. llama-2-7b) into <out>/gemm_timings.csv.")] = None,
    gemm_tp: Annotated[int, typer.Option("--gemm-tensor-parallel", help="Per-GPU shapes at this TP degree.")] = 1,
    gemm_tokens: Annotated[str | None, typer.Option("--gemm-tokens", help="Token counts, e.g. 1,16,128,1024 "
                                                    "(default 1..4096, 22 points).")] = None,
    gemm_only: Annotated[bool, typer.Option("--gemm-only", help="Time only the GEMMs (no kernel grid).")] = False,
) -> None:
    """Time the paged / partitioned / contiguous decode kernels (and torch SDPA) over a grid; with --gemm,
    also the model's linear-layer GEMMs (the input of the GEMM curve fit, `pagesim calibrate`)."""
    from gpu.bench.timing import FLUSH_POLICIES

    if backend not in DEFAULT_REPS:
        raise fail("bench", f"--backend {backend!r}: valid are cupy, cpu")
    if flush not in FLUSH_POLICIES:
        raise fail("bench", f"--flush {flush!r}: valid are {', '.join(FLUSH_POLICIES)}")
    if peak_bw is not None and not (peak_bw > 0 and math.isfinite(peak_bw)):
        raise fail("bench", f"--peak-bw {peak_bw}: expected a bandwidth in GB/s > 0")
    if resume and overwrite:
        raise fail("bench", "--resume and --overwrite exclude each other")
    n_reps, n_warm = DEFAULT_REPS[backend]
    n_reps, n_warm = reps if reps is not None else n_reps, warmup if warmup is not None else n_warm
    if n_reps < 1 or n_warm < 0:
        raise fail("bench", f"--reps {n_reps} / --warmup {n_warm}: need reps >= 1 and warmup >= 0")
    name = "tiny" if backend == "cpu" else "full"
    if quick:
        if grid_name is not None and grid_name not in ("quick", "tiny"):
            raise fail("bench", f"--quick and --grid {grid_name} exclude each other")
        name = "tiny" if backend == "cpu" else "quick"
    name = grid_name or name
    grid = build_grid(name, variants=variants, batch_sizes=batch_sizes, context_lens=context_lens,
                      context_modes=context_modes, block_sizes=block_sizes, heads=heads, head_dims=head_dims,
                      dtypes=dtypes, seed=seed)
    plan = _gemm_plan(gemm, gemm_tp, gemm_tokens, gemm_only)
    if not gemm_only:
        if backend == "cupy" and (reason := gpu_absent_reason()):
            raise fail("bench", NO_GPU.format(reason=reason))
        _run(grid, backend, out, resume, overwrite, peak_bw, n_reps, n_warm, flush, check, plots)
    if plan is not None:
        _run_gemm(*plan, out, reps if reps is not None else 50, warmup if warmup is not None else 5)


def _gemm_plan(gemm: str | None, tp: int, tokens: str | None, only: bool) -> tuple[Any, int, tuple[int, ...]] | None:
    """(model, tp, token counts) of the GEMM timing, checked (exit 2 naming the option); None without --gemm."""
    from gpu.bench.gemm import DEFAULT_TOKENS
    from sim.presets import SpecError, check_tensor_parallel, get_model

    if gemm is None:
        if only:
            raise fail("bench", "--gemm-only needs --gemm MODEL")
        return None
    try:
        model = get_model(gemm)
        check_tensor_parallel(model, tp)
    except SpecError as e:
        raise fail("bench", f"--gemm: {e}") from None
    return model, tp, _ints("--gemm-tokens", tokens) if tokens else DEFAULT_TOKENS


def _run_gemm(model: Any, tp: int, tokens: tuple[int, ...], out: Path, reps: int, warmup: int) -> None:
    try:
        import torch

        ok = torch.cuda.is_available()
    except ImportError:
        ok = False
    if not ok:
        raise fail("bench", "--gemm needs torch with a CUDA GPU (pip install torch; none usable here)")
    from gpu.bench.gemm import bench_gemm

    df = bench_gemm(model, tp, tokens, reps=reps, warmup=warmup)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "gemm_timings.csv"
    df.to_csv(path, index=False)
    Console().print(f"timed {len(df)} GEMMs of {model.name} (tp {tp}) on {df['device'].iloc[0]}; wrote {path} "
                    f"(fit: pagesim calibrate {path} --gpu GPU -o params.json)")


def _run(grid: Any, backend: str, out: Path, resume: bool, overwrite: bool, peak_bw: float | None, reps: int,
         warmup: int, flush: str, check: bool, plots: bool) -> None:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from gpu.bench.device import detect_device
    from gpu.bench.harness import BenchOptions, run_bench
    from gpu.bench.output import OutputError
    from gpu.bench.timing import CudaEventTimer, Timer, WallTimer
    from gpu.errors import KernelInputError

    console = Console(stderr=True)
    device = detect_device(backend).with_peak(peak_bw * 1e9 if peak_bw else None)
    if backend == "cpu":
        console.print("[yellow]note:[/yellow] CPU shim backend: the harness runs, the timings mean nothing")
    elif math.isnan(device.peak_bw_Bps):
        console.print(f"[yellow]warning:[/yellow] no GPU preset matches {device.name!r}: bw_fraction is NaN; "
                      "pass --peak-bw GBps")
    timer: Timer = CudaEventTimer() if backend == "cupy" else WallTimer()
    configs = list(grid.configs())
    csv_path = out / "timings.csv"
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, transient=False) as progress:
        task = progress.add_task(f"bench {grid.name} on {device.name}", total=len(configs))

        def advance(cfg: Any, status: str) -> None:
            progress.update(task, advance=1, description=f"{status} {cfg.config_id}")

        try:
            report = run_bench(configs, backend=backend, timer=timer, device=device, out_csv=csv_path,
                               options=BenchOptions(reps=reps, warmup=warmup, flush=flush, check=check),
                               resume=resume, overwrite=overwrite, on_config=advance)
        except (OutputError, KernelInputError) as e:
            raise fail("bench", str(e)) from None
    files = [csv_path, csv_path.with_suffix(".parquet")]
    if plots and not report.table.empty:
        from analysis.bench_plots import plot_all

        files += [f for f in plot_all(report.table, out / "plots", device.name) if f.suffix == ".png"]
    _summary(report, files)
    if report.failed_checks:
        typer.echo(f"pagesim bench: error: {len(report.failed_checks)} config(s) disagree with the reference "
                   f"beyond tolerance: {', '.join(report.failed_checks[:5])}", err=True)
        raise typer.Exit(1)


def _summary(report: Any, files: list[Path]) -> None:
    console = Console()
    df = report.table
    t = Table(title=f"{len(report.measured)} measured, {len(report.resumed)} resumed, "
                    f"{len(report.skipped)} skipped")
    for col in ("variant", "rows", "median latency (us)", "median bw fraction", "median overhead %", "max |err|"):
        t.add_column(col, justify="left" if col == "variant" else "right")
    def fmt(x: float, spec: str) -> str:
        return "-" if math.isnan(x) else format(x, spec)

    for v, g in df.groupby("variant", sort=True):
        t.add_row(str(v), str(len(g)), fmt(g["latency_s"].median() * 1e6, ".1f"), fmt(g["bw_fraction"].median(), ".3f"),
                  fmt(g["paged_overhead_pct"].median(), "+.1f"), fmt(g["max_abs_err"].max(), ".2e"))
    console.print(t)
    for reason in sorted({r for _, r in report.skipped}):
        n = sum(1 for _, r in report.skipped if r == reason)
        console.print(f"skipped {n} config(s): {reason}")
    for f in files:
        console.print(f"wrote {f}")


def register(app: typer.Typer) -> None:
    """Register `pagesim bench` on the app."""
    app.command("bench")(bench)
