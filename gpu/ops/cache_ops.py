"""Writes into the paged KV cache on a backend: scatter new K/V rows through a slot mapping
(reshape_and_cache, quantising for fp8 / int8 storage), copy whole blocks for copy-on-write
(copy_blocks) and swap blocks out to / in from a contiguous staging buffer (swap_out, swap_in), with
the Python-side checks that run before any launch (shapes, dtypes, alignment, ids within the pool).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from gpu.backends.base import Backend
from gpu.errors import KernelInputError
from gpu.ops.dtypes import StorageType, storage_type
from gpu.ops.layout import KVPool
from gpu.ops.quant import check_scales, parse_kv_dtype

CACHE_OPS_FILE = "cache_ops.cu"
THREADS = 128


def device_address(a: Any) -> int:
    """Address of an array's first element (NumPy or CuPy)."""
    if isinstance(a, np.ndarray):
        return int(a.ctypes.data)
    return int(a.data.ptr)


def check_pool_arrays(k_pool: Any, v_pool: Any, dtype: StorageType) -> None:
    """Both pools [num_blocks, kv_heads, block_size, head_dim], same shape, carrier dtype, contiguous,
    16-byte aligned (the kernels move 16-byte vectors)."""
    if len(k_pool.shape) != 4 or tuple(k_pool.shape) != tuple(v_pool.shape):
        raise KernelInputError(f"k/v pools must both be [num_blocks, kv_heads, block_size, head_dim]; got "
                               f"{tuple(k_pool.shape)} and {tuple(v_pool.shape)}")
    for name, a in (("k_pool", k_pool), ("v_pool", v_pool)):
        _check_buffer(name, a, dtype.carrier, dtype.name, 16)
    if (k_pool.shape[3] * dtype.itemsize) % 16:
        raise KernelInputError(f"head_dim * itemsize = {k_pool.shape[3] * dtype.itemsize} bytes must be a "
                               "multiple of 16")


def _check_buffer(name: str, a: Any, carrier: Any, what: str, align: int) -> None:
    if a.dtype != carrier:
        raise KernelInputError(f"{name} dtype {a.dtype} does not carry {what} (expected {np.dtype(carrier)})")
    if not a.flags.c_contiguous:
        raise KernelInputError(f"{name} must be C-contiguous")
    if device_address(a) % align:
        raise KernelInputError(f"{name} must be {align}-byte aligned")


def write_into_cache(backend: Backend, k_pool: Any, v_pool: Any, key: Any, value: Any, slots: np.ndarray,
                     *, dtype: str | StorageType, input_dtype: str | None = None, k_scales: Any = None,
                     v_scales: Any = None, validate: bool = True) -> None:
    """Write key/value rows [num_tokens, kv_heads, head_dim] into the pools at `slots` (int64, one per
    token; negative = padding, skipped).

    Float pools (`dtype` float32 / float16 / bfloat16): rows in the pool's carrier dtype. Quantised
    pools (`dtype` "fp8_e4m3[:granularity]" / "int8[:granularity]", see gpu.ops.quant): rows in
    `input_dtype` (default float16), quantised on write with k_scales / v_scales (float32 backend
    arrays of the format's scale shape). per_tensor / per_kv_head / per_block scales are read: the
    caller fixes them before a block's first write and later values beyond them saturate; per_head
    scales (one per token and kv head) are computed from each row and written by the kernel.
    """
    kv = parse_kv_dtype(dtype) if isinstance(dtype, str) else None
    st = kv.storage if kv else storage_type(dtype)
    src = storage_type(input_dtype) if input_dtype is not None else (storage_type("float16") if kv else st)
    if kv is None and src != st:
        raise KernelInputError(f"input_dtype {src.name} differs from the {st.name} pool (only quantised pools convert)")
    slots = np.ascontiguousarray(slots, np.int64)
    if validate:
        check_pool_arrays(k_pool, v_pool, st)
        nb, kvh, bs, d = (int(x) for x in k_pool.shape)
        for name, a in (("key", key), ("value", value)):
            if tuple(a.shape) != (len(slots), kvh, d):
                raise KernelInputError(f"{name} shape {tuple(a.shape)} != (num_tokens={len(slots)}, kv_heads={kvh}, "
                                       f"head_dim={d})")
            if a.dtype != src.carrier or not a.flags.c_contiguous or device_address(a) % 16:
                raise KernelInputError(f"{name} must be a C-contiguous, 16-byte aligned {src.carrier} array")
        if kv is not None:
            check_scales(kv, k_scales, v_scales, nb, kvh, bs)
        used = slots[slots >= 0]
        if used.size and used.max() >= nb * bs:
            bad = int(np.argmax(slots >= nb * bs))
            raise KernelInputError(f"slot_mapping[{bad}] = {slots[bad]} is outside the pool (0..{nb * bs - 1})")
        if len(np.unique(used)) != len(used):
            raise KernelInputError("slot_mapping writes one slot twice (the result would depend on timing)")
    if len(slots) == 0:
        return
    shape = (np.int32(k_pool.shape[1]), np.int32(k_pool.shape[3]), np.int32(k_pool.shape[2]))
    mod = backend.module(CACHE_OPS_FILE)
    if kv is None:
        mod.get_function(f"reshape_and_cache_{st.suffix}")(
            (len(slots),), (THREADS,), (k_pool, v_pool, key, value, backend.asarray(slots), *shape))
    else:
        mod.get_function(f"reshape_and_cache_{src.suffix}_{st.suffix}")(
            (len(slots),), (THREADS,), (k_pool, v_pool, key, value, backend.asarray(slots), k_scales, v_scales,
                                        *shape, np.int32(kv.scale_kind)))


