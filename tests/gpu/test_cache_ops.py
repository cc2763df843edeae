"""Writing into the paged cache: reshape_and_cache scatters K/V rows through a slot mapping (padding
slots skipped, other slots untouched), copy_blocks duplicates whole blocks; bad mappings are refused
before launch. CPU shim always; the `gpu`-marked half runs on CuPy."""

from __future__ import annotations

import numpy as np
import pytest
from gpu_testing import BACKENDS, NoLaunchBackend, backend_for

from gpu.errors import KernelInputError
from gpu.ops.cache_ops import copy_blocks, write_into_cache
from gpu.ops.dtypes import storage_type
from gpu.ops.layout import allocate_pool


def _pool(dtype, num_blocks=12, kv_heads=2, block_size=8, head_dim=64):
    return allocate_pool(num_blocks, kv_heads, block_size, head_dim, dtype)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_reshape_and_cache_scatters_rows(backend, dtype):
    be, st = backend_for(backend), storage_type(dtype)
    pool = _pool(dtype)
    rng = np.random.default_rng(0)
    slots = rng.choice(pool.num_blocks * pool.block_size, size=30, replace=False).astype(np.int64)
    slots[[3, 17]] = -1  # padding tokens write nothing
    key = st.encode(rng.standard_normal((30, 2, 64)))
    value = st.encode(rng.standard_normal((30, 2, 64)))
    k_dev, v_dev = be.asarray(pool.k), be.asarray(pool.v)
    write_into_cache(be, k_dev, v_dev, be.asarray(key), be.asarray(value), slots, dtype=dtype)
    k_out, v_out = be.to_numpy(k_dev), be.to_numpy(v_dev)
    expect_k, expect_v = pool.k.copy(), pool.v.copy()
    for i, s in enumerate(slots):
        if s >= 0:
            expect_k[s // 8, :, s % 8, :] = key[i]
            expect_v[s // 8, :, s % 8, :] = value[i]
    assert np.array_equal(k_out.view(np.uint8), expect_k.view(np.uint8))  # bit-exact, NaN slots included
    assert np.array_equal(v_out.view(np.uint8), expect_v.view(np.uint8))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_copy_blocks_duplicates_whole_blocks(backend, dtype):
    be, st = backend_for(backend), storage_type(dtype)
    pool = _pool(dtype)
    rng = np.random.default_rng(1)
    pool.k[...] = st.encode(rng.standard_normal(pool.k.shape))
    pool.v[...] = st.encode(rng.standard_normal(pool.v.shape))
    mapping = np.array([[0, 5], [3, 7], [0, 11]], np.int64)  # one source may feed several copies
    k_dev, v_dev = be.asarray(pool.k), be.asarray(pool.v)
    copy_blocks(be, k_dev, v_dev, mapping, dtype=dtype)
    expect_k, expect_v = pool.k.copy(), pool.v.copy()
    for src, dst in mapping:
        expect_k[dst], expect_v[dst] = pool.k[src], pool.v[src]
    assert np.array_equal(be.to_numpy(k_dev), expect_k)
    assert np.array_equal(be.to_numpy(v_dev), expect_v)


@pytest.mark.parametrize("slots,key_shape,match", [
    ([0, 96], (2, 2, 64), r"slot_mapping\[1\] = 96 is outside the pool \(0..95\)"),
    ([4, 4], (2, 2, 64), "writes one slot twice"),
    ([0, 1], (2, 1, 64), r"key shape \(2, 1, 64\) != \(num_tokens=2, kv_heads=2, head_dim=64\)"),
    ([0, 1, 2], (2, 2, 64), r"key shape \(2, 2, 64\) != \(num_tokens=3"),
])
def test_write_checks(slots, key_shape, match):
    pool = _pool("float16")
    key = np.zeros(key_shape, np.float16)
    with pytest.raises(KernelInputError, match=match):
        write_into_cache(NoLaunchBackend(), pool.k, pool.v, key, key.copy(), np.array(slots), dtype="float16")


def test_write_checks_dtype_and_pool():
    pool = _pool("float16")
    key = np.zeros((1, 2, 64), np.float32)
    with pytest.raises(KernelInputError, match="key must be a C-contiguous, 16-byte aligned float16 array"):
        write_into_cache(NoLaunchBackend(), pool.k, pool.v, key, key, np.array([0]), dtype="float16")
    with pytest.raises(KernelInputError, match="v_pool dtype float16 does not carry bfloat16"):
        write_into_cache(NoLaunchBackend(), pool.k.view(np.uint16), pool.v, key, key, np.array([0]), dtype="bfloat16")


@pytest.mark.parametrize("mapping,match", [
    ([[0, 12]], r"block_mapping\[0, 1\] = 12 is outside the pool \(0..11\)"),
    ([[-1, 2]], r"block_mapping\[0, 0\] = -1 is outside the pool"),
    ([[0, 2], [1, 2]], "destination block twice"),
    ([[0, 2], [2, 3]], "destination block is also a source"),
    ([0, 2], r"block_mapping must be \[num_pairs, 2\]"),
])
def test_copy_checks(mapping, match):
    pool = _pool("float32")
    with pytest.raises(KernelInputError, match=match):
        copy_blocks(NoLaunchBackend(), pool.k, pool.v, np.array(mapping), dtype="float32")
