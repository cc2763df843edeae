"""Time a model's linear-layer GEMMs with torch on a GPU: the input of the GEMM-curve fit.

For each of one layer's four per-GPU weight shapes (sim.timing.gemm.linear_shapes: QKV, attention
output, MLP up (gate+up fused), MLP down) and each token count, `bench_gemm` times `x @ w` (x: tokens x k,
w: k x n, fp16/bf16) with CUDA events and records the median (GEMM_COLUMNS of gpu.calibration.gemm,
plus p10/p90). A serving forward pass streams every layer's weights from HBM, so the weights rotate over
enough copies that the working set exceeds twice the L2 cache: a small matrix is not served from L2
between reps (profilers that time one matrix in a loop report L2 speed for small shapes).

GPU-only (torch with CUDA); `gemm_configs` (the plan) is pure and CPU-testable.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from sim.presets import ModelSpec
from sim.timing.gemm import linear_shapes

DEFAULT_TOKENS: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 48, 64, 96, 128, 192, 256, 320, 384, 512, 640, 768,
                                   1024, 1536, 2048, 3072, 4096)
L2_FACTOR = 2.0


@dataclass(frozen=True, slots=True)
class GemmConfig:
    """One timed GEMM: `num_tokens` x k times k x n."""

    op: str
    num_tokens: int
    k: int
    n: int


def gemm_configs(model: ModelSpec, tensor_parallel: int = 1,
                 tokens: tuple[int, ...] = DEFAULT_TOKENS) -> list[GemmConfig]:
    """The plan: every (op, token count) of the model's per-GPU linear shapes."""
    if tensor_parallel < 1 or not tokens or min(tokens) < 1:
        raise ValueError(f"gemm_configs: need tensor_parallel >= 1 and token counts >= 1 "
                         f"(got {tensor_parallel}, {tokens})")
    return [GemmConfig(op, m, k, n) for op, k, n in linear_shapes(model, tensor_parallel) for m in tokens]


def weight_copies(k: int, n: int, dtype_bytes: int, l2_bytes: int) -> int:
    """How many weight copies to rotate so the working set exceeds L2_FACTOR x the L2 size (>= 1)."""
    return max(1, int(np.ceil(L2_FACTOR * l2_bytes / max(k * n * dtype_bytes, 1))))


def bench_gemm(model: ModelSpec, tensor_parallel: int = 1, tokens: tuple[int, ...] = DEFAULT_TOKENS, *,
               dtype: str = "fp16", reps: int = 50, warmup: int = 5,
               on_config: Callable[[GemmConfig], None] | None = None) -> pd.DataFrame:
    """Median seconds per GEMM for every config (needs torch with a CUDA device)."""
    import torch

    if not torch.cuda.is_available():
        raise RuntimeError("bench_gemm needs torch with a CUDA device")
    tdtype = {"fp16": torch.float16, "bf16": torch.bfloat16}[dtype]
    props = torch.cuda.get_device_properties(0)
    l2 = int(getattr(props, "L2_cache_size", 50 << 20))
    rows: list[dict[str, Any]] = []
    for op, k, n in linear_shapes(model, tensor_parallel):
        copies = weight_copies(k, n, 2, l2)
        ws = [torch.randn(k, n, device="cuda", dtype=tdtype) * 0.02 for _ in range(copies)]
        for m in tokens:
            x = torch.randn(m, k, device="cuda", dtype=tdtype)
            out = torch.empty(m, n, device="cuda", dtype=tdtype)
            for i in range(warmup):
                torch.matmul(x, ws[i % copies], out=out)
            starts = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
            ends = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
            for i in range(reps):
                w = ws[i % copies]
                starts[i].record()
                torch.matmul(x, w, out=out)
                ends[i].record()
            torch.cuda.synchronize()
            t = np.array([s.elapsed_time(e) for s, e in zip(starts, ends, strict=True)]) * 1e-3
            rows.append({"op": op, "num_tokens": m, "k": k, "n": n, "latency_s": float(np.median(t)),
                         "latency_p10_s": float(np.percentile(t, 10)),
                         "latency_p90_s": float(np.percentile(t, 90)), "model": model.name,
                         "tensor_parallel": tensor_parallel, "dtype": dtype, "device": props.name,
                         "weight_copies": copies})
            if on_config is not None:
                on_config(GemmConfig(op, m, k, n))
        del ws
        torch.cuda.empty_cache()
    return pd.DataFrame(rows)
