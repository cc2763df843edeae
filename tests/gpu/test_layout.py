"""Host-side layout helpers (pools, block tables, slot mappings, contiguous gather), the storage types
and the float64 reference: pure NumPy, no kernels."""

from __future__ import annotations

import numpy as np
import pytest

from gpu.errors import KernelInputError
from gpu.ops import layout as L
from gpu.ops.dtypes import storage_type
from gpu.ops.reference import decode_attention, paged_decode_attention


def test_scattered_tables_use_distinct_blocks_and_pad_with_unused():
    rng = np.random.default_rng(0)
    lens = [1, 16, 17, 0, 40]
    t = L.scattered_block_tables(lens, 16, 20, rng)
    assert t.dtype == np.int32 and t.shape == (5, 3)
    used = np.concatenate([t[i, :L.blocks_needed(n, 16)] for i, n in enumerate(lens)])
    assert len(used) == 1 + 1 + 2 + 0 + 3 and len(set(used)) == len(used)
    assert ((used >= 0) & (used < 20)).all()
    assert (t[3] == L.UNUSED).all() and (t[0, 1:] == L.UNUSED).all()
    assert not np.array_equal(np.sort(used), used)  # shuffled, not handed out in order


def test_table_errors():
    rng = np.random.default_rng(0)
    with pytest.raises(KernelInputError, match="the contexts need 4 blocks; the pool has 3"):
        L.scattered_block_tables([33, 10], 16, 3, rng)
    with pytest.raises(KernelInputError, match="max_blocks_per_seq = 1 < 3"):
        L.scattered_block_tables([33], 16, 9, rng, max_blocks_per_seq=1)
    with pytest.raises(KernelInputError, match="shared_blocks = 3 exceeds"):
        L.shared_prefix_block_tables([33, 20], 16, 10, 3, rng)


def test_shared_prefix_tables():
    t = L.shared_prefix_block_tables([40, 33, 64], 16, 12, 2, np.random.default_rng(1))
    assert (t[:, :2] == t[0, :2]).all()
    own = np.concatenate([t[0, 2:3], t[1, 2:3], t[2, 2:4]])
    assert len(set(own) | set(t[0, :2])) == 6


def test_slot_mapping():
    t = np.array([[5, 2, -1], [7, 0, 3]], np.int32)
    slots = L.slot_mapping(t, [18, 35], 16, starts=[16, 32])
    assert slots.tolist() == [2 * 16 + 0, 2 * 16 + 1, 3 * 16 + 0, 3 * 16 + 1, 3 * 16 + 2]
    assert L.slot_mapping(t, [2, 0], 16).tolist() == [80, 81]


def test_gather_contiguous_matches_tokens():
    rng = np.random.default_rng(2)
    pool = rng.standard_normal((6, 2, 4, 8)).astype(np.float32)
    t = np.array([[4, 1], [0, -1]], np.int32)
    c = L.gather_contiguous(pool, t, [6, 3], 8, pad_value=-7)
    assert c.shape == (2, 2, 8, 8)
    assert np.array_equal(c[0, :, :4], pool[4]) and np.array_equal(c[0, :, 4:6], pool[1, :, :2])
    assert np.array_equal(c[1, :, :3], pool[0, :, :3]) and (c[1, :, 3:] == -7).all() and (c[0, :, 6:] == -7).all()
    tokens = L.gather_tokens(pool, t[0], 6)
    assert tokens.shape == (6, 2, 8) and np.array_equal(tokens[5], pool[1, :, 1])


def test_pool_allocation_and_invariants():
    pool = L.allocate_pool(3, 2, 16, 64, "bf16")
    assert pool.k.dtype == np.uint16 and pool.k.shape == (3, 2, 16, 64)
    assert np.isnan(storage_type("bf16").decode(pool.k)).all()
    pool.check_invariants()
    with pytest.raises(KernelInputError, match=r"head_dim = 80 is not supported \(valid: \(64, 128, 256\)\)"):
        L.allocate_pool(3, 2, 16, 80, "float32")
    with pytest.raises(KernelInputError, match=r"block_size = 64 is not supported \(valid: \(8, 16, 32\)\)"):
        L.allocate_pool(3, 2, 64, 64, "float32")
    bad = L.KVPool(pool.k, pool.v.astype(np.float32), pool.dtype)
    with pytest.raises(KernelInputError, match="v_pool dtype float32 does not carry bfloat16"):
        bad.check_invariants()


def test_storage_types():
    assert storage_type("fp16").name == "float16" and storage_type("BF16").suffix == "bf16"
    with pytest.raises(ValueError, match="dtype 'int4' is not supported"):
        storage_type("int4")
    bf = storage_type("bfloat16")
    x = np.array([1.0, 1 + 2**-8, 1 + 3 * 2**-8, -2.5, 3e38, np.inf, np.nan], np.float32)
    bits = bf.encode(x)
    assert bits.dtype == np.uint16
    # 1 + 2^-8 is halfway between 1 and 1 + 2^-7: ties to even (1); 1 + 3*2^-8 ties up to 1 + 2^-6
    assert bf.decode(bits)[:4].tolist() == [1.0, 1.0, 1 + 2**-6, -2.5]
    assert np.isinf(bf.decode(bits)[5]) and np.isnan(bf.decode(bits)[6])
    f16 = storage_type("float16")
    assert f16.round(np.array([1 + 2**-12]))[0] == 1.0


def test_reference_against_a_loop():
    rng = np.random.default_rng(3)
    q = rng.standard_normal((2, 4, 8))
    keys = [rng.standard_normal((5, 2, 8)), rng.standard_normal((0, 2, 8))]
    values = [rng.standard_normal((5, 2, 8)), rng.standard_normal((0, 2, 8))]
    out = decode_attention(q, keys, values, 0.3)
    for h in range(4):
        k, v = keys[0][:, h // 2], values[0][:, h // 2]
        w = np.exp(k @ q[0, h] * 0.3)
        np.testing.assert_allclose(out[0, h], w @ v / w.sum(), rtol=1e-12)
    assert (out[1] == 0).all()
    win = decode_attention(q, keys, values, 0.3, window=2)
    np.testing.assert_allclose(win[0], decode_attention(q[:1], [keys[0][3:]], [values[0][3:]], 0.3)[0], rtol=1e-12)
    with pytest.raises(ValueError, match="2 keys / 1 values for 2 sequences"):
        decode_attention(q, keys, values[:1], 0.3)


def test_paged_reference_reads_through_the_table():
    rng = np.random.default_rng(4)
    pool_k = rng.standard_normal((5, 1, 4, 8))
    pool_v = rng.standard_normal((5, 1, 4, 8))
    t = np.array([[3, 0]], np.int32)
    q = rng.standard_normal((1, 2, 8))
    keys = [np.concatenate([pool_k[3, :, :], pool_k[0, :, :2]], axis=1).transpose(1, 0, 2)]
    values = [np.concatenate([pool_v[3, :, :], pool_v[0, :, :2]], axis=1).transpose(1, 0, 2)]
    np.testing.assert_allclose(paged_decode_attention(q, pool_k, pool_v, t, [6], 0.5),
                               decode_attention(q, keys, values, 0.5), rtol=1e-12)
