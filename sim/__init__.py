"""pagesim's simulator core: KV-cache memory (paged and contiguous), scheduler, SimPy engine,
latency model and metrics records. Imports nothing from workloads/gpu/analysis and no pandas,
matplotlib or cupy: results are plain dataclass records that analysis/ turns into DataFrames."""

from sim.request import RequestSpec, SpecError

__all__ = ["RequestSpec", "SpecError"]
