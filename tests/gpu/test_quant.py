"""Quantised KV storage (fp8 e4m3 / int8 codes with fp32 scales): the write kernel quantises bit for
bit as gpu.ops.quant does (every granularity and input dtype, saturation at a fixed per-block scale); the
paged / partitioned / contiguous decode kernels match the float64 reference on the dequantised values
(the output dtype's tolerance) and on the unquantised values (QUANT_TOLERANCE); run_paged_decode
takes "fp8_e4m3" / "int8[:granularity]"; bad formats and scales are refused before any launch; the
scale bytes agree with sim/presets.py's memory model."""

from __future__ import annotations

import numpy as np
import pytest
from gpu_testing import BACKENDS, QUANT_TOLERANCE, NoLaunchBackend, assert_close, backend_for, reference_for

import gpu
from gpu.errors import KernelInputError
from gpu.ops import attention as A
from gpu.ops.cache_ops import copy_blocks, write_into_cache
from gpu.ops.dtypes import storage_type
from gpu.ops.layout import allocate_pool
from gpu.ops.quant import (
    GRANULARITIES,
    POISON_CODE,
    KVQuant,
    parse_kv_dtype,
    quantize,
    quantize_pool,
    row_scales,
    slot_scales,
)
from gpu.ops.reference import decode_attention

FORMATS = [f"{d}:{g}" for d in ("fp8_e4m3", "int8") for g in GRANULARITIES]
RAGGED = [1, 37, 300, 0, 16, 64]


def fmt(name: str) -> KVQuant:
    kv = parse_kv_dtype(name)
    assert kv is not None, name
    return kv


def problems(kv_dtype, lens=RAGGED, *, dtype="float16", heads=8, kv_heads=2, head_dim=128, block_size=16, seed=0,
             **kw) -> tuple[A.DecodeProblem, A.DecodeProblem]:
    """A quantised problem and its float twin: make_problem quantises after all its random draws, so
    both hold the same tables and (before quantisation) the same numbers."""
    def make(kv: str) -> A.DecodeProblem:
        return A.make_problem(lens, num_heads=heads, num_kv_heads=kv_heads, head_dim=head_dim,
                              block_size=block_size, dtype=dtype, rng=np.random.default_rng(seed), kv_dtype=kv, **kw)
    return make(kv_dtype), make("")


def check_both_references(out: np.ndarray, p: A.DecodeProblem, twin: A.DecodeProblem) -> None:
    """Tight against the dequantised values, loose (QUANT_TOLERANCE) against the unquantised ones."""
    assert_close(out, reference_for(p), p.dtype)
    atol, rtol = QUANT_TOLERANCE[p.kv_storage.name]
    np.testing.assert_allclose(out, reference_for(twin), atol=atol, rtol=rtol)


