"""`pagesim validate BENCH.json`: replay a real serving benchmark in the simulator and compare.

BENCH.json is vLLM's `benchmark_serving.py --save-result` output (gpu.calibration.serving lists the
fields read). The successful requests are replayed with their prompt and output lengths on the given
model, GPU, engine profile and latency model; arrival times are redrawn from the file's request rate and
burstiness (the client's process, not its draw: the seed is not saved), averaged over --seeds draws.
Prints measured vs simulated request and output-token throughput, mean/median/p99 TTFT and TPOT, and
the relative errors. Bad input exits 2 with one line naming the file and field.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from analysis.cli.errors import fail

ASSUMPTIONS = ("arrivals redrawn: request 0 at t=0, then Gamma(burstiness, 1/(rate*burstiness)) gaps "
               "(vLLM's client process; its seed is not saved), metrics averaged over {seeds} draw(s); failed requests "
               "dropped; TPOT = sum(itls) / (output_len - 1)")
LABELS = {"request_throughput": ("throughput (req/s)", 1.0), "output_throughput": ("output tokens/s", 1.0),
          "mean_ttft_s": ("mean TTFT (ms)", 1e3), "median_ttft_s": ("median TTFT (ms)", 1e3),
          "p99_ttft_s": ("p99 TTFT (ms)", 1e3), "mean_tpot_s": ("mean TPOT (ms)", 1e3),
          "median_tpot_s": ("median TPOT (ms)", 1e3), "p99_tpot_s": ("p99 TPOT (ms)", 1e3)}



ModelOrFile = Annotated[str | None, typer.Option("--model", help="Model preset the benchmark served (default: "
                                                 "the preset its model_id names, e.g. meta-llama/Llama-2-7b-hf).")]
Gpu = Annotated[str, typer.Option("--gpu", help="GPU preset it ran on (e.g. h100-sxm).")]
TP = Annotated[int, typer.Option("--tensor-parallel", help="GPUs sharding the model.")]
EngineOpt = Annotated[str | None, typer.Option("--engine", help="Engine profile: basic (default), ideal, vllm-2023, "
                                               "vllm-current.")]
LatencyOpt = Annotated[str | None, typer.Option("--latency", help="Latency model: roofline (default) or a params "
                                                "JSON from `pagesim calibrate`.")]
BlockOpt = Annotated[int, typer.Option("--block-size", help="Paged KV block size of the server.")]
SeqsOpt = Annotated[int, typer.Option("--max-num-seqs", help="The server's max_num_seqs.")]
TokensOpt = Annotated[int | None, typer.Option("--max-num-batched-tokens", help="The server's token budget per "
                                               "step (default: vLLM's).")]
ChunkOpt = Annotated[bool, typer.Option("--chunked-prefill/--no-chunked-prefill", help="The server chunks prefills.")]
SeedsOpt = Annotated[int, typer.Option("--seeds", help="Arrival-time draws averaged (1 or more).")]
UtilOpt = Annotated[float, typer.Option("--gpu-memory-utilization", help="Fraction of GPU memory the server used.")]


def replay_setup(cmd: str, model: str, gpu: str, tensor_parallel: int, latency: str | None, block_size: int,
                 max_num_seqs: int, max_num_batched_tokens: int | None, chunked_prefill: bool, seeds: int,
                 gpu_memory_utilization: float) -> Any:
    """A checked gpu.calibration.overheads.ReplaySetup (exit 2 naming the option when bad)."""
    from gpu.calibration.overheads import ReplaySetup
    from sim.config import PagedCacheSpec, SchedulerConfig
    from sim.presets import SpecError, check_tensor_parallel, get_gpu, get_model, kv_capacity_tokens

    if seeds < 1:
        raise fail(cmd, f"--seeds {seeds}: out of range (valid: >= 1)")
    try:
        m, g = get_model(model), get_gpu(gpu)
        check_tensor_parallel(m, tensor_parallel)
        PagedCacheSpec(block_size=block_size)
        SchedulerConfig(max_num_seqs=max_num_seqs, max_num_batched_tokens=max_num_batched_tokens,
                        chunked_prefill=chunked_prefill)
        if not 0 < gpu_memory_utilization <= 1:
            raise SpecError(f"--gpu-memory-utilization {gpu_memory_utilization}: out of range (valid: (0, 1])")
        cap = kv_capacity_tokens(m, g, gpu_memory_utilization=gpu_memory_utilization, tensor_parallel=tensor_parallel)
    except SpecError as e:
        raise fail(cmd, str(e)) from None
    lat = None if latency is None or latency.strip().lower() == "roofline" else latency
    return ReplaySetup(model=m.name, gpu=g.name, tensor_parallel=tensor_parallel, latency=lat, block_size=block_size,
                       max_num_seqs=max_num_seqs, max_num_batched_tokens=max_num_batched_tokens,
                       chunked_prefill=chunked_prefill, gpu_memory_utilization=gpu_memory_utilization,
                       kv_capacity_tokens=cap, seeds=tuple(range(seeds)))


def comparison_table(title: str, rows: list[dict[str, Any]]) -> Table:
    """A rich table of compare() rows with readable units."""
    t = Table(title=title)
    for col in ("metric", "measured", "simulated", "error"):
        t.add_column(col, justify="left" if col == "metric" else "right")
    for r in rows:
        label, scale = LABELS.get(r["metric"], (r["metric"], 1.0))
        err = f"{r['rel_err']:+.1%}" if math.isfinite(r["rel_err"]) else "-"
        t.add_row(label, f"{r['measured'] * scale:.2f}", f"{r['simulated'] * scale:.2f}", err)
    return t


def validate(
    bench: Annotated[Path, typer.Argument(help="vLLM benchmark_serving.py --save-result JSON.")],
    gpu: Gpu, model: ModelOrFile = None, tensor_parallel: TP = 1, engine: EngineOpt = None, latency: LatencyOpt = None,
    block_size: BlockOpt = 16, max_num_seqs: SeqsOpt = 256, max_num_batched_tokens: TokensOpt = None,
    chunked_prefill: ChunkOpt = False, seeds: SeedsOpt = 1, gpu_memory_utilization: UtilOpt = 0.9,
    json_out: Annotated[Path | None, typer.Option("--json", help="Also write the comparison as JSON.")] = None,
) -> None:
    """Replay BENCH.json's requests; print measured vs simulated throughput, TTFT and TPOT with errors."""
    import numpy as np

    from gpu.calibration.kernels import CalibrationError
    from gpu.calibration.overheads import replay, sim_metrics
    from gpu.calibration.serving import compare, load_benchmark, measured_metrics, preset_from_model_id
    from sim.presets import SpecError
    from sim.timing.engines import get_engine

    try:
        b = load_benchmark(bench)
    except CalibrationError as e:
        raise fail("validate", str(e)) from None
    if model is None:
        model = preset_from_model_id(b.model_id)
        if model is None:
            raise fail("validate", f"--model is needed: the benchmark's model_id {b.model_id!r} names no preset")
    setup = replay_setup("validate", model, gpu, tensor_parallel, latency, block_size, max_num_seqs,
                         max_num_batched_tokens, chunked_prefill, seeds, gpu_memory_utilization)
    try:
        eng = get_engine(engine) if engine is not None else None
        sim = replay(b, setup, eng)
        rows = compare(measured_metrics(b), sim_metrics(b, sim, np.arange(b.index.size)))
    except (CalibrationError, SpecError) as e:
        raise fail("validate", str(e)) from None
    console = Console()
    lat_name = "roofline" if setup.latency is None else Path(str(setup.latency)).name
    console.print(comparison_table(f"{bench.name}: {b.index.size} requests at "
                                   f"{b.request_rate:g} req/s, {setup.model} on {setup.gpu} "
                                   f"(tp {tensor_parallel}), engine {sim['engine']}, latency {lat_name}", rows))
    console.print("assumptions: " + ASSUMPTIONS.format(seeds=seeds))
    if b.num_failed:
        console.print(f"[yellow]note:[/yellow] {b.num_failed} failed request(s) not replayed")
    if b.max_concurrency is not None:
        console.print(f"[yellow]warning:[/yellow] the client capped concurrency at {b.max_concurrency}; the "
                      "replay does not (arrivals follow the request rate only)")
    unfinished = int((~np.isfinite(sim["ttft"])).sum())
    if unfinished:
        console.print(f"[yellow]warning:[/yellow] {unfinished} request(s) did not finish in the simulation "
                      "(rejected as too long, or never admitted)")
    if json_out is not None:
        out = {"benchmark": str(bench), "model": setup.model, "gpu": setup.gpu, "tensor_parallel": tensor_parallel,
               "engine": sim["engine"], "latency": lat_name, "seeds": seeds,
               "rows": [{k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in r.items()}
                        for r in rows],
               "assumptions": ASSUMPTIONS.format(seeds=seeds)}
        try:
            json_out.write_text(json.dumps(out, indent=2) + "\n")
        except OSError as e:
            raise fail("validate", f"{json_out}: cannot write ({e.strerror or e})") from None


def register(app: typer.Typer) -> None:
    """Register `pagesim validate` on the app."""
    app.command("validate")(validate)
