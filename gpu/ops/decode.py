"""run_paged_decode: decode attention for callers who do not want to know the KV layout. It takes
per-sequence K/V as NumPy arrays, builds a pool with a scattered block table, writes the K/V through
the write-into-cache kernel (quantising for fp8 / int8 storage), runs the decode kernel (partitioned
or not, by choose_variant) and returns float32 output, with scale 1/sqrt(head_dim).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from gpu.backends.base import Backend, get_backend
from gpu.errors import KernelInputError
from gpu.ops.attention import DEFAULT_PARTITION_SIZE, DecodeProblem, choose_variant, plan_partition_size, run
from gpu.ops.cache_ops import write_into_cache
from gpu.ops.dtypes import storage_type
from gpu.ops.layout import blocks_needed, check_geometry, scattered_block_tables, slot_mapping
from gpu.ops.quant import POISON_CODE, parse_kv_dtype, row_scales


def _check_inputs(q: np.ndarray, keys: Sequence[np.ndarray], values: Sequence[np.ndarray]) -> tuple[int, int]:
    """Shapes of q and every keys[i] / values[i]; returns (num_kv_heads, head_dim)."""
    if not isinstance(q, np.ndarray) or q.ndim != 3:
        raise KernelInputError(f"q must be a NumPy array [num_seqs, num_heads, head_dim]; got "
                               f"{getattr(q, 'shape', type(q).__name__)}")
    if not np.issubdtype(q.dtype, np.floating):
        raise KernelInputError(f"q must hold floating-point values; got dtype {q.dtype}")
    s, h, d = q.shape
    if len(keys) != s or len(values) != s:
        raise KernelInputError(f"keys ({len(keys)}) and values ({len(values)}) must have one entry per "
                               f"sequence ({s})")
    kvh = None
    for i in range(s):
        for name, a in (("keys", keys[i]), ("values", values[i])):
            if not isinstance(a, np.ndarray) or a.ndim != 3 or not np.issubdtype(a.dtype, np.floating):
                raise KernelInputError(f"{name}[{i}] must be a float NumPy array [context_len, num_kv_heads, "
                                       f"head_dim]; got {getattr(a, 'dtype', type(a).__name__)} "
                                       f"{getattr(a, 'shape', '')}")
            if a.shape[2] != d:
                raise KernelInputError(f"{name}[{i}] head_dim {a.shape[2]} != q's head_dim {d}")
            kvh = a.shape[1] if kvh is None else kvh
            if a.shape[1] != kvh:
                raise KernelInputError(f"{name}[{i}] has {a.shape[1]} kv heads; earlier arrays have {kvh}")
        if keys[i].shape[0] != values[i].shape[0]:
            raise KernelInputError(f"keys[{i}] has {keys[i].shape[0]} tokens, values[{i}] {values[i].shape[0]}")
    kvh = kvh or 1
    if kvh < 1 or h % kvh:
        raise KernelInputError(f"num_heads = {h} must be a multiple of num_kv_heads = {kvh}")
    return kvh, d


def run_paged_decode(q: np.ndarray, keys: Sequence[np.ndarray], values: Sequence[np.ndarray], *, block_size: int,
                     dtype: str, backend: str | Backend = "auto", seed: int = 0, window: int = 0,
                     partition_size: int | None = None, q_dtype: str | None = None,
                     num_sms: int | None = None) -> np.ndarray:
    """Paged decode attention of q [num_seqs, num_heads, head_dim] over keys[i] / values[i]
    [context_len_i, num_kv_heads, head_dim] (NumPy float arrays, rounded to `dtype` storage).

    block_size: tokens per KV block; dtype: "float32" / "float16" / "bfloat16" (or fp32/fp16/bf16),
    or quantised KV "fp8_e4m3" / "int8" with an optional scale granularity (":per_tensor", the
    default, ":per_kv_head", ":per_block", ":per_head"; see gpu.ops.quant): q and the K/V rows are then
    rounded to q_dtype (float16 by default, or bfloat16), the scales are computed from the rows'
    absolute maxima (per_head: by the write kernel) and the write kernel quantises. backend: "cpu"
    (the shim), "cupy" (a GPU) or "auto"; seed: the block-table shuffle; window > 0: attend to the
    last `window` tokens only. Returns float32 [num_seqs, num_heads, head_dim].

    Split-K: with partition_size None the split comes from the GPU's SM count (num_sms, else the
    device's; gpu.ops.split.choose_partition_size: split only when the unsplit grid leaves resident
    CTA slots empty), and where the SM count is unknown (the CPU shim) from vLLM's 512-token rule.
    A given partition_size uses that rule with that size.
    """
    kv = parse_kv_dtype(dtype)
    st = kv.storage if kv else storage_type(dtype)
    qt = storage_type(q_dtype) if q_dtype is not None else (storage_type("float16") if kv else st)
    if kv is None and qt != st:
        raise KernelInputError(f"q_dtype = {q_dtype!r} applies to quantised KV only (q is stored as {st.name})")
    if kv is not None and qt.name not in ("float16", "bfloat16"):
        raise KernelInputError(f"q_dtype = {q_dtype!r}: quantised KV takes float16 or bfloat16 queries")
    kvh, d = _check_inputs(q, keys, values)
    check_geometry(d, block_size)
    be = get_backend(backend)
    lens = np.array([k.shape[0] for k in keys], np.int32)
    rng = np.random.default_rng(seed)
    need = sum(blocks_needed(int(n), block_size) for n in lens)
    num_blocks = need + max(2, need // 8)  # spare blocks, so the table is scattered with gaps
    tables = scattered_block_tables(lens, block_size, num_blocks, rng)
    shape = (num_blocks, kvh, block_size, d)
    # slots nobody writes read as NaN (fp8: the NaN code; int8: the never-written -128, NaN scales)
    poison = POISON_CODE[st.name] if kv else st.encode(np.array([np.nan], np.float32))[0]
    k_pool, v_pool = be.full(shape, poison, st.carrier), be.full(shape, poison, st.carrier)
    slots = slot_mapping(tables, lens, block_size)
    k_rows = qt.encode(np.concatenate([np.asarray(k) for k in keys]) if need else np.zeros((0, kvh, d)))
    v_rows = qt.encode(np.concatenate([np.asarray(v) for v in values]) if need else np.zeros((0, kvh, d)))
    k_scales = v_scales = None
    if kv is not None:
        k_scales, v_scales = (be.asarray(row_scales(kv, qt.decode(r), slots, num_blocks, block_size))
                              for r in (k_rows, v_rows))
    if need:
        write_into_cache(be, k_pool, v_pool, be.asarray(k_rows), be.asarray(v_rows), slots,
                         dtype=kv.name if kv else st, input_dtype=qt.name, k_scales=k_scales, v_scales=v_scales)
    problem = DecodeProblem(qt.encode(q), k_pool, v_pool, tables, lens, q.shape[1], kvh, d, block_size, qt.name,
                            1.0 / math.sqrt(d), window, partition_size or DEFAULT_PARTITION_SIZE, 0,
                            kv.name if kv else "", k_scales, v_scales)
    sms = num_sms if num_sms is not None else int(getattr(be, "num_sms", 0))
    if partition_size is None and sms > 0:
        size = plan_partition_size(problem, num_sms=sms)
        if not size:
            return run(problem, "paged", be)
        problem.partition_size = size
        return run(problem, "partitioned", be)
    return run(problem, choose_variant(lens, q.shape[1], partition_size=problem.partition_size), be)
