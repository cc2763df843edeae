"""gpu.run_paged_decode: the layout-free entry point (pool + scattered table + write kernel + decode)
against the float64 reference, and its input checks."""

from __future__ import annotations

import numpy as np
import pytest
from gpu_testing import BACKENDS, TOLERANCE

import gpu
from gpu.backends.base import get_backend
from gpu.errors import KernelInputError
from gpu.ops.dtypes import storage_type
from gpu.ops.reference import decode_attention


def _inputs(lens, heads=8, kv_heads=2, head_dim=64, seed=0):
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((len(lens), heads, head_dim))
    keys = [rng.standard_normal((n, kv_heads, head_dim)) for n in lens]
    values = [rng.standard_normal((n, kv_heads, head_dim)) for n in lens]
    return q, keys, values


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", ["float32", "fp16", "bf16"])
def test_matches_reference(backend, dtype):
    q, keys, values = _inputs([5, 0, 130, 1, 600])  # 600 > 512: the partitioned kernel
    out = gpu.run_paged_decode(q, keys, values, block_size=8, dtype=dtype, backend=backend)
    st = storage_type(dtype)
    ref = decode_attention(st.round(q), [st.round(k) for k in keys], [st.round(v) for v in values], 1 / 8)
    assert out.dtype == np.float32 and out.shape == q.shape
    atol, rtol = TOLERANCE[st.name]
    np.testing.assert_allclose(out, ref, atol=atol, rtol=rtol)


@pytest.mark.parametrize("backend", BACKENDS)
def test_window_and_seed(backend):
    q, keys, values = _inputs([50, 9], heads=4, kv_heads=4, head_dim=128)
    a = gpu.run_paged_decode(q, keys, values, block_size=16, dtype="float32", backend=backend, window=20, seed=1)
    b = gpu.run_paged_decode(q, keys, values, block_size=16, dtype="float32", backend=backend, window=20, seed=2)
    ref = decode_attention(q.astype(np.float32), keys, values, 1 / np.sqrt(128), window=20)
    np.testing.assert_allclose(a, ref.astype(np.float32), atol=2e-5, rtol=2e-5)
    np.testing.assert_allclose(a, b, atol=1e-6)  # another block placement, the same attention


def test_auto_backend_runs_here():
    q, keys, values = _inputs([3])
    out = gpu.run_paged_decode(q, keys, values, block_size=16, dtype="float32")
    assert out.shape == (1, 8, 64)
    assert get_backend("auto").name in ("cpu", "cupy")


@pytest.mark.parametrize("change,match", [
    (lambda q, k, v: (q[0], k, v), r"q must be a NumPy array \[num_seqs, num_heads, head_dim\]"),
    (lambda q, k, v: (q.astype(np.int32), k, v), "q must hold floating-point values"),
    (lambda q, k, v: (q, k[:1], v), r"keys \(1\) and values \(2\) must have one entry per sequence \(2\)"),
    (lambda q, k, v: (q, [k[0], k[1][:, :, :32]], v), r"keys\[1\] head_dim 32 != q's head_dim 64"),
    (lambda q, k, v: (q, [k[0], k[1][:, :1]], [v[0], v[1][:, :1]]), r"keys\[1\] has 1 kv heads; earlier arrays have 2"),
    (lambda q, k, v: (q, k, [v[0], v[1][:3]]), r"keys\[1\] has 4 tokens, values\[1\] 3"),
    (lambda q, k, v: (q, [k[0], list(k[1])], v), r"keys\[1\] must be a float NumPy array"),
    (lambda q, k, v: (q[:, :3], k, v), "num_heads = 3 must be a multiple of num_kv_heads = 2"),
])
def test_bad_inputs(change, match):
    q, keys, values = _inputs([2, 4])
    with pytest.raises(KernelInputError, match=match):
        gpu.run_paged_decode(*change(q, keys, values), block_size=16, dtype="float16", backend="cpu")


def test_bad_options():
    q, keys, values = _inputs([2, 4], head_dim=64)
    with pytest.raises(KernelInputError, match="block_size = 12 is not supported"):
        gpu.run_paged_decode(q, keys, values, block_size=12, dtype="float16", backend="cpu")
    with pytest.raises(ValueError, match="dtype 'fp8' is not supported"):
        gpu.run_paged_decode(q, keys, values, block_size=16, dtype="fp8", backend="cpu")
    with pytest.raises(ValueError, match="backend 'tpu': valid are cpu, cupy, auto"):
        gpu.run_paged_decode(q, keys, values, block_size=16, dtype="float16", backend="tpu")
    q2, k2, v2 = _inputs([2], head_dim=32)
    with pytest.raises(KernelInputError, match="head_dim = 32 is not supported"):
        gpu.run_paged_decode(q2, k2, v2, block_size=16, dtype="float16", backend="cpu")


@pytest.mark.parametrize(("lens", "num_sms", "variant"), [
    ([1100], 132, "partitioned"),  # one sequence, 2 KV heads: 2 CTAs for 132 SMs -> split the context
    ([300] * 64, 1, "paged"),  # 64 x 2 CTAs already fill one SM's slots -> no split
])
def test_split_k_comes_from_the_sm_count(monkeypatch, lens, num_sms, variant):
    """With an SM count (given, or a GPU's), the planner of gpu.ops.split picks the variant and the
    partition size; the output is the same attention."""
    from gpu.ops import decode as D
    from gpu.ops.attention import plan_partition_size

    seen = []
    real_run = D.run

    def spy(problem, v, be):
        seen.append((v, problem.partition_size, plan_partition_size(problem, num_sms=num_sms)))
        return real_run(problem, v, be)

    monkeypatch.setattr(D, "run", spy)
    q, keys, values = _inputs(lens)
    out = gpu.run_paged_decode(q, keys, values, block_size=16, dtype="float32", backend="cpu", num_sms=num_sms)
    ((v, size, planned),) = seen
    assert v == variant
    if variant == "partitioned":
        assert size == planned and 0 < size < max(lens)
    ref = decode_attention(q.astype(np.float32), keys, values, 1 / 8)
    np.testing.assert_allclose(out, ref.astype(np.float32), atol=2e-5, rtol=2e-5)
