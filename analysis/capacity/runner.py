"""The capacity search driven over real simulations, on the sweep executors, resumable.

Every system's search (analysis.capacity.search) proposes rates; each round's (system, rate) points
run through analysis.sweep.run_sweep (process pool, serial or Dask), which appends each finished
point to points.jsonl at once. A point's id depends on the base experiment, the system and the rate,
not on the targets, so `resume` reuses every point already simulated (even under new targets) and
the search continues where it stopped. A point is the base workload built once with its seeds and
its arrival times scaled to the point's rate (the same arrival pattern at every rate), so a rate's
result is reproducible and latency grows with the rate as the pattern compresses.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import pandas as pd

from analysis import results_io
from analysis.capacity.search import SearchSpec, answer, next_rates
from analysis.capacity.slo import Target, judge
from analysis.experiment import Experiment, from_dict
from analysis.sweep import SweepPoint, point_id, run_sweep
from sim.request import RequestSpec

CAPACITY_FILE = "capacity.csv"


def nominal_rate(exp: Experiment, specs: Sequence[RequestSpec]) -> float:
    """The workload's rate at scale 1: the configured rate, else requests / arrival span."""
    if exp.workload.rate is not None:
        return float(exp.workload.rate)
    times = [s.arrival_time for s in specs]
    span = max(times) - min(times) if times else 0.0
    if span <= 0:
        raise ValueError("the workload's arrivals span no time: give --rate (the rate the pattern is scaled from)")
    return len(times) / span


def scaled(specs: Sequence[RequestSpec], factor: float) -> list[RequestSpec]:
    """The same requests with arrival times multiplied by `factor` (cancel times are relative: kept)."""
    return [replace(s, arrival_time=s.arrival_time * factor) for s in specs]


def series_name(params: Mapping[str, Any]) -> str:
    """A search's name: the system, then each varied setting ("paged", "paged@router=prefix-aware",
    "max@kv_dtype=fp8_e4m3")."""
    return str(params["system"]) + "".join(f"@{k}={v}" for k, v in params.items() if k not in ("system", "rate"))


