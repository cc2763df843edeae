"""An end-to-end serving benchmark (vLLM's `benchmark_serving.py --save-result` JSON): load it, replay
its requests through the simulator, and compare measured with simulated throughput, TTFT and TPOT.

The JSON fields read (vLLM's names; times in seconds unless the name says ms):
  input_lens[i], output_lens[i]   prompt and generated tokens of request i (in sending order); an
                                  output_len of 0 marks a failed request
  ttfts[i]                        time to first token of request i
  itls[i]                         the inter-token latencies of request i (a list)
  duration                        benchmark wall time, first request sent to last response (s)
  completed                       successful requests
  request_rate                    requests/s of the client's arrival process, or "inf" (all at once)
  burstiness (optional, 1.0)      gamma shape of the inter-arrival times (1: Poisson)
  max_concurrency (optional)      a client-side cap on requests in flight (not modelled: warned)
  errors (optional)               per-request error text; a non-empty one marks a failed request
  model_id, backend, date (optional, informational)
Older or trimmed results without the per-request lists (newer vLLM drops them unless --save-detailed)
cannot be replayed: the loader says which field is missing.

Arrival times are not in the file. `arrival_times` redraws them as the client made them: request 0 at
t = 0, then gaps ~ Gamma(shape=burstiness, scale=1 / (request_rate * burstiness)) (vLLM's get_request),
from a seed of our own (vLLM's seed is not saved): the same process, not the same draw.

Measured TPOT of a request = sum(itls) / (output_len - 1) (vLLM: (latency - ttft) / (output_len - 1),
and latency - ttft = sum(itls) for a streaming backend); the simulator's is (finish - first token) /
(output_len - 1). Throughput = completed / duration (requests/s) and output tokens / duration.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from gpu.calibration.kernels import CalibrationError
from sim.checks import read_json
from sim.request import RequestSpec

REQUIRED_FIELDS: tuple[str, ...] = ("input_lens", "output_lens", "ttfts", "itls", "duration", "completed",
                                    "request_rate")
METRICS: tuple[str, ...] = ("request_throughput", "output_throughput", "mean_ttft_s", "median_ttft_s",
                            "p99_ttft_s", "mean_tpot_s", "median_tpot_s", "p99_tpot_s")


class BenchmarkError(CalibrationError):
    """A malformed serving-benchmark file; the message names the file and the field."""


@dataclass(frozen=True, slots=True)
class ServingBenchmark:
    """The successful requests of one benchmark run, in sending order, and the run's settings.

    index: each kept request's position in the file's lists (failed ones are dropped, counted in
    num_failed); tpots: NaN where output_len <= 1.
    """

    source: str
    index: np.ndarray
    input_lens: np.ndarray
    output_lens: np.ndarray
    ttfts: np.ndarray
    tpots: np.ndarray
    duration: float
    completed: int
    request_rate: float
    burstiness: float
    max_concurrency: int | None
    num_failed: int
    model_id: str | None

    @property
    def num_requests(self) -> int:
        """Requests the client sent (successful + failed)."""
        return int(self.index.size) + self.num_failed


def _bad(src: str, field: str, why: str) -> BenchmarkError:
    return BenchmarkError(f"serving benchmark {src}: field '{field}' {why}")


def _number(d: dict[str, Any], key: str, src: str, *, lo: float = 0.0, allow_inf: bool = False) -> float:
    v = d[key]
    if allow_inf and (v == "inf" or v == math.inf):
        return math.inf
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < lo:
        extra = ' or "inf"' if allow_inf else ""
        raise _bad(src, key, f"= {v!r} out of range (valid: a finite number >= {lo:g}{extra})")
    return float(v)


def _list(d: dict[str, Any], key: str, src: str, n: int | None) -> list[Any]:
    v = d[key]
    if not isinstance(v, list):
        raise _bad(src, key, f"must be a list, got {type(v).__name__}")
    if n is not None and len(v) != n:
        raise _bad(src, key, f"has {len(v)} entries but 'input_lens' has {n} (one per request)")
    return v


def parse_benchmark(data: Any, source: str = "<dict>") -> ServingBenchmark:
    """Check a loaded result dict and keep its successful requests; BenchmarkError naming the field."""
    if not isinstance(data, dict):
        raise BenchmarkError(f"serving benchmark {source}: expected a JSON object, got {type(data).__name__}")
    missing = [k for k in REQUIRED_FIELDS if k not in data]
    if missing:
        hint = (" (per-request lists are saved by vLLM's benchmark_serving.py --save-result; newer vLLM "
                "needs --save-detailed)") if set(missing) & {"input_lens", "output_lens", "ttfts", "itls"} else ""
        raise _bad(source, missing[0], f"is missing{hint}")
    ins = _list(data, "input_lens", source, None)
    n = len(ins)
    outs, ttfts, itls = (_list(data, k, source, n) for k in ("output_lens", "ttfts", "itls"))
    errors = _list(data, "errors", source, n) if isinstance(data.get("errors"), list) else [""] * n
    keep, tpot = [], []
    for i in range(n):
        for key, v, lo in (("input_lens", ins[i], 1), ("output_lens", outs[i], 0)):
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise _bad(source, f"{key}[{i}]", f"= {v!r} out of range (valid: an integer >= {lo})")
        t = ttfts[i]
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t) or t < 0:
            raise _bad(source, f"ttfts[{i}]", f"= {t!r} out of range (valid: seconds >= 0)")
        gaps = itls[i]
        if not isinstance(gaps, list) or not all(
                isinstance(g, (int, float)) and not isinstance(g, bool) and math.isfinite(g) and g >= 0 for g in gaps):
            raise _bad(source, f"itls[{i}]", "must be a list of seconds >= 0")
        if outs[i] == 0 or (errors[i] not in ("", None)):
            continue  # a failed request: vLLM records output_len 0 and the error text
        keep.append(i)
        tpot.append(sum(gaps) / (outs[i] - 1) if outs[i] > 1 else math.nan)
    if not keep:
        raise _bad(source, "output_lens", "has no successful request (every output_len is 0 or errored)")
    idx = np.asarray(keep, dtype=np.int64)
    rate = _number(data, "request_rate", source, lo=1e-12, allow_inf=True)
    burst = _number(data, "burstiness", source, lo=1e-12) if data.get("burstiness") is not None else 1.0
    mc = data.get("max_concurrency")
    if mc is not None and (isinstance(mc, bool) or not isinstance(mc, int) or mc < 1):
        raise _bad(source, "max_concurrency", f"= {mc!r} out of range (valid: null or an integer >= 1)")
    completed = data["completed"]
    if isinstance(completed, bool) or not isinstance(completed, int) or completed < 1:
        raise _bad(source, "completed", f"= {completed!r} out of range (valid: an integer >= 1)")
    return ServingBenchmark(
        source=source, index=idx, input_lens=np.asarray(ins, dtype=np.int64)[idx],
        output_lens=np.asarray(outs, dtype=np.int64)[idx], ttfts=np.asarray(ttfts, dtype=float)[idx],
        tpots=np.asarray(tpot, dtype=float), duration=_number(data, "duration", source, lo=1e-12),
        completed=completed, request_rate=rate, burstiness=burst, max_concurrency=mc, num_failed=n - len(keep),
        model_id=str(data["model_id"]) if data.get("model_id") is not None else None)


def load_benchmark(path: str | Path) -> ServingBenchmark:
    """Read and check a `benchmark_serving.py --save-result` JSON file (BenchmarkError naming the field)."""
    p = Path(path)
    data = read_json(p, "serving benchmark", BenchmarkError)
    return parse_benchmark(data, str(p))


def preset_from_model_id(model_id: str | None) -> str | None:
    """The model preset a benchmark's `model_id` names (meta-llama/Llama-2-7b-hf -> Llama-2-7B), or None.

    Rule: the last path component, lower case, without a "meta-" prefix, must start with a preset's
    name followed by the end or "-" (so -hf, -chat, -v0.1 suffixes pass and 70b never matches 7b)."""
    from sim.presets import MODELS

    if not model_id:
        return None
    base = model_id.rstrip("/").split("/")[-1].lower().removeprefix("meta-")
    for m in MODELS.values():
        name = m.name.lower()
        if base == name or base.startswith(name + "-"):
            return m.name
    return None


def arrival_times(n: int, request_rate: float, burstiness: float, rng: np.random.Generator) -> np.ndarray:
    """n arrival times as vLLM's client draws them: 0, then Gamma(burstiness, 1/(rate*burstiness)) gaps."""
    if n <= 0:
        return np.zeros(0)
    if math.isinf(request_rate):
        return np.zeros(n)
    gaps = rng.gamma(shape=burstiness, scale=1.0 / (request_rate * burstiness), size=n - 1)
    return np.concatenate([[0.0], np.cumsum(gaps)])


