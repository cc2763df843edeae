"""The Python API behind the CLI: build a workload, run, compare, sweep, report.

    >>> from analysis import api
    >>> df = api.compare(num_requests=100)               # paged vs max / pow2 / oracle
    >>> df = api.run(system="paged-32", out="results/x")  # one system, results written to a directory
    >>> df = api.sweep({"block_size": [8, 16, 32]}, out="results/bs")
Keyword overrides are Experiment fields, `workload.X` / `scheduler.X`, or the short names system,
rate, sampling, num_requests, preset, trace (see analysis.experiment). Each returns the summary table.
"""

from __future__ import annotations

import contextlib
import functools
import json
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import IO, Any

import numpy as np
import pandas as pd

from analysis import results_io
from analysis.experiment import SYNTHETIC_RATE, Experiment, from_dict, parse_sampling, sampling_columns
from analysis.frames import summary_frame, summary_row
from analysis.record_writer import RecordFileWriter
from analysis.sweep import SweepOutcome, expand_grid, point_id, run_sweep
from sim.config import PagedCacheSpec, system_label
from sim.records.results import SimResult
from sim.records.stream import RecordSink
from sim.request import RequestSpec
from workloads.columns import TraceColumns

#: on_start(system, engine) -> stop(): a hook around each engine run (the CLI's progress bar).
OnStart = Callable[[str, Any], Callable[[], None]]
REPLICAS_FILE = "replicas.csv"  # one row per replica of each system (runs with replicas > 1)

#: Sweep axes with a CLI shortcut, and what each one means.
SWEEP_AXES: dict[str, str] = {
    "system": "cache system (paged[-B][+prefix], max, pow2, oracle, ...)",
    "block_size": "paged block size (tokens)",
    "kv_capacity_tokens": "KV pool size (token slots)",
    "kv_budget_gb": "KV pool size (GiB)",
    "rate": "request rate (requests/s)",
    "sampling": "sampling mode (greedy, n=K, beam=K, spec=K[@P])",
}


def experiment(base: Experiment | Mapping[str, Any] | str | Path | None = None, **overrides: Any) -> Experiment:
    """An Experiment from defaults, a dict, a TOML path or an Experiment, with keyword overrides."""
    from analysis.experiment import load_experiment

    if base is None:
        exp = Experiment()
    elif isinstance(base, Experiment):
        exp = base
    elif isinstance(base, (str, Path)):
        exp = load_experiment(base)
    else:
        exp = from_dict(dict(base))
    return exp.with_overrides(overrides) if overrides else exp


def build_workload(exp: Experiment) -> tuple[list[RequestSpec], dict[str, Any]]:
    """The experiment's requests (same for every system) and load statistics.

    Randomness: a generator seeded from (seed, 0), independent of the engine's (seed, 1).
    """
    cols, stats = workload_columns(exp)
    return cols.to_specs(), stats


def workload_columns(exp: Experiment) -> tuple[TraceColumns, dict[str, Any]]:
    """The experiment's requests as columns (`iter_specs()` streams them without building every
    RequestSpec at once; build_workload's list holds the same requests) and load statistics."""
    from workloads import synthetic
    from workloads.lengths import Independent, parse_length

    rng = np.random.default_rng([exp.seed, 0])
    wl = exp.workload
    if wl.trace is None:
        cfg = synthetic.preset(wl.preset)
        if wl.prompt_len or wl.output_len:
            base = cfg.lengths
            if not isinstance(base, Independent):
                raise ValueError(f"workload preset '{wl.preset}' has paired lengths; prompt_len/output_len "
                                 "overrides need an independent-lengths preset (sharegpt, alpaca)")
            cfg = replace(cfg, lengths=Independent(parse_length(wl.prompt_len) if wl.prompt_len else base.prompt,
                                                   parse_length(wl.output_len) if wl.output_len else base.output))
        cfg = replace(cfg, arrival=wl.arrival, cv=wl.cv)
        if wl.sampling is not None:
            cfg = replace(cfg, sampling=parse_sampling(wl.sampling))
        n = wl.num_requests or 1
        cols, clipped = fit_synthetic_columns(synthetic.generate_columns(cfg, n, wl.rate, rng), exp)
        return cols, {"source": "synthetic", "preset": wl.preset, "num_requests": len(cols),
                      "clipped_to_max_model_len": clipped}

    from workloads.loader import TRACE_FORMATS, load_trace, sniff_format

    fmt = wl.format or sniff_format(wl.trace)
    timed = fmt in TRACE_FORMATS and TRACE_FORMATS[fmt].timestamps
    res = load_trace(wl.trace, fmt, skip_bad_rows=wl.skip_bad_rows, window=wl.window, first_n=wl.num_requests,
                     target_rate=wl.rate if timed else None, arrival=wl.arrival,
                     rate=None if timed else (wl.rate or SYNTHETIC_RATE), cv=wl.cv, rng=rng)
    cols = res.columns
    if wl.sampling is not None:
        n_, beam, k, acc = parse_sampling(wl.sampling).sample(len(cols), rng)
        cols = replace(cols, n=np.asarray(n_, dtype=np.int64), beam_width=np.asarray(beam, dtype=np.int64),
                       spec_k=np.asarray(k, dtype=np.int64), spec_accept=np.asarray(acc, dtype=np.float64))
    return cols, {"source": "trace", "format": fmt, **res.stats}


