"""Workloads and measures shared by the vLLM-paper checks (tests/sim/test_paper_*.py).

OPT-13B on one A100-40GB (~15.4K KV slots here, ~15.7K in the paper). The ShareGPT-like and Alpaca-like
workloads are generated: Poisson arrivals, lognormal lengths with the paper's means (its Fig. 11); the
spreads are our assumption.
"""

from __future__ import annotations

import numpy as np

from sim.records.results import SimResult
from sim.request import RequestSpec


def lognormal_workload(n: int, rate: float, mean_in: float, mean_out: float, sigma_in: float,
                       sigma_out: float, seed: int) -> list[RequestSpec]:
    """Poisson arrivals; lognormal lengths with the given means; prompt <= 1024, total <= 2048."""
    rng = np.random.default_rng(seed)
    arr = np.cumsum(rng.exponential(1.0 / rate, n))
    arr -= arr[0]
    p = np.maximum(1, np.round(rng.lognormal(np.log(mean_in) - sigma_in**2 / 2, sigma_in, n))).astype(int)
    o = np.maximum(1, np.round(rng.lognormal(np.log(mean_out) - sigma_out**2 / 2, sigma_out, n))).astype(int)
    p = np.minimum(p, 1024)
    o = np.minimum(o, 2048 - p)
    return [RequestSpec(i, float(a), int(x), int(y)) for i, (a, x, y) in enumerate(zip(arr, p, o, strict=True))]


def sharegpt(n: int, rate: float, seed: int = 0) -> list[RequestSpec]:
    """ShareGPT-like: mean prompt 161.31, mean output 337.99 tokens (before the 2048 cap)."""
    return lognormal_workload(n, rate, 161.31, 337.99, 1.0, 1.0, seed)


def alpaca(n: int, rate: float, seed: int = 0) -> list[RequestSpec]:
    """Alpaca-like: mean prompt 19.31, mean output 58.45 tokens."""
    return lognormal_workload(n, rate, 19.31, 58.45, 0.6, 0.8, seed)


def steady_batch(res: SimResult, t0: float, t1: float) -> float:
    """Mean sequences per step over the steps starting in [t0, t1)."""
    sizes = [st.batch_size for st in res.steps if t0 <= st.start_s < t1]
    return float(np.mean(sizes))


def last_arrival(res: SimResult) -> float:
    """When the last request arrived (the steady-state window ends there, before the drain)."""
    return max(r.arrival_s for r in res.requests)
