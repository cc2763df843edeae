"""Synthetic workloads: arrivals x lengths x sampling modes x shared system prompts -> RequestSpecs.

`generate(preset_or_config, num_requests, rate, rng)` is the entry point. Presets `sharegpt` (mean
input 161, output 338 tokens) and `alpaca` (19 and 58) use the dataset means from the vLLM paper
(Kwon et al., SOSP'23, Sec. 6.1) with lognormal spreads that are our assumption, not the paper's.
The generator draws from `rng` in a fixed order, so one seed gives one workload.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from sim.request import RequestSpec
from workloads.arrivals import ArrivalProcess, make_arrivals
from workloads.columns import TraceColumns
from workloads.errors import WorkloadError
from workloads.lengths import EmpiricalPairs, Independent, LengthPairs, LogNormal
from workloads.modes import SAMPLING_MIXES, SamplingMix
from workloads.system_prompts import SystemPrompts


@dataclass(frozen=True, slots=True)
class WorkloadConfig:
    """What a synthetic workload looks like (the rate and size are given to `generate`).

    lengths: (prompt, output) length distribution; with system prompts the drawn prompt length is
      the user's part, appended after the shared prefix.
    arrival: arrival process name (workloads.arrivals.ARRIVAL_PROCESSES); cv is used by 'gamma'.
    sampling: mix of sampling modes (default: all greedy).
    system_prompts: shared prefixes for prefix caching (None: no sharing info).
    """

    lengths: LengthPairs
    arrival: str = "poisson"
    cv: float = 1.0
    sampling: SamplingMix = field(default_factory=SamplingMix)
    system_prompts: SystemPrompts | None = None
    description: str = ""


SHAREGPT = WorkloadConfig(
    lengths=Independent(LogNormal(161.31, sigma=1.0, hi=1024), LogNormal(337.99, sigma=1.0, hi=2048)),
    description="ShareGPT-like: lognormal lengths, mean input 161.3 and output 338.0 tokens (vLLM paper)",
)
ALPACA = WorkloadConfig(
    lengths=Independent(LogNormal(19.31, sigma=0.6, hi=1024), LogNormal(58.45, sigma=0.8, hi=2048)),
    description="Alpaca-like: lognormal lengths, mean input 19.3 and output 58.5 tokens (vLLM paper)",
)

WORKLOAD_PRESETS: dict[str, WorkloadConfig] = {
    "sharegpt": SHAREGPT,
    "alpaca": ALPACA,
    "sharegpt-mixed": replace(SHAREGPT, sampling=SAMPLING_MIXES["mixed"],
                              description="ShareGPT-like with 20% beam-4, 30% n=2, 10% speculative k=4"),
    "sharegpt-bursty": replace(SHAREGPT, arrival="gamma", cv=4.0,
                               description="ShareGPT-like with Gamma arrivals, inter-arrival CV 4"),
    "sharegpt-sysprompt": replace(SHAREGPT, system_prompts=SystemPrompts(count=8, prob=0.9),
                                  description="ShareGPT-like, 90% of requests start with one of 8 "
                                              "shared 512-token system prompts"),
    "alpaca-parallel": replace(ALPACA, sampling=SAMPLING_MIXES["parallel4"],
                               description="Alpaca-like, every request samples n=4 in parallel"),
}


def preset(name: str) -> WorkloadConfig:
    """The named preset, or a WorkloadError listing the valid names."""
    if name not in WORKLOAD_PRESETS:
        raise WorkloadError(f"workload preset '{name}' unknown (valid: {', '.join(WORKLOAD_PRESETS)})")
    return WORKLOAD_PRESETS[name]


def config_from_trace(cols: TraceColumns, **overrides: object) -> WorkloadConfig:
    """A config that resamples (prompt, output) pairs from a loaded trace (empirical lengths)."""
    base = WorkloadConfig(lengths=EmpiricalPairs.of(cols.prompt, cols.output),
                          description=f"empirical lengths resampled from {len(cols)} trace requests")
    return replace(base, **overrides)  # type: ignore[arg-type]


def generate_columns(config: WorkloadConfig | str, num_requests: int, rate: float | None,
                     rng: np.random.Generator, *, arrival: ArrivalProcess | None = None) -> TraceColumns:
    """The workload as columns. `rate` in requests/s (None or inf: all at time 0); `arrival`
    overrides the config's arrival process."""
    cfg = preset(config) if isinstance(config, str) else config
    if not isinstance(num_requests, int) or isinstance(num_requests, bool) or num_requests < 1:
        raise WorkloadError(f"num_requests = {num_requests!r} out of range (valid: integer >= 1)")
    process = arrival if arrival is not None else make_arrivals(cfg.arrival, rate, cfg.cv)
    times = process.times(num_requests, rng)
    prompt, output = cfg.lengths.sample(num_requests, rng)
    n, beam, spec_k, accept = cfg.sampling.sample(num_requests, rng)
    hashes: list[tuple[int, ...]] | None = None
    unit: np.ndarray | int = 16
    if cfg.system_prompts is not None:
        which, prefix_len = cfg.system_prompts.assign(num_requests, rng)
        prompt = prompt + prefix_len
        hashes = [(p,) if p >= 0 else () for p in which.tolist()]
        unit = np.where(which >= 0, prefix_len, 16)
    cols = TraceColumns.build(times, prompt, output, n=n, beam_width=beam, spec_k=spec_k, spec_accept=accept,
                              prefix_hashes=hashes, prefix_unit=unit)
    return cols


def generate(config: WorkloadConfig | str, num_requests: int, rate: float | None,
             rng: np.random.Generator, *, arrival: ArrivalProcess | None = None) -> list[RequestSpec]:
    """`num_requests` synthetic requests (ids 0..N-1 in arrival order) from a preset name or config."""
    return generate_columns(config, num_requests, rate, rng, arrival=arrival).to_specs()