def fit_synthetic(specs: list[RequestSpec], exp: Experiment) -> tuple[list[RequestSpec], int]:
    """Synthetic requests cut to the model's context: an output that would run past max_model_len ends
    there (as vLLM's benchmarks keep ShareGPT pairs within the context); returns (specs, how many were cut).

    A generated length is an assumption, not data: dropping or rejecting such a request would only
    shrink the workload. Trace requests are never cut here (the run rejects them, counted and loud).
    """
    out, cut = [], 0
    mml = _max_model_len(exp)
    for s in specs:
        if s.prompt_len + s.output_len > mml and s.prompt_len < mml:
            s, cut = replace(s, output_len=mml - s.prompt_len), cut + 1
        out.append(s)
    return out, cut


def fit_synthetic_columns(cols: TraceColumns, exp: Experiment) -> tuple[TraceColumns, int]:
    """fit_synthetic on columns (the same cut, vectorized): (columns, how many were cut)."""
    mml = _max_model_len(exp)
    cut = (cols.prompt + cols.output > mml) & (cols.prompt < mml)
    if not cut.any():
        return cols, 0
    return replace(cols, output=np.where(cut, mml - cols.prompt, cols.output)), int(cut.sum())


def _max_model_len(exp: Experiment) -> int:
    from sim.presets import get_model

    return exp.max_model_len if exp.max_model_len is not None else get_model(exp.model).max_model_len


def simulate_system(exp: Experiment, system: str, specs: Iterable[RequestSpec],
                    op_log: IO[str] | None = None, on_start: OnStart | None = None, *,
                    record_sink: RecordSink | None = None, lean: bool = False) -> SimResult:
    """Run one system of `exp` on `specs` (engine randomness seeded from (seed, 1)); with replicas,
    the cluster's combined result (see simulate_replicas; no on_start hook).

    specs: a sequence, or an iterator in arrival order (streamed). on_start(system, engine) -> stop:
    called before the engine runs (a progress display reads the engine's arrival count and clock);
    `stop()` is called when it has finished or failed. record_sink: stream the records to it (see
    sim.records.stream). lean: no step records, one memory sample per simulated second (unless the
    experiment sets an interval), no allocator-monitor samples kept.
    """
    if exp.replicas > 1:
        if op_log is not None:
            raise ValueError("--op-log records one allocator; it is not available with --replicas > 1")
        if record_sink is not None or lean:
            raise ValueError("--lean streams one engine's records; it is not available with --replicas > 1")
        return simulate_replicas(exp, system, list(specs))[0]
    from sim.engine import Engine

    sink = None
    if op_log is not None:
        def sink(op: dict[str, Any]) -> None:
            op_log.write(json.dumps(op, separators=(",", ":")) + "\n")
    cfg = exp.sim_config(system)
    if lean:
        cfg = replace(cfg, record_steps=False, memory_sample_interval_s=cfg.memory_sample_interval_s or 1.0)
    engine = Engine(specs if isinstance(specs, Iterator) else list(specs), cfg,
                    rng=np.random.default_rng([exp.seed, 1]), op_sink=sink, record_sink=record_sink)
    stop = on_start(system, engine) if on_start is not None else None
    try:
        return engine.run()
    finally:
        if stop is not None:
            stop()


def simulate_replicas(exp: Experiment, system: str, specs: Sequence[RequestSpec]
                      ) -> tuple[SimResult, list[SimResult], list[dict[str, Any]]]:
    """Run one system of `exp` behind its router: (cluster result, per-replica results, one summary
    row per replica). One replica: the single engine's result three ways (same numbers)."""
    if exp.replicas == 1:
        r = simulate_system(exp, system, specs)
        return r, [r], [{"replica": 0, **summary_row(r)}]
    from sim.cluster import simulate_cluster

    c = simulate_cluster(list(specs), exp.sim_config(system), exp.cluster_spec(),
                         rng=np.random.default_rng([exp.seed, 1]))
    return c.cluster, c.replicas, c.per_replica