def copy_blocks(backend: Backend, k_pool: Any, v_pool: Any, block_mapping: np.ndarray, *,
                dtype: str | StorageType, k_scales: Any = None, v_scales: Any = None, validate: bool = True) -> None:
    """Copy physical blocks src -> dst (K and V, every head) for each row (src, dst) of block_mapping.
    Quantised pools (`dtype` "int8:per_block", ...) pass their scales: per_block / per_head scales
    are copied with the blocks (a copy keeps its source's scale), static ones are left alone."""
    kv = parse_kv_dtype(dtype) if isinstance(dtype, str) else None
    st = kv.storage if kv else storage_type(dtype)
    mapping = np.ascontiguousarray(block_mapping, np.int64)
    if validate:
        check_pool_arrays(k_pool, v_pool, st)
        nb = int(k_pool.shape[0])
        if kv is not None:
            check_scales(kv, k_scales, v_scales, nb, int(k_pool.shape[1]), int(k_pool.shape[2]))
        if mapping.ndim != 2 or mapping.shape[1] != 2:
            raise KernelInputError(f"block_mapping must be [num_pairs, 2] (src, dst); got shape {mapping.shape}")
        if mapping.size and (mapping.min() < 0 or mapping.max() >= nb):
            r, c = np.argwhere((mapping < 0) | (mapping >= nb))[0]
            raise KernelInputError(f"block_mapping[{r}, {c}] = {mapping[r, c]} is outside the pool (0..{nb - 1})")
        dst = mapping[:, 1]
        if len(np.unique(dst)) != len(dst):
            raise KernelInputError("block_mapping has a destination block twice")
        if np.isin(dst, mapping[:, 0]).any():
            raise KernelInputError("a destination block is also a source (copies would race)")
    if len(mapping) == 0:
        return
    kernel = backend.module(CACHE_OPS_FILE).get_function("copy_blocks")
    dev_mapping = backend.asarray(mapping)
    pairs = [(k_pool, v_pool)]
    if kv is not None and kv.granularity in ("per_block", "per_head"):
        pairs.append((k_scales, v_scales))
    for a, b in pairs:
        block_bytes = int(np.prod(a.shape[1:])) * a.dtype.itemsize
        kernel((len(mapping),), (THREADS,), (a, b, dev_mapping, np.int64(block_bytes)))


@dataclass(slots=True)
class SwapStaging:
    """Blocks swapped out of a pool, in one contiguous buffer each (backend arrays):
    kv [n, 2, kv_heads, block_size, head_dim] in the pool's carrier dtype (K then V of every block, so
    block i is one slab: a host block store can keep or free it alone); scales [n, 2, *per-block scale
    shape] float32 for per_block / per_head pools (their scales travel with the blocks), else None."""

    kv: Any
    scales: Any = None

    @property
    def num_blocks(self) -> int:
        return int(self.kv.shape[0])


