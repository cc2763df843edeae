"""Stand-in SimResults for analysis tests that must not depend on the engine's numbers.

The records are random but internally consistent: memory samples sum to capacity, latencies are
positive, summary keys are complete. Also a picklable stand-in sweep point function.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from sim.records.results import SUMMARY_KEYS, MemorySample, RequestRecord, SimResult, StepRecord


def fake_result(system: str = "paged(B=16)", n_req: int = 20, n_mem: int = 30, seed: int = 0,
                block_size: int = 16) -> SimResult:
    """A SimResult with `n_req` finished requests, one step per 0.05 s and `n_mem` memory samples."""
    rng = np.random.default_rng(seed)
    reqs = []
    for i in range(n_req):
        arr = float(i) * 0.5
        ttft = float(rng.uniform(0.05, 0.5))
        out = int(rng.integers(5, 50))
        e2e = ttft + out * 0.03
        reqs.append(RequestRecord(
            req_id=i, arrival_s=arr, prompt_len=int(rng.integers(10, 200)), output_len=out, n=1, beam_width=1,
            status="finished", first_token_s=arr + ttft, finish_s=arr + e2e, ttft_s=ttft, tpot_s=0.03,
            e2e_s=e2e, normalized_latency_s_per_token=e2e / out, num_preemptions=0, peak_blocks=5))
    steps = [StepRecord(step=k, start_s=0.05 * k, duration_s=0.05, batch_size=int(rng.integers(1, 9)),
                        num_prefill_tokens=0, num_decode_tokens=4, blocks_used=10, blocks_free=90, num_cows=0,
                        num_swaps_out=0, num_swaps_in=0, num_preempted=0, num_waiting=0) for k in range(40)]
    cap = 1000.0
    mem = []
    for k in range(n_mem):
        parts = rng.dirichlet(np.ones(5)) * cap
        mem.append(MemorySample(time_s=0.1 * k, token_states=parts[0], reserved=parts[1], internal_frag=parts[2],
                                speculative=0.0, external_frag=parts[3], free=parts[4],
                                logical_token_states=parts[0] * 1.1, capacity=cap))
    summary: dict[str, Any] = {k: float(rng.uniform(1, 10)) for k in SUMMARY_KEYS}
    summary.update(system=system, block_size=block_size, num_requests=n_req, num_preemptions=0,
                   latency_model="roofline", engine="basic")
    shares = rng.dirichlet(np.ones(6)) * 100
    for key, v in zip(("token_states_pct", "reserved_pct", "internal_frag_pct", "external_frag_pct",
                     "speculative_pct", "free_pct"), shares, strict=True):
        summary[key] = float(v)
    return SimResult(system=system, config={"model": "opt-13b"}, requests=reqs, steps=steps, memory=mem,
                     summary=summary)


def slow_point(params: dict[str, Any]) -> dict[str, Any]:
    """Sweep stand-in: sleeps `sleep` s, fails when params['fail'], logs its call to `calls_file`.

    With `gate` (a path) and `gate_from` (an x), points with x >= gate_from also wait (up to 120 s)
    until that file exists: a test that interrupts a sweep holds those points back, so the sweep
    cannot finish before the test's signal arrives however slow the machine is.
    """
    if params.get("calls_file"):
        with open(params["calls_file"], "a") as f:
            f.write(f"{params['x']}\n")
    time.sleep(float(params.get("sleep", 0.0)))
    if params.get("gate") and params["x"] >= params.get("gate_from", 0):
        deadline = time.monotonic() + 120.0
        while not os.path.exists(params["gate"]) and time.monotonic() < deadline:
            time.sleep(0.02)
    if params.get("fail") and params["x"] in params["fail"]:
        raise RuntimeError(f"point x={params['x']} failed on purpose")
    x = params["x"]
    return {"system": "fake", "block_size": x, "throughput_rps": 2.0 * x, "throughput_tps": 100.0 * x,
            "internal_frag_pct": x / 4, "reserved_pct": 1.0, "external_frag_pct": 0.0, "mean_step_time_s": 0.01,
            "pid": os.getpid()}


def point_lines(out: Path) -> list[str]:
    """The raw lines of a sweep's points.jsonl."""
    p = out / "points.jsonl"
    return p.read_text().splitlines() if p.exists() else []