def run(base: Experiment | Mapping[str, Any] | str | Path | None = None, out: str | Path | None = None, *,
        csv: bool = False, op_log: bool = False, plots: bool = True, on_result: Any = None,
        metrics_format: str = "none", on_start: OnStart | None = None,
        specs: Sequence[RequestSpec] | None = None, trace_out: str | Path | None = None,
        lean: bool = False, overwrite: bool = False,
        **overrides: Any) -> pd.DataFrame:
    """Run every system of the experiment on one workload; returns the summary (one row per system).

    With `out`, writes the results directory (see analysis.results_io): per-system records,
    summary.csv/.parquet, config.toml/.json, op logs (`op_log`), plots (`plots`), and the run totals
    as Prometheus text (`metrics_format="prometheus"`: metrics.prom, see analysis.prometheus).
    A directory that already holds results is refused unless `overwrite` (its known outputs are
    then deleted first), so an earlier run's records never mix into this one.
    `on_result(result)` is called after each system (the CLI prints progress with it), `on_start`
    before (see simulate_system). specs: the workload, when the caller built it (else built here).
    With replicas (exp.replicas > 1) each system's row is the cluster's and replicas.csv holds one row
    per replica. trace_out: write a Perfetto / chrome://tracing schedule trace there (one track per
    system and replica; analysis.schedule_trace).
    lean: for huge workloads: the requests are streamed to the engine and the request records (and
    one memory sample per simulated second) streamed to Parquet/CSV as the run goes, with no step or
    allocator-monitor records and no plots; memory stays bounded by the live requests (the summary's
    latency percentiles are then within 0.04%, see sim.records.stream).
    """
    from analysis.prometheus import check_format, write_metrics

    check_format(metrics_format)
    exp = experiment(base, **overrides)
    if lean and trace_out is not None:
        raise ValueError("--trace-out draws the step records, which --lean does not keep (valid: one of them)")
    cols: TraceColumns | None = None
    if specs is None:
        cols, _stats = workload_columns(exp)
        if not lean:  # lean streams the requests from the columns instead of building them all
            specs = cols.to_specs()
    out_dir = Path(out) if out is not None else None
    if out_dir is not None:
        results_io.prepare_out_dir(out_dir, overwrite=overwrite)
        results_io.write_config(out_dir, exp.to_dict())
    rows = []
    replica_rows: list[dict[str, Any]] = []
    tracks: list[tuple[str, SimResult]] = []
    for system in exp.systems:
        label = system_label(exp.sim_config(system).cache)
        run_dir = out_dir / results_io.RUNS_DIR / results_io.slug(label) if out_dir is not None else None
        if exp.replicas > 1:
            if op_log:
                raise ValueError("--op-log records one allocator; it is not available with --replicas > 1")
            if lean:
                raise ValueError("--lean streams one engine's records; it is not available with --replicas > 1")
            assert specs is not None
            result, per, prow = simulate_replicas(exp, system, specs)
            replica_rows.extend(prow)
            tracks.extend((f"{result.system} / replica {i}", r) for i, r in enumerate(per))
        else:
            with contextlib.ExitStack() as stack:
                op_file = None
                if run_dir is not None and op_log:
                    run_dir.mkdir(parents=True, exist_ok=True)
                    op_file = stack.enter_context(open(run_dir / "ops.jsonl", "w", encoding="utf-8"))
                if lean:  # stream the requests in and the records out
                    writer = stack.enter_context(RecordFileWriter(run_dir, label, csv=csv)) if run_dir else None
                    stream = cols.iter_specs() if cols is not None else iter(specs or ())
                    result = simulate_system(exp, system, stream, op_file, on_start, record_sink=writer, lean=True)
                else:
                    assert specs is not None
                    result = simulate_system(exp, system, specs, op_file, on_start)
            tracks.append((result.system, result))
        row = summary_row(result)
        row.update(sampling_columns(exp.workload.sampling))
        rows.append(row)
        if out_dir is not None and run_dir is not None:
            if lean:
                results_io.write_run_summary(run_dir, result)
            else:
                results_io.save_run(out_dir, result, csv=csv)
            results_io.write_summary(out_dir, rows)  # after every system: an interrupt keeps the finished ones
        if on_result is not None:
            on_result(result)
    df = summary_frame(rows)
    if trace_out is not None:
        from analysis.schedule_trace import write_trace

        write_trace(trace_out, [r for _, r in tracks], [n for n, _ in tracks], {"title": exp.title()})
    if out_dir is not None:
        write_metrics(out_dir, rows, metrics_format)
        if replica_rows:
            pd.DataFrame(replica_rows).to_csv(out_dir / REPLICAS_FILE, index=False)
    if out_dir is not None and plots and not lean:
        from analysis.report import render_plots

        render_plots(results_io.load_results(out_dir), exp.title())
    return df


