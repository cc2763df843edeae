"""`pagesim capacity`: the highest request rate each system serves within latency targets.

For each system, a bracketing search over rates (grow, then bisect) on the same workload with its
seeds fixed, scaled to each rate; every evaluated rate is written at once (points.jsonl) so
`--resume` continues, and the points run on the sweep executors. Prints the capacity table (with the
binding constraint and the ratio to the first system) and draws latency vs rate with the knees.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from analysis.cli import inputs, tables
from analysis.cli.simulate import (
    EXECUTORS,
    Arrival,
    Block,
    Chunked,
    Config,
    Cv,
    Engine,
    Fmt,
    Gpu,
    KvDtype,
    KvGb,
    KvTokens,
    Latency,
    LoadFactor,
    MaxLen,
    MaxSeqs,
    MaxTok,
    MemUtil,
    Model,
    NumReq,
    OLen,
    Out,
    Placement,
    PLen,
    Preempt,
    Prefix,
    Preset,
    Rate,
    Replicas,
    Router,
    Sampling,
    Seed,
    SkipBad,
    SlidingWindow,
    Trace,
    Window,
    _default_out,
    _errors,
    _experiment,
    _num,
    _split,
)

Slo = Annotated[list[str] | None, typer.Option(
    "--slo", help="Latency target NAME=SECONDS (repeatable): ttft/tpot/e2e/norm _ p50/p90/p99/mean, e.g. "
                  "--slo ttft_p99=2 --slo tpot_p50=0.05 (norm: normalized latency, s per output token).")]


def register(app: typer.Typer) -> None:
    """Register `capacity` on the app."""

    @app.command("capacity")
    def capacity_cmd(config: Config = None,
                     systems: Annotated[str | None, typer.Option("--systems", help="Comma-separated systems (default paged,max,pow2,oracle).")] = None,
                     slo: Slo = None,
                     start_rate: Annotated[float, typer.Option("--start-rate", help="First rate tried (req/s).")] = 1.0,
                     growth: Annotated[float, typer.Option("--growth", help="Rate factor per growing step (> 1).")] = 2.0,
                     rel_tol: Annotated[float, typer.Option("--rel-tol", help="Stop when the bracket hi/lo - 1 is at most this.")] = 0.05,
                     min_rate: Annotated[float, typer.Option("--min-rate", help="Lowest rate tried (req/s).")] = 0.01,
                     max_rate: Annotated[float, typer.Option("--max-rate", help="Highest rate tried (req/s).")] = 1024.0,
                     per_round: Annotated[int, typer.Option("--per-round", help="Rates per system evaluated in parallel per round (1: bisection).")] = 1,
                     executor: Annotated[str, typer.Option("--executor", help="process, serial or dask.")] = "process",
                     workers: Annotated[int | None, typer.Option("--workers", "-j", help="Worker processes (default: CPU count).")] = None,
                     scheduler: Annotated[str | None, typer.Option("--scheduler", help="Dask scheduler address (default: a local cluster).")] = None,
                     resume: Annotated[bool, typer.Option("--resume", help="Continue the search in --out; evaluated rates are not redone.")] = False,
                     plots: Annotated[bool, typer.Option("--plots/--no-plots", help="Draw latency vs rate into <out>/plots.")] = True,
                     replicas: Replicas = None, router: Router = None, load_factor: LoadFactor = None,
                     routers: Annotated[str | None, typer.Option("--routers", help="Compare routing policies (comma list; needs --replicas >= 2): one search per system and router.")] = None,
                     vary: Annotated[list[str] | None, typer.Option("--vary", help="Also search under each value of a setting, NAME=V1,V2 (repeatable; any experiment field, e.g. kv_dtype=fp16,fp8_e4m3 or scheduler.max_num_seqs=64,256).")] = None,
                     preset: Preset = None, trace: Trace = None, fmt: Fmt = None, num_requests: NumReq = None,
                     rate: Rate = None, arrival: Arrival = None, cv: Cv = None, prompt_len: PLen = None,
                     output_len: OLen = None, window: Window = None, skip_bad_rows: SkipBad = None,
                     sampling: Sampling = None, model: Model = None, gpu: Gpu = None, kv_dtype: KvDtype = None,
                     kv_tokens: KvTokens = None, kv_gb: KvGb = None, mem_util: MemUtil = None, max_len: MaxLen = None,
                     latency: Latency = None, engine: Engine = None, block_size: Block = None,
                     placement: Placement = None,
                     prefix: Prefix = None, max_seqs: MaxSeqs = None, max_tokens: MaxTok = None,
                     chunked: Chunked = None, preemption: Preempt = None, sliding_window: SlidingWindow = None,
                     seed: Seed = None, out: Out = None) -> None:
        """Highest request rate per system meeting latency targets (bracketing search, resumable).

        The workload (with its seeds) is built once and its arrival times scaled to each rate, so the
        same arrival pattern is replayed faster or slower; --rate sets the rate it is scaled from
        (default: the synthetic rate, or a trace's own mean rate).

        Examples:
          pagesim capacity --slo ttft_p99=2 --slo tpot_p50=0.05 --systems paged,max,pow2,oracle
          pagesim capacity --slo norm_p50=0.1 --systems paged-8,paged-16,paged-32 --out results/cap
          pagesim capacity --slo norm_p50=0.1 --out results/cap --resume
          pagesim capacity --slo ttft_p99=2 --systems paged,max --vary kv_dtype=fp16,fp8_e4m3
          pagesim capacity --slo ttft_p99=2 --systems paged --vary engine=ideal,vllm-2023
          pagesim capacity --slo ttft_p99=5 --trace ../shared/traces/mooncake_fast25/conversation_trace.jsonl \\
            --model llama-3-8b --max-model-len 131072 --replicas 4 --routers round-robin,prefix-aware --prefix-caching
        """
        with _errors("capacity"):
            from analysis.capacity.runner import run_capacity
            from analysis.capacity.search import SearchSpec
            from analysis.capacity.slo import parse_targets

            if executor not in EXECUTORS:
                raise ValueError(f"--executor {executor!r} unknown (valid: {', '.join(EXECUTORS)})")
            if out is None and resume:
                raise ValueError("--resume needs --out DIR (the search to continue)")
            targets = parse_targets(slo or [])
            spec = SearchSpec(start=start_rate, growth=growth, rel_tol=rel_tol, min_rate=min_rate,
                              max_rate=max_rate, per_round=per_round)
            extra = {"systems": _split(systems)} if systems else {}
            exp = _experiment(config, locals(), **extra)
            axes: dict[str, list[Any]] = {}
            for v in vary or []:
                name, eq, vals = v.partition("=")
                if not eq or not name.strip():
                    raise ValueError(f"--vary {v!r} not understood (valid: NAME=V1,V2,...)")
                axes[name.strip()] = _split(vals, _num) or []
            if routers:
                if exp.replicas < 2:
                    raise ValueError("--routers compares routing policies across replicas (valid: with --replicas >= 2)")
                axes["router"] = _split(routers) or []
            from analysis.results_io import check_out_dir

            out_dir = _default_out("capacity", out)
            check_out_dir(out_dir)
            o, err = tables.consoles()
            if exp.workload.trace is not None:  # a trace's longest request decides the defaults, as in run
                exp, _, _ = inputs.fit_to_workload(exp, inputs.fixed_settings(locals(), config, tuple(axes)), o)
            err.print(f"capacity of {', '.join(exp.systems)} under {', '.join(f'{t.name} <= {t.bound:g}' for t in targets)}"
                       f" on {exp.title()} -> {out_dir}")
            res = run_capacity(exp, targets, out_dir, spec, executor=executor, workers=workers,
                               scheduler=scheduler, resume=resume, vary=axes)
            _print(o, res.capacity, exp.title())
            o.print(f"{len(res.points)} rates evaluated ({res.ran} run now, {res.reused} from the log); "
                     f"results: {out_dir}/ (capacity.csv, summary.csv, points.jsonl)")
            capped = res.capacity.loc[res.capacity["reason"] == "max_rate", "label"].tolist()
            if capped:
                err.print(f"  note: {', '.join(map(str, capped))} met the targets up to --max-rate {max_rate:g}: the "
                           "whole workload as one burst meets them; use more requests (-n) for a finite answer")
            for f in res.failed:
                err.print(f"  search stopped by a failed point: {f}")
            if res.interrupted:
                typer.echo(f"pagesim capacity: interrupted; evaluated rates kept. Continue with: "
                           f"pagesim capacity ... --out {out_dir} --resume", err=True)
                raise typer.Exit(130)
            if plots and not res.points.empty:
                from analysis.capacity.plot import plot_capacity

                plot_capacity(res.points, res.capacity, targets, Path(out_dir) / "plots" / "capacity_latency",
                              exp.title())


def _print(o: Any, df: Any, title: str) -> None:
    from rich.table import Table

    ratio = next(c for c in df.columns if c.startswith("ratio_vs_"))
    t = Table(title=f"Capacity (highest rate meeting every target): {title}", title_justify="left",
              header_style="bold", caption=f"ratio: capacity / that of {df['label'].iloc[0]}", caption_justify="left")
    # Short headers so the names fit the compact 100-column console.
    for h in ("system", "req/s", "1st fail", "binding", "stop", "tried", "ratio"):
        t.add_column(h, justify="left" if h in ("system", "binding", "stop") else "right", no_wrap=h == "system")
    for _, r in df.iterrows():
        lf = r["lowest_fail_rps"]
        t.add_row(str(r["label"]), f"{r['capacity_rps']:.4g}", "" if lf is None or lf != lf else f"{lf:.4g}",
                  str(r["binding"]), str(r["reason"]), str(r["evaluations"]),
                  "" if r[ratio] != r[ratio] else f"{r[ratio]:.2f}x")
    o.print(t)
