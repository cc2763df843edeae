"""`pagesim calibrate SOURCE... -o PARAMS.json`: fit the latency model from real measurements.

Sources (mixed freely; gpu.calibration.sources recognizes each): `pagesim bench` decode-kernel timings
and GEMM timings, Vidur operator profiles (mlp.csv, attention.csv or their directory), and vLLM
`benchmark_serving.py --save-result` JSON files (engine overheads, fitted by replaying them with the GPU
blocks fitted in the same call, else --latency). Every fit prints its median and worst relative error on
fit and held-out points; the versioned parameters file is written last. Bad input exits 2 with one line.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from analysis.cli.errors import fail
from analysis.cli.validate import (
    BlockOpt,
    ChunkOpt,
    LatencyOpt,
    SeedsOpt,
    SeqsOpt,
    TokensOpt,
    UtilOpt,
    comparison_table,
    replay_setup,
)


def _pct(v: float | None) -> str:
    return "-" if v is None or not math.isfinite(v) else f"{v:.2%}"


def _error_table(params: dict[str, Any]) -> Table:
    held = f"held out: {params['fit']['holdout']}"
    if "engine" in params["fit"]:
        held += "; engine: odd-position requests and --held-out-bench files"
    t = Table(title=f"Fit error (median / worst relative error; {held})")
    for col in ("term", "fit points", "fit median", "fit worst", "held-out points", "held-out median",
                "held-out worst"):
        t.add_column(col, justify="left" if col == "term" else "right")
    for term in ("attn_decode", "gemm", "attn_prefill", "engine"):
        rep = params["fit"].get(term)
        if rep is None:
            continue
        f, h = rep["fit"], rep["held_out"]
        t.add_row(term, str(f["n"]), _pct(f["median_rel_err"]), _pct(f["max_rel_err"]), str(h["n"]),
                  _pct(h["median_rel_err"]), _pct(h["max_rel_err"]))
    return t


def _gemm_tables(params: dict[str, Any], console: Console) -> None:
    rep, g = params["fit"]["gemm"], params["gemm"]
    t = Table(title="GEMM curve error per model and tensor-parallel degree")
    for col in ("model", "tp", "fit median", "fit worst", "held-out median", "held-out worst"):
        t.add_column(col, justify="left" if col == "model" else "right", no_wrap=col == "model")
    for r in rep["groups"]:
        t.add_row(r["model"], str(r["tensor_parallel"]), _pct(r["fit"]["median_rel_err"]),
                  _pct(r["fit"]["max_rel_err"]), _pct(r["held_out"]["median_rel_err"]),
                  _pct(r["held_out"]["max_rel_err"]))
    console.print(t)
    w = rep["worst"]
    console.print(f"GEMM curve: launch {g['launch_s'] * 1e6:.2f} us, memory efficiency {g['mem_efficiency']:.3f}, "
                  f"peak compute efficiency {g['flops_efficiency']:.3f}, half-efficiency at "
                  f"{g['half_tokens']:.0f} tokens (fitted on {g['fitted_on']}). Worst point: {w['op']} of "
                  f"{w['model']} tp {w['tensor_parallel']} at {w['num_tokens']} tokens, measured "
                  f"{w['measured_s'] * 1e6:.1f} us, predicted {w['predicted_s'] * 1e6:.1f} us.")


def calibrate(
    sources: Annotated[list[Path], typer.Argument(help="Timings CSV/Parquet from `pagesim bench` (kernels or "
                                                  "--gemm), Vidur mlp.csv/attention.csv (or their directory), "
                                                  "vLLM serving-benchmark JSON.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Parameters JSON file to write.")],
    model: Annotated[str | None, typer.Option(
        "--model", help="Model preset the file is for (e.g. opt-13b); kernel rows with its heads are used "
        "when there are any; Vidur profiles must match its architecture.")] = None,
    gpu: Annotated[str | None, typer.Option(
        "--gpu", help="GPU preset the timings were taken on (e.g. h100-sxm).")] = None,
    tensor_parallel: Annotated[int, typer.Option(
        "--tensor-parallel", help="GPUs sharding the model (heads split).")] = 1,
    holdout: Annotated[str, typer.Option(
        "--holdout", help="Points the fits never see, reported separately: every:N (every N-th token count / "
        "row, default every:5), tokens>X, model:NAME, tp:N, none.")] = "every:5",
    engine: Annotated[str | None, typer.Option(
        "--engine", help="Base engine profile whose step/sequence overheads a serving benchmark refits.")] = None,
    held_out_bench: Annotated[list[Path] | None, typer.Option(
        "--held-out-bench", help="A serving-benchmark JSON only evaluated, never fitted (repeatable).")] = None,
    latency: LatencyOpt = None, block_size: BlockOpt = 16, max_num_seqs: SeqsOpt = 256,
    max_num_batched_tokens: TokensOpt = None, chunked_prefill: ChunkOpt = False, seeds: SeedsOpt = 1,
    gpu_memory_utilization: UtilOpt = 0.9,
) -> None:
    """Fit decode attention, the GEMM curve, prefill attention and engine overheads; write PARAMS.json."""
    from gpu.calibration.kernels import CalibrationError, write_params
    from gpu.calibration.serving import load_benchmark
    from gpu.calibration.sources import calibrate_params, read_inputs
    from sim.presets import SpecError, check_tensor_parallel, get_gpu, get_model

    console = Console()
    try:
        m = get_model(model) if model else None
        g = get_gpu(gpu) if gpu else None
        if m is not None:
            check_tensor_parallel(m, tensor_parallel)
        elif tensor_parallel < 1:
            raise SpecError(f"--tensor-parallel = {tensor_parallel} out of range (valid: >= 1)")
        inputs = read_inputs(sources, m)
        params = calibrate_params(inputs, model=m, gpu=g, tensor_parallel=tensor_parallel, holdout=holdout)
        held = [load_benchmark(p) for p in held_out_bench or []]
        fit = None
        if inputs.serving or held:
            if not inputs.serving:
                raise CalibrationError("--held-out-bench needs at least one serving benchmark to fit")
            if m is None or g is None:
                raise CalibrationError("a serving benchmark needs --model and --gpu (the replay runs them)")
            fit = _fit_engine(params, inputs.serving, held, latency, engine, console, model=m.name, gpu=g.name,
                              tp=tensor_parallel, block_size=block_size, max_num_seqs=max_num_seqs,
                              max_num_batched_tokens=max_num_batched_tokens, chunked_prefill=chunked_prefill,
                              seeds=seeds, util=gpu_memory_utilization)
        if not any(k in params for k in ("attn_decode", "gemm", "attn_prefill", "engine")):
            raise CalibrationError("no input produced a fit")
        write_params(params, output)
    except (CalibrationError, SpecError) as e:
        raise fail("calibrate", str(e)) from None
    except OSError as e:
        raise fail("calibrate", f"{output}: cannot write ({e.strerror or e})") from None
    _print(params, fit, console, output)


def _fit_engine(params: dict[str, Any], benches: list[Any], held: list[Any], latency: str | None,
                engine: str | None, console: Console, **kw: Any) -> Any:
    """Replay the serving benchmarks with this call's GPU blocks (else --latency) and fit the overheads."""
    from dataclasses import replace

    from gpu.calibration.overheads import fit_overheads

    gpu_blocks = [k for k in ("attn_decode", "gemm", "attn_prefill") if k in params]
    setup = replay_setup("calibrate", kw["model"], kw["gpu"], kw["tp"], latency, kw["block_size"],
                         kw["max_num_seqs"], kw["max_num_batched_tokens"], kw["chunked_prefill"], kw["seeds"],
                         kw["util"])
    if gpu_blocks:
        setup = replace(setup, latency={k: v for k, v in params.items() if k != "engine"})
    with console.status("fitting engine overheads by simulation") as status:
        fit = fit_overheads(benches, setup, engine, held_out=held, progress=lambda s: status.update(s))
    from sim.timing.engines import get_engine

    # engine_from_dict reads {"base": NAME, field: value...}: the base profile, then every fitted field.
    params["engine"] = {"base": get_engine(engine).name, **fit.engine.to_dict()}
    params["fit"]["engine"] = {k: fit.report[k] for k in ("method", "targets", "seeds", "evaluations", "loss",
                                                            "fit", "held_out", "rows")}
    params["fit"]["engine"]["replay_latency"] = ("this file's " + ", ".join(gpu_blocks)) if gpu_blocks else \
        (latency or "roofline")
    params["label"] += "; engine overheads fitted to serving benchmark(s)"
    return fit