def compare(base: Experiment | Mapping[str, Any] | str | Path | None = None, out: str | Path | None = None,
            **kwargs: Any) -> pd.DataFrame:
    """The same workload through paged and contiguous (max / pow2 / oracle) caches (see `run`)."""
    return run(base, out, **kwargs)


def sweep_point(base: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    """One sweep point: the base experiment with `params` applied, one system; returns its summary row.

    Module-level (picklable) so process and Dask workers can run it.
    """
    exp = from_dict(base).with_overrides(params)
    if len(exp.systems) != 1:
        raise ValueError(f"a sweep point runs one system; got {list(exp.systems)} (add a 'system' axis)")
    specs, _ = build_workload(exp)
    row = summary_row(simulate_system(exp, exp.systems[0], specs))
    row.update(sampling_columns(exp.workload.sampling))
    row["series"] = str(params.get("system", exp.systems[0]))  # the line a plot draws it on ("paged")
    return row


def sweep(axes: Mapping[str, Sequence[Any]], base: Experiment | Mapping[str, Any] | str | Path | None = None,
          out: str | Path = "results/sweep", *, executor: str = "process", workers: int | None = None,
          scheduler: str | None = None, client: Any = None, resume: bool = False, retry_failed: bool = False,
          progress: bool = False, overwrite: bool = False, **overrides: Any) -> pd.DataFrame:
    """Run the grid `axes` (name -> values) over the base experiment; returns one row per point.

    Without a 'system' axis the base experiment's systems become one. Every point is validated
    before any runs (a bad value fails at once with its error). See analysis.sweep.run_sweep for
    executors, resume and interruption; `sweep_outcome` returns the counts too.
    """
    return sweep_outcome(axes, base, out, executor=executor, workers=workers, scheduler=scheduler, client=client,
                         resume=resume, retry_failed=retry_failed, progress=progress, overwrite=overwrite,
                         **overrides).summary


def sweep_outcome(axes: Mapping[str, Sequence[Any]], base: Experiment | Mapping[str, Any] | str | Path | None,
                  out: str | Path, *, overwrite: bool = False, **kwargs: Any) -> SweepOutcome:
    """Like `sweep`, returning the SweepOutcome (ran / skipped / failed / interrupted and the summary).

    An `out` that holds other results is refused unless `overwrite` (cleared first) or, for this
    sweep's own points log, `resume` (see results_io.prepare_out_dir)."""
    run_kw = {k: kwargs.pop(k) for k in ("executor", "workers", "scheduler", "client", "resume", "retry_failed",
                                         "progress") if k in kwargs}
    exp = experiment(base, **kwargs)
    grid = dict(axes)
    if "system" not in grid:
        grid = {"system": list(exp.systems), **grid}
    exp = replace(exp, systems=tuple(str(s) for s in grid["system"]))  # what the saved config shows
    base_dict = exp.to_dict()
    points = []
    seen: set[str] = set()
    for p in expand_grid(grid):
        # Fail fast on a bad axis value, before any process starts.
        pexp = exp.with_overrides(dict(p.params))
        if "block_size" in p.params and not isinstance(pexp.cache_spec(pexp.systems[0]), PagedCacheSpec):
            # Block size means nothing to a contiguous cache: run it once, not once per block size.
            params = {k: v for k, v in p.params.items() if k != "block_size"}
            p = replace(p, point_id=point_id(params), params=params)
        if p.point_id not in seen:
            seen.add(p.point_id)
            points.append(p)
    out_dir = results_io.prepare_out_dir(Path(out), overwrite=overwrite, resume=bool(run_kw.get("resume")))
    results_io.write_config(out_dir, {**base_dict, "sweep": {"axes": {k: list(v) for k, v in grid.items()}}})
    fn = functools.partial(sweep_point, base_dict)
    # The base config is part of every point's identity: resuming with a changed base reruns all points.
    salted = [replace(p, point_id=_salt(p.point_id, base_dict)) for p in points]
    return run_sweep(salted, fn, out_dir, **run_kw)


def _salt(pid: str, base: dict[str, Any]) -> str:
    return point_id({"point": pid, "base": base})


def report(out: str | Path) -> tuple[Path, Path]:
    """Write report.html and report.md for a results directory; returns their paths."""
    from analysis.report import build_report

    return build_report(out)
