"""Outputs of a run: plain dataclass records and their summaries.

`results` defines the records (RequestRecord, StepRecord, MemorySample, MonitorSample, SimResult) and
the stable summary keys, `metrics` builds per-request records and the time-weighted summary, `monitor`
keeps the allocator's per-step counters, `memory_probe` sums the running sequences' memory each step and
`breakdown` splits the pool into the memory categories (token states ... free). analysis/ turns these into DataFrames and files.
"""