def replay_requests(b: ServingBenchmark, rng: np.random.Generator,
                    rows: np.ndarray | None = None) -> list[RequestSpec]:
    """The benchmark's successful requests as RequestSpecs (req_id = position in the file).

    Arrivals are drawn for every request the client sent (failed ones too: they took a place in the
    arrival process) and the successful ones kept. `rows` limits the replay to those kept requests.
    """
    t = arrival_times(b.num_requests, b.request_rate, b.burstiness, rng)[b.index]
    sel = np.arange(b.index.size) if rows is None else rows
    return [RequestSpec(req_id=int(b.index[j]), arrival_time=float(t[j]), prompt_len=int(b.input_lens[j]),
                        output_len=max(int(b.output_lens[j]), 1)) for j in sel]


def _pct(x: np.ndarray, q: float) -> float:
    x = x[np.isfinite(x)]
    return float(np.percentile(x, q)) if x.size else math.nan


def metrics_of(ttfts: np.ndarray, tpots: np.ndarray, output_lens: np.ndarray, completed: int,
               duration: float) -> dict[str, float]:
    """METRICS from per-request arrays (NaNs ignored), as vLLM computes them."""
    fin_tpot = tpots[np.isfinite(tpots)]
    return {"request_throughput": completed / duration, "output_throughput": float(output_lens.sum()) / duration,
            "mean_ttft_s": float(np.nanmean(ttfts)) if ttfts.size else math.nan,
            "median_ttft_s": _pct(ttfts, 50), "p99_ttft_s": _pct(ttfts, 99),
            "mean_tpot_s": float(fin_tpot.mean()) if fin_tpot.size else math.nan,
            "median_tpot_s": _pct(tpots, 50), "p99_tpot_s": _pct(tpots, 99)}


