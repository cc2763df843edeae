"""Metrics: per-request records from finished groups and the run summary (SUMMARY_KEYS + extras).

Latencies follow the vLLM paper: TTFT = first token - arrival, TPOT = (finish - first token) /
(output tokens - 1), normalized latency = end-to-end latency / output tokens. Memory percentages are
time-weighted means of the memory samples (each sample holds until the next one) over the pool.
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass, fields
from functools import reduce
from itertools import chain
from operator import attrgetter
from typing import TYPE_CHECKING, Any

import numpy as np

from sim.records.results import LATENCY_FIELDS, MEMORY_CATEGORIES, SUMMARY_KEYS, RequestRecord, SimResult

if TYPE_CHECKING:
    from sim.records.stream import RunningRequests
    from sim.sched.sequence import SeqGroup
    from sim.sched.step_output import SchedulerOutput

_NAN = float("nan")


@dataclass(slots=True)
class StepTotals:
    """Running sums over every step (kept even when per-step records are not)."""

    num_steps: int = 0
    sum_batch: int = 0
    busy_s: float = 0.0
    prefill_tokens: int = 0
    decode_tokens: int = 0
    cows: int = 0
    swap_out_blocks: int = 0
    swap_in_blocks: int = 0
    preempted: int = 0

    def add(self, batch_size: int, dt: float, out: SchedulerOutput) -> None:
        """Count one step."""
        self.num_steps += 1
        self.sum_batch += batch_size
        self.busy_s += dt
        self.prefill_tokens += out.num_prefill_tokens
        self.decode_tokens += out.num_decode_tokens
        self.cows += out.num_cows
        self.swap_out_blocks += out.swap_out_blocks
        self.swap_in_blocks += out.swap_in_blocks
        self.preempted += len(out.preempted)

    @classmethod
    def from_steps(cls, result: SimResult) -> StepTotals:
        """Rebuild the totals from a result's step records."""
        steps = result.steps

        def total(name: str) -> int:
            return sum(map(attrgetter(name), steps))  # C-level passes: a run keeps one record per step

        # Durations are added in step order, as add() does (a float sum's rounding depends on the order).
        busy = reduce(operator.add, map(attrgetter("duration_s"), steps), 0.0)
        return cls(len(steps), total("batch_size"), busy, total("num_prefill_tokens"),
                   total("num_decode_tokens"), total("num_cows"), total("num_swaps_out"),
                   total("num_swaps_in"), total("num_preempted"))


def request_record(g: SeqGroup, *, paged: bool) -> RequestRecord:
    """The record of one request (NaN for times it never reached).

    peak_blocks: paged: most physical blocks its sequences held at once (shared ones once);
    contiguous: its extent in slots (a contiguous cache counts in 1-slot units).
    """
    sp = g.spec
    arrival, first, fin = sp.arrival_time, g.first_token_s, g.finish_s
    finished = g.status == "finished"
    ttft = first - arrival if not math.isnan(first) else _NAN
    e2e = fin - arrival if finished else _NAN
    tpot = (fin - first) / (g.output_len - 1) if finished and g.output_len > 1 else _NAN
    norm = e2e / g.output_len if finished else _NAN
    peak = g.peak_blocks if paged else g.extent
    return RequestRecord(sp.req_id, arrival, sp.prompt_len, g.output_len, sp.n, sp.beam_width, g.status,
                         first, fin if not math.isnan(fin) else _NAN, ttft, tpot, e2e, norm,
                         g.num_preemptions, peak, g.reason)


def _nanmean(x: np.ndarray) -> float:
    x = x[~np.isnan(x)]
    return float(x.mean()) if x.size else _NAN


def _pct(x: np.ndarray, q: float) -> float:
    x = x[~np.isnan(x)]
    return float(np.percentile(x, q)) if x.size else _NAN


def memory_means(result: SimResult, end_s: float | None = None) -> dict[str, float]:
    """Time-weighted mean slots per category (+ logical token states and capacity).

    Each sample holds until the next; the last until end_s (default: its own time, weight 0).
    """
    mem = result.memory
    if not mem:
        return {}
    names = (*MEMORY_CATEGORIES, "logical_token_states", "capacity")
    # One pass over the samples (a run keeps one per step): a row of (time, categories...) each.
    k = len(names) + 1
    a = np.fromiter(chain.from_iterable(map(attrgetter("time_s", *names), mem)), dtype=float,
                    count=k * len(mem)).reshape(len(mem), k)
    t = a[:, 0]
    w = np.diff(np.append(t, end_s if end_s is not None else t[-1]))
    w = np.maximum(w, 0.0)
    total = w.sum()
    out: dict[str, float] = {}
    for i, name in enumerate(names, 1):
        v = a[:, i]
        out[name] = float((v * w).sum() / total) if total > 0 else float(v[-1])
    return out


