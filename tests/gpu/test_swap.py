"""Swapping blocks through a contiguous staging buffer: swap_out gathers pool blocks (K, V and, for
per_block / per_head pools, their scales) into staging slabs, swap_in scatters them into possibly
other blocks, bit for bit; a swapped-in sequence decodes exactly as before; bad ids and staging
buffers are refused before anything is allocated or launched. CPU shim always; `gpu` half on CuPy."""

from __future__ import annotations

import numpy as np
import pytest
from gpu_testing import BACKENDS, NoLaunchBackend, backend_for

from gpu.errors import KernelInputError
from gpu.ops import attention as A
from gpu.ops.cache_ops import SwapStaging, swap_in, swap_out
from gpu.ops.layout import KVPool, allocate_pool
from gpu.ops.quant import parse_kv_dtype, quantize_pool


def _filled_pool(dtype: str, num_blocks=10, kv_heads=2, block_size=8, head_dim=64, seed=0) -> KVPool:
    rng = np.random.default_rng(seed)
    kv = parse_kv_dtype(dtype)
    shape = (num_blocks, kv_heads, block_size, head_dim)
    if kv is None:
        pool = allocate_pool(num_blocks, kv_heads, block_size, head_dim, dtype)
        pool.k[...] = pool.dtype.encode(rng.standard_normal(shape))
        pool.v[...] = pool.dtype.encode(rng.standard_normal(shape))
        return pool
    k, ks = quantize_pool(kv, rng.standard_normal(shape))
    v, vs = quantize_pool(kv, rng.standard_normal(shape))
    return KVPool(k, v, kv.storage, kv, ks, vs)


def _on(be, pool: KVPool) -> KVPool:
    """The pool's arrays uploaded to the backend."""
    def up(a):
        return None if a is None else be.asarray(a)

    return KVPool(up(pool.k), up(pool.v), pool.dtype, pool.quant, up(pool.k_scales), up(pool.v_scales))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "fp8_e4m3:per_block", "int8:per_head", "int8:per_kv_head"])
def test_round_trip_is_exact(backend, dtype):
    be = backend_for(backend)
    host = _filled_pool(dtype)
    pool = _on(be, host)
    out_ids = np.array([7, 2, 5])
    staging = swap_out(be, pool, out_ids)
    kv_stage = be.to_numpy(staging.kv)
    assert kv_stage.shape == (3, 2, 2, 8, 64) and staging.num_blocks == 3
    for i, b in enumerate(out_ids):  # block i is one slab: K then V
        assert np.array_equal(kv_stage[i, 0], host.k[b]) and np.array_equal(kv_stage[i, 1], host.v[b])
    moving = dtype.endswith(("per_block", "per_head"))
    assert (staging.scales is not None) == moving
    if moving:
        s = be.to_numpy(staging.scales)
        assert np.array_equal(s[:, 0], host.k_scales[out_ids]) and np.array_equal(s[:, 1], host.v_scales[out_ids])
    in_ids = np.array([0, 9, 2])  # other blocks (one of them swapped out before)
    swap_in(be, pool, staging, in_ids)
    arrays = [(pool.k, host.k, True), (pool.v, host.v, True)]
    if host.k_scales is not None:
        arrays += [(pool.k_scales, host.k_scales, moving), (pool.v_scales, host.v_scales, moving)]
    for dev, before, moves in arrays:
        expect = before.copy()
        if moves:
            expect[in_ids] = before[out_ids]
        assert np.array_equal(be.to_numpy(dev).view(np.uint8), expect.view(np.uint8))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kv_dtype", ["", "int8:per_head"])
