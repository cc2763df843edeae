"""Writes into the paged KV cache on a backend: scatter new K/V rows through a slot mapping
(reshape_and_cache) and copy whole blocks for copy-on-write (copy_blocks), with the Python-side
checks that run before any launch (shapes, dtypes, alignment, slot and block ids within the pool).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from gpu.backend import Backend
from gpu.dtypes import StorageType, storage_type
from gpu.errors import KernelInputError

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
        if a.dtype != dtype.carrier:
            raise KernelInputError(f"{name} dtype {a.dtype} does not carry {dtype.name} (expected {dtype.carrier})")
        if not a.flags.c_contiguous:
            raise KernelInputError(f"{name} must be C-contiguous")
        if device_address(a) % 16:
            raise KernelInputError(f"{name} must be 16-byte aligned")
    if (k_pool.shape[3] * dtype.itemsize) % 16:
        raise KernelInputError(f"head_dim * itemsize = {k_pool.shape[3] * dtype.itemsize} bytes must be a "
                               "multiple of 16")


def write_into_cache(backend: Backend, k_pool: Any, v_pool: Any, key: Any, value: Any, slots: np.ndarray,
                     *, dtype: str | StorageType, validate: bool = True) -> None:
    """Write key/value rows [num_tokens, kv_heads, head_dim] (backend arrays of the pool's carrier dtype)
    into the pools at `slots` (int64, one per token; negative = padding, skipped)."""
    st = storage_type(dtype)
    slots = np.ascontiguousarray(slots, np.int64)
    if validate:
        check_pool_arrays(k_pool, v_pool, st)
        nb, kvh, bs, d = (int(x) for x in k_pool.shape)
        for name, a in (("key", key), ("value", value)):
            if tuple(a.shape) != (len(slots), kvh, d):
                raise KernelInputError(f"{name} shape {tuple(a.shape)} != (num_tokens={len(slots)}, kv_heads={kvh}, "
                                       f"head_dim={d})")
            if a.dtype != st.carrier or not a.flags.c_contiguous or device_address(a) % 16:
                raise KernelInputError(f"{name} must be a C-contiguous, 16-byte aligned {st.carrier} array")
        used = slots[slots >= 0]
        if used.size and used.max() >= nb * bs:
            bad = int(np.argmax(slots >= nb * bs))
            raise KernelInputError(f"slot_mapping[{bad}] = {slots[bad]} is outside the pool (0..{nb * bs - 1})")
        if len(np.unique(used)) != len(used):
            raise KernelInputError("slot_mapping writes one slot twice (the result would depend on timing)")
    if len(slots) == 0:
        return
    kernel = backend.module(CACHE_OPS_FILE).get_function(f"reshape_and_cache_{st.suffix}")
    kernel((len(slots),), (THREADS,), (k_pool, v_pool, key, value, backend.asarray(slots),
                                       np.int32(k_pool.shape[1]), np.int32(k_pool.shape[3]),
                                       np.int32(k_pool.shape[2])))


def copy_blocks(backend: Backend, k_pool: Any, v_pool: Any, block_mapping: np.ndarray, *,
                dtype: str | StorageType, validate: bool = True) -> None:
    """Copy physical blocks src -> dst (K and V, every head) for each row (src, dst) of block_mapping."""
    st = storage_type(dtype)
    mapping = np.ascontiguousarray(block_mapping, np.int64)
    if validate:
        check_pool_arrays(k_pool, v_pool, st)
        nb = int(k_pool.shape[0])
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
    block_bytes = int(np.prod(k_pool.shape[1:])) * st.itemsize
    kernel = backend.module(CACHE_OPS_FILE).get_function("copy_blocks")
    kernel((len(mapping),), (THREADS,), (k_pool, v_pool, backend.asarray(mapping), np.int64(block_bytes)))
