"""pagesim workloads: synthetic generators and real trace loaders that produce sim.RequestSpec lists.

Entry points: `load_trace(path, format=...)` for trace files (TRACE_FORMATS) and
`generate(preset_or_config, num_requests, rate, rng)` for synthetic workloads (WORKLOAD_PRESETS).
"""

from workloads.errors import TraceError, WorkloadError
from workloads.frames import summarize, to_frame
from workloads.loader import TRACE_FORMATS, LoadResult, load_trace, sniff_format
from workloads.synthetic import WORKLOAD_PRESETS, WorkloadConfig, generate, generate_columns

__all__ = [
    "TRACE_FORMATS", "WORKLOAD_PRESETS", "LoadResult", "TraceError", "WorkloadConfig", "WorkloadError",
    "generate", "generate_columns", "load_trace", "sniff_format", "summarize", "to_frame",
]
