"""`pagesim run | compare | sweep | report`: the simulation commands, a thin layer over analysis.api.

Options given on the command line override a `--config` TOML file, which overrides the defaults.
Every simulating command writes a results directory (`--out`, default results/<command>-<time>)
with summary.csv; bad input is one line on stderr `pagesim <cmd>: error: ...` and exit code 2.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from analysis.cli import inputs, progress, tables
from analysis.cli.errors import fail

if TYPE_CHECKING:  # pandas and the API load on first use, so `pagesim --help` stays quick

    from sim.records.results import SimResult

EXECUTORS = ("process", "serial", "dask")  # analysis.sweep.EXECUTORS (a test checks they agree)

# ----------------------------------------------------------------------------------- shared options
Config = Annotated[Path | None, typer.Option("--config", "-c", help="Experiment TOML file (CLI options override it).")]
Out = Annotated[Path | None, typer.Option("--out", "-o", help="Results directory (default results/<command>-<time>).")]
Preset = Annotated[str | None, typer.Option("--preset", help="Synthetic workload preset: sharegpt, alpaca, ...")]
Trace = Annotated[Path | None, typer.Option("--trace", help="Replay a trace file instead of a synthetic workload.")]
Fmt = Annotated[str | None, typer.Option("--format", help="Trace format: azure, mooncake, sharegpt, generic (default: detected).")]
NumReq = Annotated[int | None, typer.Option("--num-requests", "-n", help="Synthetic request count (default 300) / first N of a trace.")]
Rate = Annotated[float | None, typer.Option("--rate", help="Requests/s (synthetic default 4; rescales a trace).")]
Arrival = Annotated[str | None, typer.Option("--arrival", help="Arrival process: poisson, gamma, constant, burst.")]
Cv = Annotated[float | None, typer.Option("--cv", help="Inter-arrival coefficient of variation (gamma).")]
PLen = Annotated[str | None, typer.Option("--prompt-len", help="Prompt lengths: fixed:N, uniform:LO:HI, lognormal:MEAN[:SIGMA[:HI]].")]
OLen = Annotated[str | None, typer.Option("--output-len", help="Output lengths (same forms as --prompt-len).")]
Window = Annotated[str | None, typer.Option("--window", help="Trace time window START:END in seconds.")]
SkipBad = Annotated[bool | None, typer.Option("--skip-bad-rows/--no-skip-bad-rows", help="Drop malformed trace rows.")]
Sampling = Annotated[str | None, typer.Option("--sampling", help="greedy, n=K, beam=K, spec=K or spec=K@P, or a mix name.")]
Model = Annotated[str | None, typer.Option("--model", help="Model preset (default opt-13b).")]
Gpu = Annotated[str | None, typer.Option("--gpu", help="GPU preset (default a100-40gb).")]
KvDtype = Annotated[str | None, typer.Option("--kv-dtype", help="KV dtype: fp16, bf16, fp8_e4m3, int8 (default fp16).")]
KvTokens = Annotated[int | None, typer.Option("--kv-tokens", help="KV pool size in token slots.")]
KvGb = Annotated[float | None, typer.Option("--kv-gb", help="KV pool size in GiB.")]
MemUtil = Annotated[float | None, typer.Option("--gpu-memory-utilization", help="Fraction of GPU memory used (default 0.9).")]
MaxLen = Annotated[int | None, typer.Option("--max-model-len", help="Longest sequence (default: the model's).")]
Latency = Annotated[Path | None, typer.Option("--latency", help="Calibrated latency parameters JSON (default: roofline).")]
Engine = Annotated[str | None, typer.Option("--engine", help="Engine profile (serving-system overheads): basic (default), ideal, vllm-2023, vllm-current.")]
Block = Annotated[int | None, typer.Option("--block-size", "-b", help="Paged block size in tokens (default 16).")]
Placement = Annotated[str | None, typer.Option("--placement", help="Contiguous placement: first_fit, best_fit, buddy.")]
Prefix = Annotated[bool | None, typer.Option("--prefix-caching/--no-prefix-caching", help="Paged prefix caching.")]
MaxSeqs = Annotated[int | None, typer.Option("--max-num-seqs", help="Sequences per batch (default 256).")]
MaxTok = Annotated[int | None, typer.Option("--max-num-batched-tokens", help="Tokens per step.")]
Chunked = Annotated[bool | None, typer.Option("--chunked-prefill/--no-chunked-prefill", help="Chunked prefill.")]
Preempt = Annotated[str | None, typer.Option("--preemption", help="Preemption mode: recompute or swap.")]
Seed = Annotated[int | None, typer.Option("--seed", help="Seed for the workload and the engine (default 0).")]
Csv = Annotated[bool, typer.Option("--csv", help="Also write the per-request/step/memory records as CSV.")]
OpLog = Annotated[bool, typer.Option("--op-log", help="Write each system's allocator op log (runs/<system>/ops.jsonl).")]
Plots = Annotated[bool, typer.Option("--plots/--no-plots", help="Draw figures into <out>/plots.")]
Report = Annotated[bool, typer.Option("--report/--no-report", help="Write report.html and report.md.")]
SlidingWindow = Annotated[int | None, typer.Option("--sliding-window", help="Attention window in tokens (0: none; default: the model's, e.g. 4096 for mistral-7b).")]
SwapGb = Annotated[float | None, typer.Option("--cpu-swap-gb", help="Host swap pool in GiB (default 4).")]
Prefetch = Annotated[bool | None, typer.Option("--swap-prefetch/--no-swap-prefetch", help="Overlap swap-ins with the forward pass.")]
Pcie = Annotated[float | None, typer.Option("--pcie-gbps", help="Host<->GPU copy rate, GB/s one way (default: the GPU's).")]
Wide = Annotated[bool, typer.Option("--wide", help="Every table column, long headers (default: compact, 100 columns).")]
Replicas = Annotated[int | None, typer.Option("--replicas", help="Identical replicas of each system behind a router (default 1).")]
Router = Annotated[str | None, typer.Option("--router", help="Routing policy: round-robin, least-outstanding, prefix-aware (default round-robin).")]
LoadFactor = Annotated[float | None, typer.Option("--load-factor", help="Prefix-aware load bound: a replica takes a request only under ceil(F * (outstanding + 1) / replicas) (default 1.25).")]
TraceOut = Annotated[Path | None, typer.Option("--trace-out", help="Write a schedule trace for Perfetto / chrome://tracing (JSON, one track per replica).")]
MetricsFmt = Annotated[str, typer.Option("--metrics-format", help="Also write the run totals: none or prometheus (metrics.prom).")]
Lean = Annotated[bool, typer.Option("--lean", help="Huge workloads: stream requests in and request records out (Parquet, in chunks); no step/monitor records, plots or report; memory bounded by live requests.")]
Overwrite = Annotated[bool, typer.Option("--overwrite", help="Replace the results already in --out (else a folder holding results is refused).")]

# option name -> experiment override key
_KEYS = {
    "preset": "preset", "trace": "trace", "fmt": "workload.format", "num_requests": "num_requests", "rate": "rate",
    "arrival": "workload.arrival", "cv": "workload.cv", "prompt_len": "workload.prompt_len",
    "output_len": "workload.output_len", "window": "workload.window", "skip_bad_rows": "workload.skip_bad_rows",
    "sampling": "sampling", "model": "model", "gpu": "gpu", "kv_dtype": "kv_dtype",
    "kv_tokens": "kv_capacity_tokens", "kv_gb": "kv_budget_gb", "mem_util": "gpu_memory_utilization",
    "max_len": "max_model_len", "latency": "latency", "engine": "engine", "block_size": "block_size", "placement": "placement",
    "prefix": "prefix_caching", "max_seqs": "scheduler.max_num_seqs", "max_tokens": "scheduler.max_num_batched_tokens",
    "chunked": "scheduler.chunked_prefill", "preemption": "scheduler.preemption_mode", "seed": "seed",
    "sliding_window": "sliding_window", "swap_gb": "scheduler.cpu_swap_space_gb",
    "prefetch": "scheduler.swap_prefetch", "pcie": "scheduler.pcie_bandwidth_gbps",
    "replicas": "replicas", "router": "router", "load_factor": "router_load_factor",
}


def _overrides(opts: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, key in _KEYS.items():
        v = opts.get(name)
        if v is None:
            continue
        if name == "window":
            a, sep, b = str(v).partition(":")
            try:
                v = [float(a), float(b)] if sep else None
            except ValueError:
                v = None
            if v is None:
                raise ValueError(f"--window {opts[name]!r} not understood (valid: START:END in seconds)")
        out[key] = str(v) if isinstance(v, Path) else v
    if "trace" in out and "rate" not in out:
        out["rate"] = None  # replay a trace's own timing unless --rate is given
    if "trace" in out and "num_requests" not in out:
        out["num_requests"] = None
    return out


def _experiment(config: Path | None, opts: dict[str, Any], **extra: Any) -> Any:
    from analysis import api

    inputs.check_conflicts(opts, config)
    base = api.experiment(config) if config is not None else api.experiment()
    return base.with_overrides({**_overrides(opts), **extra})


@contextlib.contextmanager
def _errors(cmd: str) -> Iterator[None]:
    """Bad input -> one line on stderr and exit 2; Ctrl-C -> a note and exit 130."""
    from workloads.errors import WorkloadError

    try:
        yield
    except (ValueError, WorkloadError, FileNotFoundError, IsADirectoryError, NotADirectoryError) as exc:
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise fail(cmd, msg) from None
    except KeyboardInterrupt:
        typer.echo(f"pagesim {cmd}: interrupted; finished results were kept", err=True)
        raise typer.Exit(130) from None


def _default_out(cmd: str, out: Path | None) -> Path:
    return out if out is not None else Path("results") / f"{cmd}-{time.strftime('%Y%m%d-%H%M%S')}"


def _simulate(cmd: str, exp: Any, out: Path, csv: bool, op_log: bool, plots: bool, report: bool,
              metrics_format: str = "none", wide: bool = False, fixed: frozenset[str] = frozenset(),
              trace_out: Path | None = None, lean: bool = False, overwrite: bool = False) -> None:
    from analysis import api
    from analysis.conclusions import conclusions
    from analysis.prometheus import check_format
    from analysis.results_io import check_out_dir, check_reuse

    check_format(metrics_format)  # before any simulation runs
    if op_log and exp.replicas > 1:
        raise ValueError("--op-log records one allocator; it is not available with --replicas > 1")
    check_out_dir(out)
    check_reuse(out, overwrite=overwrite)
    o, err = tables.consoles(wide)
    exp, specs, _stats = inputs.fit_to_workload(exp, fixed, o, lean=lean)
    for line in (f"{cmd}: {', '.join(exp.systems)} on {exp.title()}", *progress.pool_lines(exp)):
        o.print(tables.wrap(line, o), markup=False, highlight=False)
    t0 = time.perf_counter()

    def done(r: SimResult) -> None:
        rejected = r.summary.get("num_rejected", 0)
        err.print(f"  {r.system}: {r.summary['num_requests']} requests, {r.summary['num_steps']} steps"
                  + (f", {rejected} REJECTED (see below)" if rejected else "") + f" ({progress.elapsed(t0)})",
                  markup=False, highlight=False)

    if lean and (plots or report):
        err.print("  --lean: no plots or report (the request records are in runs/<system>/requests.parquet)",
                  markup=False, highlight=False)
        plots = report = False
    with progress.progress(err) as start:
        df = api.run(exp, out, csv=csv, op_log=op_log, plots=plots, on_result=done, on_start=start,
                     metrics_format=metrics_format, specs=specs, trace_out=trace_out, lean=lean,
                     overwrite=overwrite)
    tables.print_summary(o, df, exp.title(), wide=wide)
    if exp.replicas > 1:
        _print_replicas(o, out, wide)
    tables.print_conclusions(o, conclusions(df))
    if report:
        api.report(out)
    extra = (", report.html" if report else "") + (", metrics.prom" if metrics_format == "prometheus" else "")
    o.print(f"results: {out}/ (summary.csv{extra})", markup=False, highlight=False)


def _print_replicas(o: Any, out: Path, wide: bool) -> None:
    import pandas as pd

    from analysis.api import REPLICAS_FILE

    # Short headers of its own (the compact tables fit 100 columns); the CSV keeps the summary names.
    names = {"replica": "#", "system": "system", "num_requests": "reqs", "throughput_rps": "throughput_rps",
             "mean_batch_size": "mean_batch_size", "p99_ttft": "p99 TTFT s", "p50_tpot": "p50 TPOT s",
             "num_preemptions": "num_preemptions", "token_states_pct": "token_states_pct",
             "prefix_cache_hit_rate": "prefix hits"}
    df = pd.read_csv(out / REPLICAS_FILE)[list(names)].rename(columns=names)
    o.print(tables.table(df, list(names.values()), f"Per replica ({REPLICAS_FILE}; the rows above are the "
                                                   "cluster's)", wide=wide))


def _split(text: str | None, conv: Callable[[str], Any] = str) -> list[Any] | None:
    if text is None:
        return None
    items = [x.strip() for x in text.split(",") if x.strip()]
    if not items:
        raise ValueError(f"empty list {text!r} (valid: comma-separated values)")
    return [conv(x) for x in items]


def _num(x: str) -> Any:
    try:
        return int(x)
    except ValueError:
        try:
            return float(x)
        except ValueError:
            return x


def register(app: typer.Typer) -> None:
    """Register run, compare, sweep and report on the app."""

    @app.command("run")
    def run_cmd(config: Config = None, system: Annotated[str | None, typer.Option(
                    "--system", "-s", help="Cache system: paged[-B][+prefix], max, pow2, pow2-output, oracle (default paged).")] = None,
                preset: Preset = None, trace: Trace = None, fmt: Fmt = None, num_requests: NumReq = None,
                rate: Rate = None, arrival: Arrival = None, cv: Cv = None, prompt_len: PLen = None,
                output_len: OLen = None, window: Window = None, skip_bad_rows: SkipBad = None,
                sampling: Sampling = None, model: Model = None, gpu: Gpu = None, kv_dtype: KvDtype = None,
                kv_tokens: KvTokens = None, kv_gb: KvGb = None, mem_util: MemUtil = None, max_len: MaxLen = None,
                latency: Latency = None, engine: Engine = None, block_size: Block = None, placement: Placement = None,
                prefix: Prefix = None, max_seqs: MaxSeqs = None, max_tokens: MaxTok = None, chunked: Chunked = None,
                preemption: Preempt = None, sliding_window: SlidingWindow = None, swap_gb: SwapGb = None,
                prefetch: Prefetch = None, pcie: Pcie = None, seed: Seed = None, out: Out = None, csv: Csv = False,
                op_log: OpLog = False, plots: Plots = True, report: Report = False,
                metrics_format: MetricsFmt = "none", wide: Wide = False, replicas: Replicas = None,
                router: Router = None, load_factor: LoadFactor = None, trace_out: TraceOut = None,
                lean: Lean = False, overwrite: Overwrite = False) -> None:
        """One simulation: a workload through one cache system (or the systems of a --config file).

        Examples:
          pagesim run --system paged-32 -n 200 --rate 4
          pagesim run --trace ../shared/traces/azure_llm_2023/AzureLLMInferenceTrace_code.csv -n 500 --system max
          pagesim run --config exp.toml --out results/exp
          pagesim run --model mistral-7b --gpu a100-80gb --preemption swap --swap-prefetch --metrics-format prometheus
          pagesim run --system paged+prefix --replicas 4 --router prefix-aware --trace-out results/schedule.json \
            --trace ../shared/traces/mooncake_fast25/conversation_trace.jsonl -n 400 --model llama-3-8b
          pagesim run -n 1000000 --rate 2 --lean --out results/big   # records streamed to Parquet
        """
        with _errors("run"):
            extra = {"system": system} if system else ({} if config else {"system": "paged"})
            exp = _experiment(config, locals(), **extra)
            _simulate("run", exp, _default_out("run", out), csv, op_log, plots, report, metrics_format, wide,
                      inputs.fixed_settings(locals(), config), trace_out, lean, overwrite)

    @app.command("compare")
    def compare_cmd(config: Config = None, systems: Annotated[str | None, typer.Option(
                        "--systems", help="Comma-separated systems (default paged,max,pow2,oracle; also pow2-output).")] = None,
                    preset: Preset = None, trace: Trace = None, fmt: Fmt = None, num_requests: NumReq = None,
                    rate: Rate = None, arrival: Arrival = None, cv: Cv = None, prompt_len: PLen = None,
                    output_len: OLen = None, window: Window = None, skip_bad_rows: SkipBad = None,
                    sampling: Sampling = None, model: Model = None, gpu: Gpu = None, kv_dtype: KvDtype = None,
                    kv_tokens: KvTokens = None, kv_gb: KvGb = None, mem_util: MemUtil = None,
                    max_len: MaxLen = None, latency: Latency = None, engine: Engine = None, block_size: Block = None,
                    placement: Placement = None, prefix: Prefix = None, max_seqs: MaxSeqs = None,
                    max_tokens: MaxTok = None, chunked: Chunked = None, preemption: Preempt = None,
                    sliding_window: SlidingWindow = None, swap_gb: SwapGb = None, prefetch: Prefetch = None,
                    pcie: Pcie = None, seed: Seed = None, out: Out = None, csv: Csv = False, op_log: OpLog = False,
                    plots: Plots = True, report: Report = True, metrics_format: MetricsFmt = "none",
                    wide: Wide = False, replicas: Replicas = None, router: Router = None,
                    load_factor: LoadFactor = None, trace_out: TraceOut = None, lean: Lean = False,
                    overwrite: Overwrite = False) -> None:
        """Paged vs contiguous (max / pow2 / oracle) caches on the same workload, side by side.

        Memory breakdown (the vLLM paper's Fig. 2), throughput, latency and batch size per system.
        With no options: OPT-13B on A100-40GB, 300 ShareGPT-like requests at 4 req/s.

        Examples:
          pagesim compare
          pagesim compare --model llama-2-7b --gpu a100-80gb --rate 8 --block-size 32
          pagesim compare --systems paged-16,paged-16+prefix --preset sharegpt-sysprompt
          pagesim compare --replicas 4 --router least-outstanding --rate 16 --trace-out results/compare.trace.json
        """
        with _errors("compare"):
            extra = {"systems": _split(systems)} if systems else {}
            exp = _experiment(config, locals(), **extra)
            _simulate("compare", exp, _default_out("compare", out), csv, op_log, plots, report, metrics_format,
                      wide, inputs.fixed_settings(locals(), config), trace_out, lean, overwrite)

    @app.command("sweep")
    def sweep_cmd(config: Config = None,
                  systems: Annotated[str | None, typer.Option("--systems", help="Axis: systems (comma list).")] = None,
                  block_sizes: Annotated[str | None, typer.Option("--block-sizes", help="Axis: block sizes, e.g. 8,16,32.")] = None,
                  budgets_gb: Annotated[str | None, typer.Option("--kv-budgets-gb", help="Axis: KV pool sizes in GiB.")] = None,
                  rates: Annotated[str | None, typer.Option("--rates", help="Axis: request rates (req/s).")] = None,
                  samplings: Annotated[str | None, typer.Option("--samplings", help="Axis: sampling modes, e.g. greedy,n=2,n=4 (same forms as --sampling).")] = None,
                  grid: Annotated[list[str] | None, typer.Option("--grid", help="Axis NAME=V1,V2,... for any field (repeatable), e.g. scheduler.max_num_seqs=64,128.")] = None,
                  executor: Annotated[str, typer.Option("--executor", help="process, serial or dask.")] = "process",
                  workers: Annotated[int | None, typer.Option("--workers", "-j", help="Worker processes (default: CPU count).")] = None,
                  scheduler: Annotated[str | None, typer.Option("--scheduler", help="Dask scheduler address (default: a local cluster).")] = None,
                  resume: Annotated[bool, typer.Option("--resume", help="Continue the sweep in --out; finished points are not redone.")] = False,
                  retry_failed: Annotated[bool, typer.Option("--retry-failed", help="With --resume: run failed points again.")] = False,
                  progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Progress bar on stderr.")] = True,
                  preset: Preset = None, trace: Trace = None, fmt: Fmt = None, num_requests: NumReq = None,
                  rate: Rate = None, arrival: Arrival = None, cv: Cv = None, prompt_len: PLen = None,
                  output_len: OLen = None, window: Window = None, skip_bad_rows: SkipBad = None,
                  sampling: Sampling = None, model: Model = None, gpu: Gpu = None, kv_dtype: KvDtype = None,
                  kv_tokens: KvTokens = None, kv_gb: KvGb = None, mem_util: MemUtil = None, max_len: MaxLen = None,
                  latency: Latency = None, engine: Engine = None, block_size: Block = None, placement: Placement = None,
                  prefix: Prefix = None, max_seqs: MaxSeqs = None, max_tokens: MaxTok = None,
                  chunked: Chunked = None, preemption: Preempt = None, sliding_window: SlidingWindow = None,
                  swap_gb: SwapGb = None, prefetch: Prefetch = None, pcie: Pcie = None, seed: Seed = None,
                  replicas: Replicas = None, router: Router = None, load_factor: LoadFactor = None,
                  out: Out = None, report: Report = True, wide: Wide = False,
                  overwrite: Overwrite = False) -> None:
        """A grid of simulations (block size, KV budget, rate, system, sampling, any field), in parallel.

        Each finished point is written at once, so an interrupted sweep continues with --resume;
        a point that fails is recorded with its error and the sweep goes on.

        Examples:
          pagesim sweep --block-sizes 8,16,32,64 --systems paged -n 200 --out results/bs
          pagesim sweep --rates 1,2,4,8 --systems paged,max,oracle --out results/rate
          pagesim sweep --rates 1,2,4,8 --systems paged,max,oracle --out results/rate --resume
          pagesim sweep --samplings n=1,n=2,n=4 --executor dask --scheduler tcp://10.0.0.5:8786
        """
        with _errors("sweep"):
            if executor not in EXECUTORS:
                raise ValueError(f"--executor {executor!r} unknown (valid: {', '.join(EXECUTORS)})")
            if retry_failed and not resume:
                raise ValueError("--retry-failed needs --resume")
            if out is None and resume:
                raise ValueError("--resume needs --out DIR (the sweep to continue)")
            exp = _experiment(config, locals())
            axes = _sweep_axes(config, systems, block_sizes, budgets_gb, rates, samplings, grid)
            if not axes:
                raise ValueError("no sweep axis given (use --block-sizes, --rates, --systems, --kv-budgets-gb, "
                                 "--samplings or --grid NAME=V1,V2)")
            from analysis import api
            from analysis.conclusions import conclusions
            from analysis.results_io import check_out_dir, check_reuse

            out_dir = _default_out("sweep", out)
            check_out_dir(out_dir)
            check_reuse(out_dir, overwrite=overwrite, resume=resume)
            o, err = tables.consoles(wide)
            if exp.workload.trace is not None:  # a trace's longest request decides the defaults, as in run
                exp, _, _ = inputs.fit_to_workload(exp, inputs.fixed_settings(locals(), config, tuple(axes)), o)
            err.print(f"sweep over {', '.join(axes)} on {exp.title()} -> {out_dir}", markup=False, highlight=False)
            res = api.sweep_outcome(axes, exp, out_dir, executor=executor, workers=workers, scheduler=scheduler,
                                    resume=resume, retry_failed=retry_failed, progress=progress,
                                    overwrite=overwrite)
            tables.print_summary(o, res.summary, exp.title(), tuple(axes), wide=wide)
            tables.print_conclusions(o, conclusions(res.summary, tuple(axes)))
            o.print(f"{res.total} points: {res.ran} run, {res.skipped} already done, {res.failed} failed; results: {out_dir}/")
            if res.failed:
                for _, r in res.summary[res.summary["status"] == "failed"].iterrows():
                    err.print(f"  failed point {r['point_id']}: {r['error']}", markup=False, highlight=False)
            if res.interrupted:
                typer.echo(f"pagesim sweep: interrupted; {res.ran} new points kept. Continue with: "
                           f"pagesim sweep ... --out {out_dir} --resume", err=True)
                raise typer.Exit(130)
            if report:
                api.report(out_dir)

    @app.command("report")
    def report_cmd(results_dir: Annotated[Path, typer.Argument(help="A results directory (with summary.csv).")]) -> None:
        """A self-contained report.html (figures embedded) and report.md of a results directory.

        Example:
          pagesim report results/compare-20250101-120000
        """
        with _errors("report"):
            from analysis import api

            html_path, md_path = api.report(results_dir)
            tables.consoles()[0].print(f"report: {html_path}\nmarkdown: {md_path}", markup=False, highlight=False)


def _sweep_axes(config: Path | None, systems: str | None, block_sizes: str | None, budgets_gb: str | None,
                rates: str | None, samplings: str | None, grid: list[str] | None) -> dict[str, list[Any]]:
    axes: dict[str, list[Any]] = {}
    if config is not None:
        from analysis.experiment import sweep_axes

        axes.update(sweep_axes(config))
    for name, text, conv in (("system", systems, str), ("block_size", block_sizes, int),
                             ("kv_budget_gb", budgets_gb, float), ("rate", rates, float),
                             ("sampling", samplings, str)):
        try:
            vals = _split(text, conv)
        except ValueError:
            raise ValueError(f"sweep axis '{name}': cannot read {text!r} (valid: comma-separated "
                             f"{conv.__name__} values)") from None
        if vals is not None:
            axes[name] = vals
    for g in grid or []:
        name, eq, vals_text = g.partition("=")
        if not eq or not name.strip():
            raise ValueError(f"--grid {g!r} not understood (valid: NAME=V1,V2,...)")
        axes[name.strip()] = _split(vals_text, _num) or []
    return axes