# ------------------------------------------------------------------------------------------ writes
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("input_dtype", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("kv_dtype", FORMATS)
def test_write_quantizes_bit_exact(backend, kv_dtype, input_dtype):
    be, src, kv = backend_for(backend), storage_type(input_dtype), fmt(kv_dtype)
    pool = allocate_pool(12, 2, 8, 64, kv_dtype)
    rng = np.random.default_rng(1)
    slots = rng.choice(12 * 8, size=30, replace=False).astype(np.int64)
    slots[[3, 17]] = -1  # padding tokens write nothing
    key = src.encode(rng.standard_normal((30, 2, 64)) * 3)
    value = src.encode(rng.standard_normal((30, 2, 64)))
    key[5, 1] = 0  # an all-zero row: per_head gets the smallest positive scale
    k_s, v_s = (row_scales(kv, src.decode(r), slots, 12, 8) for r in (key, value))
    dev = [be.asarray(a) for a in (pool.k, pool.v, k_s, v_s)]
    write_into_cache(be, dev[0], dev[1], be.asarray(key), be.asarray(value), slots, dtype=kv_dtype,
                     input_dtype=input_dtype, k_scales=dev[2], v_scales=dev[3])
    k_codes, v_codes, k_scales, v_scales = (be.to_numpy(a) for a in dev)
    if kv.granularity == "per_head":  # the kernel computed them: max(absmax / qmax, FLT_MIN) per row
        for rows, got in ((key, k_scales), (value, v_scales)):
            want = np.full_like(got, np.nan)
            amax = np.abs(src.decode(rows)).max(axis=2)
            for i, s in enumerate(slots):
                if s >= 0:
                    want[s // 8, :, s % 8] = np.maximum(np.float32(amax[i]) / np.float32(kv.storage.qmax),
                                                        np.float32(2.0**-126))
            np.testing.assert_array_equal(got, want)
        assert k_scales[slots[5] // 8, 1, slots[5] % 8] == np.float32(2.0**-126)
    else:
        np.testing.assert_array_equal(k_scales, k_s)  # read, never written
    for rows, codes, scales in ((key, k_codes, k_scales), (value, v_codes, v_scales)):
        expect = pool.k.copy()
        per_slot = slot_scales(kv, scales, 12, 2, 8)
        for i, s in enumerate(slots):
            if s >= 0:
                expect[s // 8, :, s % 8, :] = quantize(src.decode(rows[i]), per_slot[s // 8, :, s % 8], kv.storage)
        assert np.array_equal(codes, expect)  # untouched slots keep the poison code
    assert np.count_nonzero(k_codes == POISON_CODE[kv.storage.name]) == (12 * 8 - 28) * 2 * 64


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("base,max_code", [("fp8_e4m3", 0x7E), ("int8", 127)])
def test_fixed_block_scale_saturates_later_rows(backend, base, max_code):
    """per_block rule: the scale is fixed before the block's first write; a later, larger row saturates."""
    be, kv = backend_for(backend), fmt(f"{base}:per_block")
    pool = allocate_pool(2, 1, 8, 64, kv.name)
    scales = np.full((2, 1), 1.0 / kv.storage.qmax, np.float32)  # covers |x| <= 1
    rows = np.stack([np.full((1, 64), 0.5), np.full((1, 64), -4.0)]).astype(np.float16)
    dev = [be.asarray(a) for a in (pool.k, pool.v, scales, scales.copy())]
    write_into_cache(be, dev[0], dev[1], be.asarray(rows), be.asarray(rows), np.array([0, 1]), dtype=kv.name,
                     k_scales=dev[2], v_scales=dev[3])
    codes = be.to_numpy(dev[0])[0, 0].view(np.uint8).astype(np.int64)
    assert (codes[1] == (max_code | 0x80 if base == "fp8_e4m3" else 256 - max_code)).all()  # -max
    assert kv.storage.decode(codes[0].astype(kv.storage.carrier))[0] * scales[0, 0] == pytest.approx(0.5, rel=2**-4)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kv_dtype", ["fp8_e4m3:per_block", "int8:per_head", "int8:per_kv_head"])
def test_copy_on_write_copies_block_scales(backend, kv_dtype):
    be, kv = backend_for(backend), fmt(kv_dtype)
    rng = np.random.default_rng(3)
    k, ks = quantize_pool(kv, rng.standard_normal((6, 2, 8, 64)))
    v, vs = quantize_pool(kv, rng.standard_normal((6, 2, 8, 64)))
    dev = [be.asarray(a) for a in (k, v, ks, vs)]
    copy_blocks(be, dev[0], dev[1], np.array([[0, 4], [2, 5]]), dtype=kv_dtype, k_scales=dev[2], v_scales=dev[3])
    moves = kv.granularity != "per_kv_head"
    for got, before in zip(dev, (k, v, ks, vs), strict=True):
        expect = before.copy()
        if moves or before is k or before is v:
            expect[[4, 5]] = before[[0, 2]]
        assert np.array_equal(be.to_numpy(got).view(np.uint8), expect.view(np.uint8))
    with pytest.raises(KernelInputError, match="k_scales must be a C-contiguous float32"):
        copy_blocks(NoLaunchBackend(), k, v, np.array([[0, 4]]), dtype=kv_dtype)


# ------------------------------------------------------------------------------------------ decode
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kv_dtype", FORMATS)
def test_decode_matches_both_references(backend, kv_dtype):
    p, twin = problems(kv_dtype, partition_size=64)  # 300 tokens -> 5 partitions
    for variant in A.VARIANTS:
        out = A.run(p, variant, backend_for(backend))
        check_both_references(out, p, twin)
        assert (out[3] == 0).all()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kv_dtype,dtype,kv_heads,head_dim,block_size", [
    ("int8:per_head", "bfloat16", 1, 128, 16), ("fp8_e4m3:per_block", "bfloat16", 8, 128, 16),
    ("fp8_e4m3:per_head", "float16", 2, 64, 8), ("int8:per_block", "bfloat16", 4, 64, 8),
    ("fp8_e4m3", "float16", 2, 256, 32), ("int8:per_kv_head", "float16", 1, 256, 32),
])
def test_dtypes_gqa_and_geometries(backend, kv_dtype, dtype, kv_heads, head_dim, block_size):
    p, twin = problems(kv_dtype, [5, 8, 33, 100], dtype=dtype, kv_heads=kv_heads, head_dim=head_dim,
                       block_size=block_size, partition_size=2 * block_size, seed=2)
    for variant in A.VARIANTS:
        check_both_references(A.run(p, variant, backend_for(backend)), p, twin)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kv_dtype", ["fp8_e4m3:per_head", "int8:per_block"])
def test_window_skips_quantized_blocks(backend, kv_dtype):
    """Blocks before the window are never read: poison codes and NaN scales there change nothing."""
    p, twin = problems(kv_dtype, [200, 30], window=40, partition_size=64)
    first = (200 - 40) // p.block_size
    for b in p.block_tables[0, :first]:
        p.k_pool[b] = p.v_pool[b] = POISON_CODE[p.kv_storage.name]
        p.k_scales[b] = p.v_scales[b] = np.nan
    for variant in A.VARIANTS:
        check_both_references(A.run(p, variant, backend_for(backend)), p, twin)


@pytest.mark.parametrize("backend", BACKENDS)
def test_long_quantized_context(backend):
    p, twin = problems("int8:per_block", [8192 + 13, 700], heads=4, kv_heads=1)
    assert A.choose_variant(p.context_lens, p.num_heads) == "partitioned"
    for variant in ("partitioned", "paged"):
        check_both_references(A.run(p, variant, backend_for(backend)), p, twin)


@pytest.mark.parametrize("kv_dtype", ["fp8_e4m3:per_head", "int8:per_kv_head"])
def test_quantized_thread_schedules_identical(kv_dtype):
    p, _ = problems(kv_dtype, [300, 77, 5], partition_size=64)
    for variant in A.VARIANTS:
        base = A.run(p, variant, backend_for("cpu"))
        assert np.array_equal(base, A.run(p, variant, backend_for("cpu", schedule="random", seed=3))), variant


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", FORMATS + ["fp8_e4m3", "int8"])
def test_run_paged_decode_quantized(backend, dtype):
    rng = np.random.default_rng(0)
    lens = [5, 0, 130, 1, 600]  # 600 > 512: the partitioned kernel
    q = rng.standard_normal((5, 8, 64))
    keys = [rng.standard_normal((n, 2, 64)) for n in lens]
    values = [rng.standard_normal((n, 2, 64)) for n in lens]
    out = gpu.run_paged_decode(q, keys, values, block_size=8, dtype=dtype, backend=backend)
    f16 = storage_type("float16")
    ref = decode_attention(f16.round(q), [f16.round(k) for k in keys], [f16.round(v) for v in values], 1 / 8)
    atol, rtol = QUANT_TOLERANCE[dtype.split(":")[0]]
    assert out.dtype == np.float32 and np.isfinite(out).all()
    np.testing.assert_allclose(out, ref, atol=atol, rtol=rtol)
    bf = gpu.run_paged_decode(q, keys, values, block_size=8, dtype=dtype, backend=backend, q_dtype="bf16")
    np.testing.assert_allclose(bf, ref, atol=atol + 0.02, rtol=rtol)


def test_kv_bytes_read_counts_codes_and_scales():
    lens = [0, 1, 16, 17, 100]  # blocks touched: 0 + 1 + 1 + 2 + 7 = 11
    tokens = sum(lens)
    for g, extra in [("per_tensor", 0), ("per_kv_head", 0), ("per_head", 2 * tokens * 2 * 4),
                     ("per_block", 2 * 11 * 2 * 4)]:
        p, _ = problems(f"int8:{g}", lens, head_dim=64)
        assert A.kv_bytes_read(p) == 2 * tokens * 2 * 64 * 1 + extra, g


def test_scale_bytes_agree_with_the_memory_model():
    """gpu's scale layouts cost what sim/presets.py charges for the same kv dtype string."""
    from sim.presets import KV_SCALES, MODELS

    model = next(iter(MODELS.values()))
    for base in ("fp8_e4m3", "int8"):
        data = 2 * model.num_layers * model.num_kv_heads * model.head_dim
        for g in KV_SCALES:
            kv = fmt(f"{base}:{g}")
            want = model.kv_bytes_per_token(f"{base}:{g}", block_size=16)
            assert data + model.num_layers * kv.scale_bytes_per_token(model.num_kv_heads, 16) == pytest.approx(want)


# ---------------------------------------------------------------------------------------- bad input
def test_kv_dtype_names():
    assert parse_kv_dtype("fp16") is None and parse_kv_dtype("bfloat16") is None
    assert fmt("INT8").name == "int8:per_tensor"
    assert fmt("fp8_e4m3:per_head").scale_shape(10, 2, 16) == (10, 2, 16)
    with pytest.raises(ValueError, match=r"kv dtype 'int4' is not supported \(valid: float32, float16, bfloat16"):
        parse_kv_dtype("int4")
    with pytest.raises(ValueError, match="unknown scale granularity 'per_token'"):
        parse_kv_dtype("int8:per_token")
    with pytest.raises(ValueError, match="a scale granularity applies only to fp8_e4m3, int8"):
        parse_kv_dtype("fp16:per_head")


@pytest.mark.parametrize("mutate,match", [
    (lambda p: setattr(p, "k_scales", p.k_scales[:, :1].copy()), r"k_scales must be a C-contiguous float32 array "
                                                                  r"of shape \(\d+, 2\) for int8:per_block"),
    (lambda p: setattr(p, "v_scales", None), "v_scales must be"),
    (lambda p: setattr(p, "k_scales", p.k_scales.astype(np.float64)), "k_scales must be"),
    (lambda p: setattr(p, "kv_dtype", "int4"), "kv dtype 'int4' is not supported"),
    (lambda p: setattr(p, "dtype", "float32"), "quantised KV .int8:per_block. takes float16 or bfloat16 queries"),
    (lambda p: setattr(p, "k_pool", p.k_pool.view(np.uint8)), "k_pool dtype uint8 does not carry int8"),
])
def test_bad_quantized_problems_are_rejected_before_launch(mutate, match):
    p, _ = problems("int8:per_block", [40, 17])
    mutate(p)
    with pytest.raises(KernelInputError, match=match):
        A.prepare(p, "paged", NoLaunchBackend())


def test_bad_quantized_writes_and_options():
    pool = allocate_pool(4, 2, 8, 64, "fp8_e4m3:per_block")
    rows = np.zeros((2, 2, 64), np.float16)
    with pytest.raises(KernelInputError, match=r"k_scales must be a C-contiguous float32 array of shape \(4, 2\)"):
        write_into_cache(NoLaunchBackend(), pool.k, pool.v, rows, rows, np.array([0, 1]), dtype="fp8_e4m3:per_block",
                         k_scales=pool.k_scales[:2].copy(), v_scales=pool.v_scales)
    with pytest.raises(KernelInputError, match="key must be a C-contiguous, 16-byte aligned float32 array"):
        write_into_cache(NoLaunchBackend(), pool.k, pool.v, rows, rows, np.array([0, 1]), dtype="fp8_e4m3:per_block",
                         input_dtype="float32", k_scales=pool.k_scales, v_scales=pool.v_scales)
    with pytest.raises(KernelInputError, match="input_dtype float32 differs from the float16 pool"):
        write_into_cache(NoLaunchBackend(), rows, rows, rows, rows, np.array([0]), dtype="float16",
                         input_dtype="float32")
    q, kv = np.zeros((1, 2, 64)), [np.zeros((3, 2, 64))]
    with pytest.raises(KernelInputError, match="q_dtype = 'float32': quantised KV takes float16 or bfloat16"):
        gpu.run_paged_decode(q, kv, kv, block_size=8, dtype="int8", q_dtype="float32", backend="cpu")
    with pytest.raises(KernelInputError, match="q_dtype = 'bf16' applies to quantised KV only"):
        gpu.run_paged_decode(q, kv, kv, block_size=8, dtype="float16", q_dtype="bf16", backend="cpu")
    with pytest.raises(ValueError, match="unknown scale granularity 'per_row'"):
        gpu.run_paged_decode(q, kv, kv, block_size=8, dtype="int8:per_row", backend="cpu")
