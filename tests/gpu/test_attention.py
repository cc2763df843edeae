"""The decode kernels (paged, partitioned, contiguous) against the float64 reference: dtypes, GQA,
head_dim / block size instantiations, context lengths 0 / 1 / ragged / long, sliding windows,
scattered and shared block tables, thread schedules; and the checks that reject bad input before a
launch. Runs on the CPU shim; the `gpu`-marked half runs the same cases through cupy.RawModule."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from gpu_testing import BACKENDS, NoLaunchBackend, assert_close, backend_for, reference_for

from gpu.errors import KernelInputError
from gpu.ops import attention as A
from gpu.ops.layout import allocate_pool, shared_prefix_block_tables

RAGGED = [1, 37, 300, 0, 16, 64]  # 1 token, mid-block ends, several partitions, empty, exact blocks


def problem(lens=RAGGED, *, dtype="float16", heads=8, kv_heads=2, head_dim=128, block_size=16, seed=0, **kw):
    return A.make_problem(lens, num_heads=heads, num_kv_heads=kv_heads, head_dim=head_dim, block_size=block_size,
                          dtype=dtype, rng=np.random.default_rng(seed), **kw)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kv_heads", [1, 2, 4, 8])  # query groups 8, 4, 2, 1
@pytest.mark.parametrize("variant", A.VARIANTS)
@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_matches_reference(backend, dtype, variant, kv_heads):
    p = problem(dtype=dtype, kv_heads=kv_heads, partition_size=64)  # 300 tokens -> 5 partitions
    out = A.run(p, variant, backend_for(backend))
    assert_close(out, reference_for(p), dtype)
    assert (out[3] == 0).all()  # the empty context gives zeros


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("head_dim,block_size", [(64, 8), (256, 32), (128, 32)])
@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_other_geometries(backend, dtype, head_dim, block_size):
    p = problem([5, 8, 33, 100], dtype=dtype, heads=4, kv_heads=2, head_dim=head_dim, block_size=block_size,
                partition_size=2 * block_size)
    ref = reference_for(p)
    for variant in A.VARIANTS:
        assert_close(A.run(p, variant, backend_for(backend)), ref, dtype)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("window", [1, 5, 16, 17, 100, 5000])
def test_sliding_window_reads_last_tokens_only(backend, window):
    p = problem([1, 37, 300, 0, 16], dtype="float32", partition_size=32, window=window)
    ref = reference_for(p)
    for variant in A.VARIANTS:
        assert_close(A.run(p, variant, backend_for(backend)), ref, "float32")
    full = reference_for(dataclasses.replace(p, window=0))
    if window < 300:
        assert not np.allclose(ref[2], full[2])  # the window changes the long sequence's output


@pytest.mark.parametrize("backend", BACKENDS)
def test_window_skips_blocks_before_it(backend):
    """Blocks entirely before the window are never read: poisoning them (NaN) changes nothing."""
    p = problem([200], dtype="float16", window=40, partition_size=64)
    first_block = (200 - 40) // p.block_size
    for b in p.block_tables[0, :first_block]:
        p.k_pool[b] = p.v_pool[b] = np.float16(np.nan)
    for variant in A.VARIANTS:
        assert_close(A.run(p, variant, backend_for(backend)), reference_for(p), "float16")


@pytest.mark.parametrize("backend", BACKENDS)
def test_long_context(backend):
    p = problem([8192 + 13, 700], dtype="float16", heads=4, kv_heads=1)
    assert A.choose_variant(p.context_lens, p.num_heads) == "partitioned"
    ref = reference_for(p)
    for variant in ("partitioned", "paged"):
        assert_close(A.run(p, variant, backend_for(backend)), ref, "float16")


@pytest.mark.parametrize("backend", BACKENDS)
def test_shared_block_tables(backend):
    """Sequences sharing their first blocks (a fork / prefix cache) read the same physical blocks."""
    rng = np.random.default_rng(3)
    lens = np.array([70, 50, 90], np.int32)
    pool = allocate_pool(40, 2, 16, 64, "float32")
    tables = shared_prefix_block_tables(lens, 16, 40, shared_blocks=3, rng=rng)
    assert (tables[:, :3] == tables[0, :3]).all()
    pool.k[...] = rng.standard_normal(pool.k.shape)
    pool.v[...] = rng.standard_normal(pool.v.shape)
    q = rng.standard_normal((3, 4, 64)).astype(np.float32)
    p = A.DecodeProblem(q, pool.k, pool.v, tables, lens, 4, 2, 64, 16, "float32", 0.125, partition_size=32)
    for variant in A.VARIANTS:
        assert_close(A.run(p, variant, backend_for(backend)), reference_for(p), "float32")


@pytest.mark.parametrize("lens", [[0], [1], [0, 0, 1]])
@pytest.mark.parametrize("backend", BACKENDS)
def test_tiny_contexts(backend, lens):
    p = problem(lens, dtype="float32", partition_size=16)
    ref = reference_for(p)
    for variant in A.VARIANTS:
        out = A.run(p, variant, backend_for(backend))
        assert_close(out, ref, "float32")
    for i, n in enumerate(lens):  # one token: the output is that token's V row (softmax of one logit)
        if n == 1:
            kvh = np.arange(p.num_heads) // (p.num_heads // p.num_kv_heads)
            np.testing.assert_allclose(out[i], p.v_pool[p.block_tables[i, 0], kvh, 0, :], rtol=1e-6)


@pytest.mark.parametrize("schedule,seed", [("reverse", 1), ("random", 0), ("random", 1), ("random", 7)])
def test_thread_schedules_give_identical_results(schedule, seed):
    """A race (a missing barrier) would make the result depend on the order threads run in."""
    p = problem([300, 77, 5], dtype="float32", partition_size=64)
    for variant in A.VARIANTS:
        base = A.run(p, variant, backend_for("cpu"))
        other = A.run(p, variant, backend_for("cpu", schedule=schedule, seed=seed))
        assert np.array_equal(base, other), (variant, schedule, seed)


def test_prepared_launch_repeats():
    p = problem([50, 20], partition_size=32)
    launch = A.prepare(p, "partitioned", backend_for("cpu"))
    launch()
    first = launch.output()
    launch()
    assert np.array_equal(first, launch.output())
    assert first.dtype == np.float32 and first.shape == (2, 8, 128)


def test_choose_variant_rule():
    assert A.choose_variant([512] * 2, 32) == "paged"  # fits one partition
    assert A.choose_variant([513] * 2, 32) == "partitioned"  # few (seq, head) blocks
    assert A.choose_variant([4000] * 64, 32) == "paged"  # 2048 blocks fill the GPU
    assert A.choose_variant([9000] * 64, 32) == "partitioned"  # very long contexts
    assert A.choose_variant([], 32) == "paged"


def test_traffic_figures():
    p = problem([0, 1, 16, 17, 100], heads=8, kv_heads=2, head_dim=64, block_size=16)
    assert A.kv_bytes_read(p) == 2 * (0 + 1 + 16 + 17 + 100) * 2 * 64 * 2
    assert A.num_blocks_touched(p) == 0 + 1 + 1 + 2 + 7
    w = dataclasses.replace(p, window=20)  # tokens read: 0, 1, 16, 17, 20 (80..99: blocks 5, 6)
    assert A.kv_bytes_read(w) == 2 * (0 + 1 + 16 + 17 + 20) * 2 * 64 * 2
    assert A.num_blocks_touched(w) == 0 + 1 + 1 + 2 + 2


def _bad(mutate, match, variant="paged"):
    p = problem([40, 17], dtype="float16", kv_heads=2)
    mutate(p)
    with pytest.raises(KernelInputError, match=match):
        A.prepare(p, variant, NoLaunchBackend())


@pytest.mark.parametrize("mutate,match", [
    (lambda p: setattr(p, "q", p.q.astype(np.float32)), "q must be a C-contiguous float16"),
    (lambda p: setattr(p, "q", p.q[:, :4]), r"q must be a \[num_seqs, num_heads=8"),
    (lambda p: setattr(p, "q", np.asfortranarray(p.q)), "C-contiguous"),
    (lambda p: setattr(p, "k_pool", p.k_pool[:, :1].copy()), "k/v pools must both be"),
    (lambda p: setattr(p, "v_pool", p.v_pool.astype(np.float32)), "v_pool dtype float32 does not carry float16"),
    (lambda p: setattr(p, "num_kv_heads", 3), "multiple of num_kv_heads = 3"),
    (lambda p: setattr(p, "head_dim", 96), r"head_dim = 96 is not supported \(valid: \(64, 128, 256\)\)"),
    (lambda p: setattr(p, "block_size", 12), "block_size = 12 is not supported"),
    (lambda p: setattr(p, "block_tables", p.block_tables.astype(np.int64)), "block_tables must be an int32"),
    (lambda p: p.block_tables.__setitem__((1, 1), p.num_blocks), r"block_tables\[1, 1\] = \d+ is outside the pool"),
    (lambda p: p.block_tables.__setitem__((0, 0), -1), r"block_tables\[0, 0\] = -1 is outside the pool"),
    (lambda p: p.context_lens.__setitem__(0, 10_000), r"context_lens\[0\] = 10000 needs 625 blocks"),
    (lambda p: p.context_lens.__setitem__(1, -1), r"context_lens\[1\] = -1 is negative"),
    (lambda p: setattr(p, "context_lens", p.context_lens[:1]), r"context_lens must be an int32 \[num_seqs=2\]"),
    (lambda p: setattr(p, "scale", float("nan")), "scale = nan must be finite"),
    (lambda p: setattr(p, "window", -3), "window = -3 must be >= 0"),
    (lambda p: setattr(p, "partition_size", 24), "partition_size = 24 must be a positive multiple of block_size"),
])
def test_bad_input_is_rejected_before_launch(mutate, match):
    _bad(mutate, match)


def test_bad_variant_and_partition_limits():
    _bad(lambda p: None, "variant 'flash'", variant="flash")
    p = problem([20_000], dtype="float16", heads=1, kv_heads=1, partition_size=16)
    with pytest.raises(KernelInputError, match="1250 partitions of 16 tokens exceed 1024"):
        A.prepare(p, "partitioned", NoLaunchBackend())
    p = problem([40], max_context=64)
    p.max_context = 20
    with pytest.raises(KernelInputError, match="max_context = 20 is shorter"):
        A.prepare(p, "contiguous", NoLaunchBackend())


def test_window_allows_freed_blocks_before_it():
    """Entries before the window are not read, so a table may mark them unused (-1)."""
    p = problem([100], dtype="float32", window=20, partition_size=32)
    p.block_tables[0, :4] = -1  # tokens 0..63; the window starts at token 80
    assert_close(A.run(p, "partitioned", backend_for("cpu")), reference_for(p), "float32")