class ExactRequests:
    """The request side of a run summary from a kept list of records (exact percentiles).

    sim.records.stream.RunningRequests offers the same attributes and methods, accumulated record by
    record for streaming runs.
    """

    def __init__(self, reqs: list[RequestRecord]) -> None:
        fin = [r for r in reqs if r.status == "finished"]
        self.num = len(reqs)
        self.finished = len(fin)
        self.aborted = sum(r.status == "aborted" for r in reqs)
        self.rejected = sum(r.status == "rejected" for r in reqs)
        self.start_s = min((r.arrival_s for r in reqs), default=0.0)
        self.output_tokens = sum(r.output_len * max(r.n, r.beam_width) for r in fin)
        self.prompt_tokens = sum(r.prompt_len for r in fin)
        self.preemptions = sum(r.num_preemptions for r in reqs)
        self._col = {f.name: np.array([getattr(r, f.name) for r in fin], dtype=float)
                     for f in fields(RequestRecord) if f.name in LATENCY_FIELDS}

    def mean(self, name: str) -> float:
        """Mean of a latency field over finished requests (NaN values left out; NaN if none)."""
        return _nanmean(self._col[name]) if self.finished else _NAN

    def percentile(self, name: str, q: float) -> float:
        """q-th percentile of a latency field over finished requests."""
        return _pct(self._col[name], q) if self.finished else _NAN


def summarize(result: SimResult, *, totals: StepTotals | None = None, end_s: float | None = None,
              requests: ExactRequests | RunningRequests | None = None,
              memory: dict[str, float] | None = None) -> dict[str, Any]:
    """The run summary: exactly SUMMARY_KEYS first, then extras (counts, percentiles, Fig. 2 view).

    totals: the engine's step sums (default: rebuilt from result.steps); end_s: the end of the run
    (default: the end of the last step). Throughput counts finished requests and their output tokens
    over the makespan (first arrival to end of the last step). A streaming run, which keeps no
    records, passes its running `requests` totals and `memory` means (memory_means' keys) instead.
    """
    tot = totals if totals is not None else StepTotals.from_steps(result)
    req = requests if requests is not None else ExactRequests(result.requests)
    if end_s is None:
        end_s = max((st.start_s + st.duration_s for st in result.steps), default=0.0)
    start = req.start_s if req.num else 0.0
    duration = max(end_s - start, 0.0)
    fin = req.finished
    out_tokens = req.output_tokens
    mm = memory if memory is not None else memory_means(result, end_s)
    cap = mm.get("capacity", 0.0)

    def pct(name: str) -> float:
        return 100.0 * mm[name] / cap if cap else _NAN

    cfg = result.config
    s: dict[str, Any] = {
        "system": result.system,
        "block_size": int(cfg.get("cache", {}).get("block_size", 0) or 0),
        "num_requests": req.num,
        **{f"{c}_pct": pct(c) for c in MEMORY_CATEGORIES},
        "throughput_rps": fin / duration if duration > 0 else _NAN,
        "throughput_tps": out_tokens / duration if duration > 0 else _NAN,
        "mean_batch_size": tot.sum_batch / tot.num_steps if tot.num_steps else 0.0,
        "mean_ttft_s": req.mean("ttft_s"),
        "mean_tpot_s": req.mean("tpot_s"),
        "mean_normalized_latency_s_per_token": req.mean("normalized_latency_s_per_token"),
        "num_preemptions": req.preemptions,
        "sharing_savings_pct": (100.0 * (1 - mm["token_states"] / mm["logical_token_states"])
                                if mm.get("logical_token_states") else 0.0),
        "latency_model": cfg.get("latency_model", ""),
        "engine": cfg.get("engine") or "",
    }
    assert set(s) == set(SUMMARY_KEYS), "summary keys drifted from SUMMARY_KEYS"
    s = {k: s[k] for k in SUMMARY_KEYS}
    used = cap - mm.get("free", 0.0) if mm else 0.0
    extras: dict[str, Any] = {
        "num_finished": fin,
        "num_aborted": req.aborted,
        "num_rejected": req.rejected,
        "duration_s": duration,
        "num_steps": tot.num_steps,
        "busy_s": tot.busy_s,
        "num_prefill_tokens": tot.prefill_tokens,
        "num_decode_tokens": tot.decode_tokens,
        "num_swap_out_blocks": tot.swap_out_blocks,
        "num_swap_in_blocks": tot.swap_in_blocks,
        "num_preempted_steps_events": tot.preempted,
        "throughput_total_tps": ((req.prompt_tokens + out_tokens) / duration if duration > 0 else _NAN),
    }
    for name, key in (("ttft_s", "ttft"), ("tpot_s", "tpot"), ("e2e_s", "e2e"),
                      ("normalized_latency_s_per_token", "normalized_latency")):
        for q in (50, 90, 99):
            extras[f"p{q}_{key}"] = req.percentile(name, q)
    extras["mean_e2e_s"] = req.mean("e2e_s")
    # The vLLM paper's Fig. 2 bars are shares of the memory a system holds (everything but free).
    for c in MEMORY_CATEGORIES:
        if c != "free":
            extras[f"{c}_of_used_pct"] = 100.0 * mm[c] / used if used > 0 else _NAN
    s.update(extras)
    return s