def measured_metrics(b: ServingBenchmark, rows: np.ndarray | None = None) -> dict[str, float]:
    """The benchmark's own METRICS (over `rows` of the kept requests; throughput always over all)."""
    sel = np.arange(b.index.size) if rows is None else rows
    return metrics_of(b.ttfts[sel], b.tpots[sel], b.output_lens[sel], sel.size, b.duration) | {
        "request_throughput": b.completed / b.duration,
        "output_throughput": float(b.output_lens.sum()) / b.duration}


def simulated_metrics(records: Any, arrival_start: float = 0.0) -> dict[str, float]:
    """METRICS of a simulated run from its per-request records (sim.records.results.RequestRecord list).

    Duration: the first arrival to the last finish, as the client's clock runs; rejected or aborted
    requests count as not completed.
    """
    fin = [r for r in records if r.status == "finished"]
    if not fin:
        return dict.fromkeys(METRICS, math.nan)
    end = max(r.finish_s for r in fin)
    duration = max(end - arrival_start, 1e-12)
    return metrics_of(np.array([r.ttft_s for r in fin]), np.array([r.tpot_s for r in fin]),
                      np.array([r.output_len for r in fin]), len(fin), duration)


def compare(measured: dict[str, float], simulated: dict[str, float]) -> list[dict[str, Any]]:
    """One row per metric: measured, simulated and the relative error (simulated / measured - 1)."""
    rows = []
    for k in METRICS:
        m, s = measured.get(k, math.nan), simulated.get(k, math.nan)
        err = s / m - 1.0 if m and math.isfinite(m) and math.isfinite(s) else math.nan
        rows.append({"metric": k, "measured": m, "simulated": s, "rel_err": err})
    return rows