def test_swapped_in_sequence_decodes_the_same(backend, kv_dtype):
    be = backend_for(backend)
    p = A.make_problem([40, 23], num_heads=4, num_kv_heads=2, head_dim=64, block_size=8, dtype="float16",
                       rng=np.random.default_rng(4), kv_dtype=kv_dtype)
    before = A.run(p, "paged", be)
    kv = p.kv_quant
    pool = _on(be, KVPool(p.k_pool, p.v_pool, p.kv_storage, kv, p.k_scales, p.v_scales))
    used = p.block_tables[0, :5].copy()
    spare = np.setdiff1d(np.arange(p.num_blocks), p.block_tables[p.block_tables >= 0])[:2]
    free = np.concatenate([spare, used[:3]])  # the sequence comes back to other blocks
    staging = swap_out(be, pool, used)
    for a in (pool.k, pool.v):
        a[used] = -128 if kv else np.nan  # the freed blocks are reused by someone else
    swap_in(be, pool, staging, free)
    p.k_pool, p.v_pool = be.to_numpy(pool.k), be.to_numpy(pool.v)
    if kv:
        p.k_scales, p.v_scales = be.to_numpy(pool.k_scales), be.to_numpy(pool.v_scales)
    p.block_tables[0, :5] = free
    assert np.array_equal(A.run(p, "paged", be), before)


def test_empty_swap_launches_nothing():
    pool = _filled_pool("float16")

    class Counting(NoLaunchBackend):
        def empty(self, shape, dtype):
            return np.empty(shape, dtype)

    staging = swap_out(Counting(), pool, np.array([], np.int64))
    assert staging.kv.shape == (0, 2, 2, 8, 64)
    swap_in(NoLaunchBackend(), pool, staging, np.array([], np.int64))


@pytest.mark.parametrize("ids,match", [
    ([0, 10], r"block_ids\[1\] = 10 is outside the pool \(0..9\)"),
    ([-1], r"block_ids\[0\] = -1 is outside the pool"),
    ([[0, 1]], r"block_ids must be a 1-D sequence of block ids; got shape \(1, 2\)"),
])
def test_bad_ids_are_rejected_before_launch(ids, match):
    pool = _filled_pool("fp8_e4m3:per_block")
    with pytest.raises(KernelInputError, match=match):
        swap_out(NoLaunchBackend(), pool, np.array(ids))
    staging = SwapStaging(np.zeros((len(ids), 2, 2, 8, 64), np.uint8), np.zeros((len(ids), 2, 2), np.float32))
    with pytest.raises(KernelInputError, match=match):
        swap_in(NoLaunchBackend(), pool, staging, np.array(ids))


def test_bad_staging_is_rejected_before_launch():
    pool = _filled_pool("int8:per_block")
    good = SwapStaging(np.zeros((2, 2, 2, 8, 64), np.int8), np.zeros((2, 2, 2), np.float32))
    cases = [
        (np.array([3, 3]), good, "block_ids holds block 3 twice"),
        (np.array([1, 2, 3]), good, r"staging.kv shape \(2, 2, 2, 8, 64\) != \(3, 2, 2, 8, 64\)"),
        (np.array([1, 2]), SwapStaging(good.kv.view(np.uint8), good.scales), "staging.kv dtype uint8 does not carry int8"),
        (np.array([1, 2]), SwapStaging(good.kv, None), r"staging.scales must be float32 \(2, 2, 2\) for a int8:per_block"),
        (np.array([1, 2]), SwapStaging(good.kv, good.scales.astype(np.float64)), "staging.scales dtype float64"),
    ]
    for ids, staging, match in cases:
        with pytest.raises(KernelInputError, match=match):
            swap_in(NoLaunchBackend(), pool, staging, ids)
    with pytest.raises(KernelInputError, match="staging.scales must be None"):
        swap_out(NoLaunchBackend(), _filled_pool("float16"), np.array([1]),
                 out=SwapStaging(np.zeros((1, 2, 2, 8, 64), np.float16), np.zeros((1, 2, 2), np.float32)))
    broken = _filled_pool("int8:per_block")
    broken.k_scales = broken.k_scales[:, :1].copy()
    with pytest.raises(KernelInputError, match="k_scales must be a C-contiguous float32 array of shape"):
        swap_out(NoLaunchBackend(), broken, np.array([1]))