def _print(params: dict[str, Any], fit: Any, console: Console, output: Path) -> None:
    console.print(_error_table(params))
    if "attn_decode" in params:
        coeffs = Table(title="Per-layer decode coefficients")
        for col in ("variant", "c0 (us)", "c_kv (ps/byte)", "-> GB/s", "c_seqs (us)", "c_blocks (ns)"):
            coeffs.add_column(col, justify="left" if col == "variant" else "right")
        for v, c in params["attn_decode"]["variants"].items():
            bw = f"{1e-9 / c['c_kv_bytes_s']:.0f}" if c["c_kv_bytes_s"] > 0 else "-"
            coeffs.add_row(v, f"{c['c0_s'] * 1e6:.3f}", f"{c['c_kv_bytes_s'] * 1e12:.4f}", bw,
                           f"{c['c_seqs_s'] * 1e6:.4f}", f"{c['c_blocks_s'] * 1e9:.3f}")
        console.print(coeffs)
        ignored = params["fit"]["attn_decode"].get("ignored_torch_sdpa", 0)
        if ignored:
            console.print(f"ignored {ignored} torch_sdpa row(s) (a baseline, not a pagesim kernel)")
    if "gemm" in params:
        _gemm_tables(params, console)
    if "attn_prefill" in params:
        c = params["attn_prefill"]
        console.print(f"prefill attention per layer: {c['c0_s'] * 1e6:.2f} us + FLOPs / "
                      f"{1e-12 / c['c_flops_s'] if c['c_flops_s'] else float('inf'):.0f} TFLOP/s")
    if fit is not None:
        console.print(f"engine overheads ({fit.engine.name}): {fit.step_overhead_s * 1e3:.3f} ms per step + "
                      f"{fit.seq_overhead_s * 1e6:.2f} us per running sequence "
                      f"({fit.report['evaluations']} simulations)")
        for bench in dict.fromkeys(r["benchmark"] for r in fit.report["rows"]):
            rows = [r for r in fit.report["rows"] if r["benchmark"] == bench]
            for split in dict.fromkeys(r["split"] for r in rows):
                console.print(comparison_table(f"{Path(bench).name}: {split}",
                                               [r for r in rows if r["split"] == split]))
    err = Console(stderr=True)
    for w in params["fit"]["warnings"]:
        if params.get("cpu_shim") and w.startswith("NOT A GPU"):
            err.print(f"[bold red]WARNING:[/bold red] {w}")  # loud, and on stderr even when stdout is piped
        else:
            console.print(f"[yellow]warning:[/yellow] {w}")
    console.print(f"wrote {output}  (use: pagesim run --latency {output})")


def register(app: typer.Typer) -> None:
    """Register `pagesim calibrate` on the app."""
    app.command("calibrate")(calibrate)
