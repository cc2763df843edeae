"""The real decode kernel under AddressSanitizer + UBSan (in a subprocess with libasan preloaded):
a clean run reports nothing, and an out-of-range block id (bypassing the Python-side checks) is
caught as a heap-buffer-overflow in paged_attention.cu."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from paths import REPO

from gpu.backends.cpu import libasan_path

SCRIPT = r"""
import numpy as np
from gpu.ops import attention as A
from gpu.backends.base import CpuBackend
from gpu.ops.reference import paged_decode_attention

be = CpuBackend(sanitize=True, workers=1)
p = A.make_problem([40, 17], num_heads=4, num_kv_heads=2, head_dim=64, block_size=8, dtype="float16",
                   rng=np.random.default_rng(0), partition_size=16)
st = p.storage
ref = paged_decode_attention(st.decode(p.q), st.decode(p.k_pool), st.decode(p.v_pool), p.block_tables,
                             p.context_lens, p.scale)
for variant in A.VARIANTS:
    np.testing.assert_allclose(A.run(p, variant, be), ref, atol=1e-3, rtol=2e-3)
print("CLEAN_RUN_OK", flush=True)
p.block_tables[1, 1] = p.num_blocks  # one past the pool: token 8 of sequence 1 reads beyond its end
A.prepare(p, "paged", be, validate_input=False)()
print("NOT_CAUGHT", flush=True)
"""


@pytest.mark.slow
def test_asan_catches_out_of_range_block_id():
    try:
        libasan = libasan_path()
    except Exception as e:  # pragma: no cover - g++ without ASan
        pytest.fail(f"AddressSanitizer runtime unavailable: {e}")
    env = dict(os.environ, LD_PRELOAD=libasan, ASAN_OPTIONS="detect_leaks=0:abort_on_error=0",
               PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    r = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env, cwd=REPO,
                       timeout=600)
    assert "CLEAN_RUN_OK" in r.stdout, r.stderr[-4000:]
    assert "NOT_CAUGHT" not in r.stdout
    assert r.returncode != 0
    assert "heap-buffer-overflow" in r.stderr, r.stderr[-4000:]
    assert "paged_attention.cu" in r.stderr and "paged_decode_f16" in r.stderr, r.stderr[-4000:]
