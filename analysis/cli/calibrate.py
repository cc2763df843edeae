"""`pagesim calibrate`: fit the latency model's decode-attention term from kernel timings.

Reads the timings CSV/Parquet that `pagesim bench` writes, fits each kernel variant (gpu.calibration.kernels.fit),
prints the fit error per block size and the coefficients, and writes the versioned parameters file
that `pagesim run --latency PARAMS.json` loads. Bad input exits 2 with one line naming the problem.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table


def _fail(msg: str) -> typer.Exit:
    typer.echo(f"pagesim calibrate: error: {msg}", err=True)
    return typer.Exit(2)


def calibrate(
    timings: Annotated[Path, typer.Argument(help="Timings file from `pagesim bench` (.csv or .parquet).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Parameters JSON file to write.")],
    model: Annotated[str | None, typer.Option(
        "--model", help="Model preset the file is for (e.g. opt-13b); uses only rows with its heads "
        "when there are any.")] = None,
    gpu: Annotated[str | None, typer.Option(
        "--gpu", help="GPU preset the timings were taken on (e.g. h100-sxm).")] = None,
    tensor_parallel: Annotated[int, typer.Option(
        "--tensor-parallel", help="GPUs sharding the model (heads split).")] = 1,
) -> None:
    """Fit c0 + c_kv*kv_bytes + c_seqs*batch + c_blocks*blocks per kernel variant; write PARAMS.json."""
    from gpu.calibration.kernels import CalibrationError, fit, fit_table, read_timings, write_params
    from sim.presets import SpecError, check_tensor_parallel, get_gpu, get_model

    try:
        m = get_model(model) if model else None
        g = get_gpu(gpu) if gpu else None
        if m is not None:
            check_tensor_parallel(m, tensor_parallel)
        elif tensor_parallel < 1:
            raise SpecError(f"--tensor-parallel = {tensor_parallel} out of range (valid: >= 1)")
        df = read_timings(timings)
        params = fit(df, model=m, gpu=g, tensor_parallel=tensor_parallel, timings_name=timings.name)
        write_params(params, output)
    except (CalibrationError, SpecError) as e:
        raise _fail(str(e)) from None
    except OSError as e:
        raise _fail(f"{output}: cannot write ({e.strerror or e})") from None

    console = Console()
    errs = Table(title=f"Fit error ({params['fit']['method']})")
    for col in ("variant", "block size", "points", "median rel. err", "max rel. err"):
        errs.add_column(col, justify="left" if col == "variant" else "right")
    for r in fit_table(params).itertuples(index=False):
        errs.add_row(str(r.variant), str(r.block_size), str(r.n), f"{r.median_rel_err:.2%}", f"{r.max_rel_err:.2%}")
    console.print(errs)
    coeffs = Table(title="Per-layer decode coefficients")
    for col in ("variant", "c0 (us)", "c_kv (ps/byte)", "-> GB/s", "c_seqs (us)", "c_blocks (ns)"):
        coeffs.add_column(col, justify="left" if col == "variant" else "right")
    for v, c in params["attn_decode"]["variants"].items():
        bw = f"{1e-9 / c['c_kv_bytes_s']:.0f}" if c["c_kv_bytes_s"] > 0 else "-"
        coeffs.add_row(v, f"{c['c0_s'] * 1e6:.3f}", f"{c['c_kv_bytes_s'] * 1e12:.4f}", bw,
                       f"{c['c_seqs_s'] * 1e6:.4f}", f"{c['c_blocks_s'] * 1e9:.3f}")
    console.print(coeffs)
    for w in params["fit"]["warnings"]:
        console.print(f"[yellow]warning:[/yellow] {w}")
    ignored = params["fit"]["ignored_rows"]["torch_sdpa"]
    if ignored:
        console.print(f"ignored {ignored} torch_sdpa row(s) (a baseline, not a pagesim kernel)")
    console.print(f"wrote {output}  (use: pagesim run --latency {output})")


def register(app: typer.Typer) -> None:
    """Register `pagesim calibrate` on the app."""
    app.command("calibrate")(calibrate)
