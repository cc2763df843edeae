"""pagesim gpu: CUDA C paged-attention kernels run through CuPy (or on the CPU through a shim),
the benchmark harness and calibration of the simulator's latency model.

`gpu.run_paged_decode(q, keys, values, block_size=..., dtype=...)` is the entry point that needs no
knowledge of the KV layout; gpu.ops.attention has the full API (DecodeProblem, prepare, run)."""

from gpu.ops.decode import run_paged_decode

__all__ = ["run_paged_decode"]
