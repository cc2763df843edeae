"""Fit a serving engine's CPU overheads (per step, per running sequence) to measured serving benchmarks
by simulating them (gpu.calibration.serving replays the requests).

The two numbers are the engine profile's `step_overhead_s` and `seq_overhead_s` (sim.timing.engines);
every other term (GPU work, kernel costs, swaps) stays the base profile's and the latency model's. The
fit minimizes the weighted sum of squared log ratios simulated / measured of the fit targets (FIT_TARGETS)
over the FIT requests (even positions in the file) of every fit benchmark; the held-out report is the
ODD positions of the same runs (requests the fit never looked at, though they shared the run) and every
metric of `held_out` benchmark files (the real test: other rates or datasets). Search: a coarse grid,
then Nelder-Mead from the best grid point (deterministic; each point is one simulation per seed).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from gpu.calibration.kernels import CalibrationError
from gpu.calibration.serving import (
    METRICS,
    ServingBenchmark,
    measured_metrics,
    metrics_of,
    replay_requests,
)
from sim.config import PagedCacheSpec, SchedulerConfig, SimConfig
from sim.engine import simulate
from sim.presets import get_gpu, get_model, kv_capacity_tokens
from sim.timing.engines import EngineProfile, get_engine
from sim.timing.latency import load_latency_model

#: Metrics the fit matches, with weights (TTFT is dominated by queueing near saturation: half weight),
#: plus PER_REQUEST_TPOT_WEIGHT x the mean squared log ratio of each fit request's own TPOT: a request's
#: TPOT follows the batch sizes it lived through, so the spread over requests separates the per-step
#: from the per-sequence overhead where aggregate metrics alone cannot.
FIT_TARGETS: dict[str, float] = {"mean_tpot_s": 1.0, "median_tpot_s": 1.0, "median_ttft_s": 0.5,
                                 "request_throughput": 1.0}
PER_REQUEST_TPOT_WEIGHT = 2.0
STEP_GRID_S: tuple[float, ...] = (0.0, 0.5e-3, 1e-3, 2e-3, 4e-3, 8e-3)
SEQ_GRID_S: tuple[float, ...] = (0.0, 1e-5, 3e-5, 1e-4, 3e-4)


@dataclass(frozen=True, slots=True)
class ReplaySetup:
    """How a benchmark is replayed: the model, GPU and serving settings of the measured server.

    latency: None (roofline) or a parameters file/dict (e.g. one `pagesim calibrate` wrote from GEMM and
    kernel timings); seeds: arrival-time draws averaged per simulated point (vLLM's draw is not saved).
    """

    model: str
    gpu: str
    tensor_parallel: int = 1
    latency: Any = None
    block_size: int = 16
    max_num_seqs: int = 256
    max_num_batched_tokens: int | None = None
    chunked_prefill: bool = False
    gpu_memory_utilization: float = 0.9
    kv_capacity_tokens: int | None = None
    seeds: tuple[int, ...] = (0,)

    def config(self, engine: EngineProfile | None) -> SimConfig:
        """The SimConfig of one replay with `engine`'s overheads (latency model built here: tp-aware).

        engine None: the one the latency params file names, else the default profile."""
        m, g = get_model(self.model), get_gpu(self.gpu)
        cap = self.kv_capacity_tokens or kv_capacity_tokens(
            m, g, gpu_memory_utilization=self.gpu_memory_utilization, tensor_parallel=self.tensor_parallel)
        lat = load_latency_model(self.latency, m, g, tensor_parallel=self.tensor_parallel, engine=engine)
        sched = SchedulerConfig(max_num_seqs=self.max_num_seqs, max_num_batched_tokens=self.max_num_batched_tokens,
                                chunked_prefill=self.chunked_prefill)
        return SimConfig(model=m, gpu=g, cache=PagedCacheSpec(block_size=self.block_size), scheduler=sched,
                         kv_capacity_tokens=cap, latency=lat, record_steps=False, memory_sample_interval_s=1.0)


def replay(b: ServingBenchmark, setup: ReplaySetup, engine: EngineProfile | None) -> dict[str, Any]:
    """Simulate the benchmark once per seed. "runs": per seed (ttft, tpot, duration) with per-request
    arrays in the benchmark's kept order (NaN if not finished); "ttft"/"tpot"/"duration": their means
    over seeds (what the per-request fit loss compares); "engine": the profile's name."""
    n = b.index.size
    pos = {int(r): j for j, r in enumerate(b.index)}
    cfg = setup.config(engine)
    runs = []
    for seed in setup.seeds:
        res = simulate(replay_requests(b, np.random.default_rng(seed)), cfg, rng=seed)
        t1, t2 = np.full(n, np.nan), np.full(n, np.nan)
        end = 0.0
        for r in res.requests:
            if r.status == "finished":
                j = pos[int(r.req_id)]
                t1[j], t2[j] = r.ttft_s, r.tpot_s
                end = max(end, r.finish_s)
        runs.append((t1, t2, end))
    return {"runs": runs, "ttft": np.mean([r[0] for r in runs], axis=0), "tpot": np.mean([r[1] for r in runs], axis=0),
            "duration": float(np.mean([r[2] for r in runs])), "engine": cfg.latency.engine.name}


def split_rows(n: int) -> tuple[np.ndarray, np.ndarray]:
    """(fit rows, held-out rows): even and odd positions of the kept requests."""
    idx = np.arange(n)
    return idx[0::2], idx[1::2]


def sim_metrics(b: ServingBenchmark, sim: dict[str, Any], rows: np.ndarray) -> dict[str, float]:
    """METRICS of a replay over `rows` (throughput over every request of the run), computed per seed
    and averaged (so a p99 is the mean of each draw's p99, not the p99 of averaged requests)."""
    per_seed = []
    for ttft, tpot, end in sim["runs"]:
        done, dur = np.isfinite(ttft), max(float(end), 1e-12)
        out = metrics_of(ttft[rows], tpot[rows], b.output_lens[rows], int(done[rows].sum()), dur)
        out["request_throughput"] = int(done.sum()) / dur
        out["output_throughput"] = float(b.output_lens[done].sum()) / dur
        per_seed.append(out)
    return {k: float(np.mean([m[k] for m in per_seed])) for k in per_seed[0]}


def _loss(meas: dict[str, float], sim: dict[str, float]) -> float:
    tot = 0.0
    for k, w in FIT_TARGETS.items():
        m, s = meas[k], sim[k]
        if not (math.isfinite(m) and m > 0):
            continue
        tot += w * (math.log(s / m) ** 2 if math.isfinite(s) and s > 0 else 25.0)
    return tot


def _nelder_mead(f: Callable[[tuple[float, float]], float], x0: tuple[float, float], step: tuple[float, float],
                 max_evals: int) -> tuple[float, float]:
    """A plain 2-D Nelder-Mead from x0 (initial simplex: x0 and x0 + each step), at most max_evals points.

    The valley of the overhead fit runs diagonally (more per-step time can trade for less per-sequence
    time), where axis-aligned searches crawl; the simplex follows it.
    """
    pts = [np.array(x0, float), np.array(x0, float) + [step[0], 0.0], np.array(x0, float) + [0.0, step[1]]]
    vals = [f((float(p[0]), float(p[1]))) for p in pts]
    evals = 3
    while evals < max_evals:
        order = np.argsort(vals)
        pts, vals = [pts[i] for i in order], [vals[i] for i in order]
        centroid = (pts[0] + pts[1]) / 2
        refl = centroid + (centroid - pts[2])
        fr = f((float(refl[0]), float(refl[1])))
        evals += 1
        if fr < vals[0]:
            exp = centroid + 2 * (centroid - pts[2])
            fe = f((float(exp[0]), float(exp[1])))
            evals += 1
            pts[2], vals[2] = (exp, fe) if fe < fr else (refl, fr)
        elif fr < vals[1]:
            pts[2], vals[2] = refl, fr
        else:
            con = centroid + 0.5 * (pts[2] - centroid)
            fc = f((float(con[0]), float(con[1])))
            evals += 1
            if fc < vals[2]:
                pts[2], vals[2] = con, fc
            else:  # shrink towards the best point
                for i in (1, 2):
                    pts[i] = pts[0] + 0.5 * (pts[i] - pts[0])
                    vals[i] = f((float(pts[i][0]), float(pts[i][1])))
                evals += 2
        if max(np.abs(pts[1] - pts[0]).max(), np.abs(pts[2] - pts[0]).max()) < 1e-9:
            break
    i = int(np.argmin(vals))
    return float(pts[i][0]), float(pts[i][1])


def _tpot_loss(b: ServingBenchmark, sim: dict[str, Any], rows: np.ndarray) -> float:
    """Mean squared log ratio simulated / measured TPOT over `rows` (unfinished: a large penalty)."""
    m, s = b.tpots[rows], sim["tpot"][rows]
    ok = np.isfinite(m) & (m > 0)
    if not ok.any():
        return 0.0
    r = np.where(np.isfinite(s[ok]) & (s[ok] > 0), np.log(np.maximum(s[ok], 1e-12) / m[ok]), 5.0)
    return float(np.mean(r ** 2))


@dataclass(slots=True)
class OverheadFit:
    """The fitted profile, its two numbers, and the error report."""

    engine: EngineProfile
    step_overhead_s: float
    seq_overhead_s: float
    report: dict[str, Any] = field(default_factory=dict)


def _errors(rows: list[dict[str, Any]]) -> dict[str, Any]:
    errs = [abs(r["rel_err"]) for r in rows if math.isfinite(r["rel_err"])]
    if not errs:
        return {"n": 0, "median_rel_err": None, "max_rel_err": None}
    return {"n": len(errs), "median_rel_err": float(np.median(errs)), "max_rel_err": float(max(errs))}


def _rows(name: str, split: str, meas: dict[str, float], sim: dict[str, float],
          keys: Sequence[str]) -> list[dict[str, Any]]:
    return [{"benchmark": name, "split": split, "metric": k, "measured": meas[k], "simulated": sim[k],
             "rel_err": sim[k] / meas[k] - 1.0 if meas[k] and math.isfinite(meas[k]) and math.isfinite(sim[k])
             else math.nan} for k in keys]


def fit_overheads(benchmarks: Sequence[ServingBenchmark], setup: ReplaySetup, base: EngineProfile | str | None,
                  *, held_out: Sequence[ServingBenchmark] = (), step_grid: Sequence[float] = STEP_GRID_S,
                  seq_grid: Sequence[float] = SEQ_GRID_S, max_evals: int = 40,
                  progress: Callable[[str], None] | None = None) -> OverheadFit:
    """Fit (step_overhead_s, seq_overhead_s) of `base` to the benchmarks; see the module docstring."""
    if not benchmarks:
        raise CalibrationError("fit_overheads: no serving benchmark to fit")
    base_p = get_engine(base)
    fit_sets = [(b, *split_rows(b.index.size)) for b in benchmarks]
    targets = [measured_metrics(b, fr) for b, fr, _ in fit_sets]
    cache: dict[tuple[float, float], float] = {}

    def profile(step: float, seq: float) -> EngineProfile:
        return dataclasses.replace(base_p, name=f"{base_p.name}+fit", step_overhead_s=step, seq_overhead_s=seq,
                                   source=f"{base_p.name} with step/sequence overheads fitted to serving "
                                          f"benchmark(s) {', '.join(b.source for b in benchmarks)}")

    def loss(step: float, seq: float) -> float:
        key = (round(step, 12), round(seq, 12))
        if key not in cache:
            eng = profile(step, seq)
            total = 0.0
            for (b, fr, _), t in zip(fit_sets, targets, strict=True):
                sim = replay(b, setup, eng)
                total += _loss(t, sim_metrics(b, sim, fr)) + PER_REQUEST_TPOT_WEIGHT * _tpot_loss(b, sim, fr)
            cache[key] = total
            if progress is not None:
                progress(f"step {step * 1e3:.3f} ms, seq {seq * 1e6:.1f} us: loss {cache[key]:.4f}")
        return cache[key]

    best = min(((s, q) for s in step_grid for q in seq_grid), key=lambda p: loss(*p))
    ds = max(float(np.diff(sorted(step_grid)).max(initial=1e-3)) / 2, 1e-5)
    dq = max(float(np.diff(sorted(seq_grid)).max(initial=1e-5)) / 2, 1e-7)
    best = _nelder_mead(lambda x: loss(max(x[0], 0.0), max(x[1], 0.0)), best, (ds, dq), max_evals)
    best = (max(best[0], 0.0), max(best[1], 0.0))
    eng = profile(*best)
    rows: list[dict[str, Any]] = []
    for (b, fr, hr), t in zip(fit_sets, targets, strict=True):
        sim = replay(b, setup, eng)
        rows += _rows(b.source, "fit", t, sim_metrics(b, sim, fr), list(FIT_TARGETS))
        rows += _rows(b.source, "held-out requests", measured_metrics(b, hr), sim_metrics(b, sim, hr),
                      [k for k in METRICS if k not in ("request_throughput", "output_throughput")])
    for b in held_out:
        all_rows = np.arange(b.index.size)
        rows += _rows(b.source, "held-out file", measured_metrics(b), sim_metrics(b, replay(b, setup, eng), all_rows),
                      list(METRICS))
    report = {"method": "grid + Nelder-Mead on weighted squared log ratios (simulated / measured)",
              "targets": FIT_TARGETS, "seeds": list(setup.seeds), "evaluations": len(cache), "rows": rows,
              "fit": _errors([r for r in rows if r["split"] == "fit"]),
              "held_out": _errors([r for r in rows if r["split"] != "fit"]),
              "loss": loss(*best)}
    return OverheadFit(eng, best[0], best[1], report)


def synthetic_benchmark(input_lens: Sequence[int], output_lens: Sequence[int], request_rate: float,
                        setup: ReplaySetup, engine: EngineProfile, rng: np.random.Generator, *, noise: float = 0.0,
                        seed: int = 0, note: str = "") -> dict[str, Any]:
    """A vLLM-format result dict made by simulating (tests, fixtures): arrivals drawn as `replay` draws
    them with `seed`, TTFT and TPOT from the simulation times (1 + noise * N(0, 1)), each request's itls
    its TPOT repeated (the simulator has no per-token times). Keys as benchmark_serving.py saves them."""
    from gpu.calibration.serving import parse_benchmark

    n = len(input_lens)
    stub = {"input_lens": list(map(int, input_lens)), "output_lens": list(map(int, output_lens)),
            "ttfts": [0.0] * n, "itls": [[] for _ in range(n)], "duration": 1.0, "completed": n,
            "request_rate": request_rate, "burstiness": 1.0}
    b = parse_benchmark(stub, "synthetic")
    sim = replay(b, dataclasses.replace(setup, seeds=(seed,)), engine)
    if not np.isfinite(sim["ttft"]).all():
        raise CalibrationError("synthetic_benchmark: some requests did not finish in the simulation")

    def jitter(x: float) -> float:
        return float(x * max(1.0 + noise * rng.standard_normal(), 0.05))

    ttfts = [jitter(t) for t in sim["ttft"]]
    itls = [[jitter(t)] * (int(o) - 1) if o > 1 else [] for t, o in zip(sim["tpot"], output_lens, strict=True)]
    out_tok = int(sum(output_lens))
    dur = float(sim["duration"])
    return {"date": "synthetic", "backend": "pagesim-synthetic", "model_id": setup.model, "num_prompts": n,
            "note": note or f"synthetic: simulated by pagesim ({setup.model} on {setup.gpu}, engine {engine.name}"
                            f" step {engine.step_overhead_s * 1e3:g} ms + {engine.seq_overhead_s * 1e6:g} us/seq)",
            "request_rate": request_rate, "burstiness": 1.0, "max_concurrency": None, "duration": dur,
            "completed": n, "total_input_tokens": int(sum(input_lens)), "total_output_tokens": out_tok,
            "request_throughput": n / dur, "output_throughput": out_tok / dur,
            "total_token_throughput": (out_tok + int(sum(input_lens))) / dur,
            "input_lens": list(map(int, input_lens)), "output_lens": list(map(int, output_lens)), "ttfts": ttfts,
            "itls": itls, "generated_texts": [""] * n, "errors": [""] * n,
            "mean_ttft_ms": float(np.mean(ttfts)) * 1e3, "median_ttft_ms": float(np.median(ttfts)) * 1e3}