def capacity_point(base: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    """One (system, varied settings, rate) point: the base workload scaled to `rate`; its summary row.

    Module-level (picklable) for process and Dask workers.
    """
    from analysis.api import build_workload, simulate_replicas
    from analysis.frames import summary_row

    exp = from_dict(base).with_overrides({k: v for k, v in params.items() if k != "rate"})
    specs, _ = build_workload(exp)
    rate = float(params["rate"])
    specs = scaled(specs, nominal_rate(exp, specs) / rate)
    result = simulate_replicas(exp, exp.systems[0], specs)[0]
    row = summary_row(result)
    row.update(rate=rate, series=series_name(params))
    return row


@dataclass(slots=True)
class CapacityOutcome:
    """What a capacity run found: one row per system, every evaluated point, and run counts."""

    capacity: pd.DataFrame
    points: pd.DataFrame
    ran: int = 0
    reused: int = 0
    rounds: int = 0  # batches of points run (a parallel search waits on each)
    failed: list[str] = field(default_factory=list)
    interrupted: bool = False


def run_capacity(exp: Experiment, targets: Sequence[Target], out: Path | str, spec: SearchSpec | None = None, *,
                 executor: str = "process", workers: int | None = None, scheduler: str | None = None,
                 client: Any = None, resume: bool = False, max_rounds: int = 60,
                 vary: Mapping[str, Sequence[Any]] | None = None,
                 point_fn: Callable[[dict[str, Any], dict[str, Any]], Mapping[str, Any]] = capacity_point
                 ) -> CapacityOutcome:
    """Search the highest rate meeting `targets` for each system of `exp`; writes `out`.

    Files: points.jsonl (every evaluated point, appended as it finishes), summary.csv (one row per
    point), capacity.csv (one row per system), config.toml/.json (experiment + targets + search).
    point_fn(base experiment dict, {"system", "rate"}) -> summary row: what evaluates a point
    (default capacity_point; tests pass a model with a known answer). max_rounds bounds the rounds
    of this call (a search cut short continues with resume=True). vary: experiment settings to search
    each system under, name -> values (any Experiment.with_overrides key: router, kv_dtype, block_size,
    scheduler.max_num_seqs, ...): one search per system and combination.
    """
    spec = spec or SearchSpec()
    out_dir = Path(out)
    log_path = out_dir / results_io.POINTS_FILE
    if log_path.exists() and not resume:
        raise ValueError(f"{log_path} exists: resume that search (--resume) or choose another output directory")
    keys = list(vary or {})
    combos = [{"system": s, **dict(zip(keys, vals, strict=True))} for s in exp.systems
              for vals in itertools.product(*((vary or {})[k] for k in keys))]
    for c in combos:  # a bad value fails here, before anything runs
        exp.with_overrides(c)
    names = [series_name(c) for c in combos]
    base = exp.to_dict()
    ident = {k: v for k, v in base.items() if k != "systems"}
    out_dir.mkdir(parents=True, exist_ok=True)
    results_io.write_config(out_dir, {**base, "capacity": {"slo": {t.name: t.bound for t in targets},
                                                           "search": asdict(spec)}})
    fn = functools.partial(point_fn, base)
    points: dict[str, SweepPoint] = {}
    rows: dict[str, dict[str, Any]] = {}  # point id -> its log record
    outcome = CapacityOutcome(pd.DataFrame(), pd.DataFrame())
    errors: dict[str, str] = {}

    def make(combo: Mapping[str, str], rate: float) -> SweepPoint:
        params = {**combo, "rate": rate}
        # The system list is not part of a point's identity (its system is): adding a system to a
        # search keeps every point already simulated.
        return SweepPoint(point_id({"point": point_id(params), "base": ident}), params)

    def verdicts(name: str) -> dict[float, bool]:
        out: dict[float, bool] = {}
        for pid, p in points.items():
            rec = rows.get(pid)
            if series_name(p.params) == name and rec is not None and rec["status"] == "ok":
                out[float(p.params["rate"])] = judge(rec["row"], targets).ok
        return out

    log = results_io.PointLog(log_path)
    for _ in range(max_rounds):
        if log.path.exists():
            log.repair()
            rows = log.read()
        new: list[SweepPoint] = []
        for combo, name in zip(combos, names, strict=True):
            while name not in errors:  # points already in the log (a resumed search) are taken as they are
                todo = [make(combo, r) for r in next_rates(verdicts(name), spec)]
                for p in todo:
                    points.setdefault(p.point_id, p)
                    rec = rows.get(p.point_id)
                    if rec is not None and rec["status"] == "failed":  # a crash is not a latency: stop
                        errors[name] = f"rate {p.params['rate']:g}: {rec.get('error', '')}"
                pending = [p for p in todo if p.point_id not in rows]
                outcome.reused += len(todo) - len(pending)
                if name in errors or not todo:
                    break
                if pending:
                    new.extend(pending)
                    break
        if not new:
            break
        res = run_sweep(list(points.values()), fn, out_dir, executor=executor, workers=workers,
                        scheduler=scheduler, client=client, resume=True, progress=False)
        outcome.ran += res.ran
        outcome.rounds += 1
        if res.interrupted:
            outcome.interrupted = True
            rows = log.read()
            break
    else:
        rows = log.read()
    table = points_frame(points.values(), rows, targets)
    outcome.points = table
    outcome.capacity = capacity_frame(names, table, targets, spec, errors, combos)
    outcome.failed = [f"{s}: {e}" for s, e in errors.items()]
    outcome.capacity.to_csv(out_dir / CAPACITY_FILE, index=False)
    return outcome


def points_frame(points: Sequence[SweepPoint] | Any, rows: Mapping[str, Mapping[str, Any]],
                 targets: Sequence[Target]) -> pd.DataFrame:
    """One row per evaluated point: system, rate, each target's value and ratio, met, the summary row."""
    recs = []
    for p in points:
        rec = rows.get(p.point_id)
        if rec is None or rec["status"] != "ok":
            continue
        row = dict(rec["row"])
        v = judge(row, targets)
        r: dict[str, Any] = {"series": series_name(p.params), **p.params, "met": v.ok, "binding": v.binding,
                             "system_label": row.get("system", "")}
        for t in targets:
            r[t.name] = row.get(t.key, math.nan)
            r[f"{t.name}_ratio"] = v.ratios[t.name]
        for k, val in row.items():
            r.setdefault(k, val)
        recs.append(r)
    if not recs:
        return pd.DataFrame(columns=["series", "system", "rate", "met", "binding"])
    return pd.DataFrame(recs).sort_values(["series", "rate"], kind="stable").reset_index(drop=True)


def capacity_frame(series: Sequence[str], points: pd.DataFrame, targets: Sequence[Target], spec: SearchSpec,
                   errors: Mapping[str, str] | None = None, params: Sequence[Mapping[str, Any]] = ()
                   ) -> pd.DataFrame:
    """One row per search (a system and its varied settings `params`): capacity (req/s), the lowest
    failing rate, the binding constraint there, the stop reason, evaluations, the capacity relative to
    the first search."""
    errors = errors or {}
    out = []
    for k, s in enumerate(series):
        sub = points[points["series"] == s] if not points.empty else points
        results = {float(r): bool(m) for r, m in zip(sub.get("rate", []), sub.get("met", []), strict=True)}
        c = answer(results, spec)
        binding = ""
        if c.lowest_fail is not None:
            at = sub[sub["rate"] == c.lowest_fail].iloc[0]
            binding = str(at["binding"])
        p = dict(params[k]) if k < len(params) else {"system": s}
        real = str(sub["system_label"].iloc[0]) if not sub.empty else str(p["system"])
        # Varied settings the run's own label does not already name ("paged-16+prefix x4 prefix-aware").
        extra = "".join(f" {n}={v}" for n, v in p.items() if n != "system" and str(v) not in real)
        out.append({"series": s, **p, "label": real + extra, "capacity_rps": c.capacity, "lowest_fail_rps": c.lowest_fail,
                    "binding": binding if c.reason == "converged" or c.reason == "min_rate" else "",
                    "reason": "error: " + errors[s] if s in errors else c.reason, "evaluations": c.evaluations})
    df = pd.DataFrame(out)
    ref = df["capacity_rps"].iloc[0] if len(df) else math.nan
    df[f"ratio_vs_{series[0]}"] = df["capacity_rps"] / ref if ref and ref == ref else math.nan
    return df