def _moving_scales(pool: KVPool) -> bool:
    return pool.quant is not None and pool.quant.granularity in ("per_block", "per_head")


def _check_swap(pool: KVPool, ids: np.ndarray, staging: SwapStaging | None, *, distinct: bool) -> None:
    pool.check_invariants()
    check_pool_arrays(pool.k, pool.v, pool.dtype)
    nb = pool.num_blocks
    if ids.ndim != 1:
        raise KernelInputError(f"block_ids must be a 1-D sequence of block ids; got shape {ids.shape}")
    if ids.size and (ids.min() < 0 or ids.max() >= nb):
        i = int(np.argmax((ids < 0) | (ids >= nb)))
        raise KernelInputError(f"block_ids[{i}] = {ids[i]} is outside the pool (0..{nb - 1})")
    if distinct and len(np.unique(ids)) != len(ids):
        uniq, counts = np.unique(ids, return_counts=True)
        dup = int(uniq[np.argmax(counts > 1)])
        raise KernelInputError(f"block_ids holds block {dup} twice (two writes would race)")
    if staging is None:
        return
    want = (len(ids), 2, *pool.k.shape[1:])
    if tuple(staging.kv.shape) != want:
        raise KernelInputError(f"staging.kv shape {tuple(staging.kv.shape)} != {want} (n, K|V, kv_heads, "
                               "block_size, head_dim)")
    _check_buffer("staging.kv", staging.kv, pool.dtype.carrier, pool.dtype.name, 16)
    if _moving_scales(pool):
        assert pool.quant is not None and pool.k_scales is not None
        want_s = (len(ids), 2, *pool.k_scales.shape[1:])
        if staging.scales is None or tuple(staging.scales.shape) != want_s:
            raise KernelInputError(f"staging.scales must be float32 {want_s} for a {pool.quant.name} pool; got "
                                   f"{None if staging.scales is None else tuple(staging.scales.shape)}")
        _check_buffer("staging.scales", staging.scales, np.float32, "float32 scales", 4)
    elif staging.scales is not None:
        raise KernelInputError("staging.scales must be None: this pool's scales do not belong to blocks")


def _launch(backend: Backend, name: str, pool: KVPool, staging: SwapStaging, ids: np.ndarray) -> None:
    kernel = backend.module(CACHE_OPS_FILE).get_function(name)
    dev_ids = backend.asarray(ids)
    pairs = [(staging.kv, pool.k, pool.v)]
    if staging.scales is not None:
        pairs.append((staging.scales, pool.k_scales, pool.v_scales))
    for buf, a, b in pairs:
        block_bytes = np.int64(int(np.prod(a.shape[1:])) * a.dtype.itemsize)
        args = (buf, a, b, dev_ids, block_bytes) if name == "gather_blocks" else (a, b, buf, dev_ids, block_bytes)
        kernel((len(ids),), (THREADS,), args)


def swap_out(backend: Backend, pool: KVPool, block_ids: np.ndarray, *, out: SwapStaging | None = None,
             validate: bool = True) -> SwapStaging:
    """Gather blocks block_ids[i] of `pool` (K, V and per-block scales) into staging block i. `out`:
    a preallocated SwapStaging (any device-addressable memory, e.g. mapped pinned host memory);
    by default a new one on the backend. The pool is unchanged: the caller frees the blocks."""
    ids = np.ascontiguousarray(block_ids, np.int64)
    if validate:
        _check_swap(pool, ids, out, distinct=False)
    if out is None:
        scales = None
        if _moving_scales(pool):
            scales = backend.empty((len(ids), 2, *pool.k_scales.shape[1:]), np.float32)
        out = SwapStaging(backend.empty((len(ids), 2, *pool.k.shape[1:]), pool.dtype.carrier), scales)
    if len(ids):
        _launch(backend, "gather_blocks", pool, out, ids)
    return out


def swap_in(backend: Backend, pool: KVPool, staging: SwapStaging, block_ids: np.ndarray, *,
            validate: bool = True) -> None:
    """Scatter staging block i into block block_ids[i] of `pool` (distinct ids; they need not be the
    blocks it was swapped out of)."""
    ids = np.ascontiguousarray(block_ids, np.int64)
    if validate:
        _check_swap(pool, ids, staging, distinct=True)
    if len(ids):
        _launch(backend, "scatter_blocks", pool, staging, ids)
