"""Helpers shared by the tests/test_gpu_*.py files: the backend parameter list (the CPU shim always,
CuPy under the `gpu` marker), cached backends, references for a DecodeProblem and the tolerances."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from gpu.backends.base import Backend, CpuBackend, get_backend
from gpu.ops.attention import DecodeProblem
from gpu.ops.quant import dequantize_pool
from gpu.ops.reference import paged_decode_attention

# `pytest -m gpu` runs the cupy half of every parametrized test on a real GPU.
BACKENDS = ["cpu", pytest.param("cupy", marks=pytest.mark.gpu)]

# (atol, rtol) of kernel output vs the float64 reference computed on the same rounded inputs.
# float32: fp32 accumulation and the GPU's __expf (~2 ulp); float16 / bfloat16 add the rounding
# of the output itself (2^-11 and 2^-8 relative) plus fp32 accumulation error.
TOLERANCE = {"float32": (2e-5, 2e-5), "float16": (1e-3, 2e-3), "bfloat16": (8e-3, 1.6e-2)}

# Quantised KV (fp8 e4m3 / int8, N(0, 1) data, head_dim >= 64): (atol, rtol) of kernel output vs the
# float64 reference on the UNquantised values. Against the reference on the dequantised values the
# output dtype's TOLERANCE above applies (the kernel dequantises exactly; only fp32 accumulation and
# the output rounding remain).
#  fp8 e4m3: a value keeps 3 mantissa bits (relative error <= 2^-4), so a one-token context, whose
#    output is its V row, is off by up to 2^-4 of it: rtol 2^-4; K errors move the softmax weights
#    (measured <= 0.105 over 4 seeds and all granularities): atol 0.2.
#  int8: the error is absolute, <= scale / 2 = absmax / 254 per value (~0.02 per tensor); moved weights
#    in short contexts add to it (measured <= 0.057): atol 0.12.
QUANT_TOLERANCE = {"fp8_e4m3": (0.2, 2.0**-4), "int8": (0.12, 0.0)}

_CPU: dict[tuple[Any, ...], CpuBackend] = {}


def backend_for(name: str, **cpu_options: Any) -> Backend:
    """The shared backend `name`; for "cpu", one CpuBackend per distinct option set."""
    if name != "cpu":
        return get_backend(name)
    key = tuple(sorted(cpu_options.items()))
    if key not in _CPU:
        _CPU[key] = CpuBackend(**cpu_options)
    return _CPU[key]


def reference_for(p: DecodeProblem) -> np.ndarray:
    """float64 reference of a problem, computed from the rounded (or dequantised) values the kernel sees."""
    st, kv = p.storage, p.kv_quant
    if kv is not None:
        k, v = dequantize_pool(kv, p.k_pool, p.k_scales), dequantize_pool(kv, p.v_pool, p.v_scales)
    else:
        k, v = st.decode(p.k_pool), st.decode(p.v_pool)
    return paged_decode_attention(st.decode(p.q), k, v, p.block_tables, p.context_lens, p.scale, window=p.window)


def assert_close(out: np.ndarray, ref: np.ndarray, dtype: str) -> None:
    atol, rtol = TOLERANCE[dtype]
    assert out.shape == ref.shape
    assert np.isfinite(out).all(), "kernel output holds NaN/inf (a masked or unwritten slot was read?)"
    np.testing.assert_allclose(out, ref, atol=atol, rtol=rtol)


class NoLaunchBackend:
    """A Backend that fails the test if anything is compiled, uploaded or launched: bad input must be
    rejected before any of that."""

    def __init__(self) -> None:
        self.name = "no-launch"
        self.xp: Any = np

    def module(self, filename: str, defines: Any = None) -> Any:
        raise AssertionError(f"{filename} was compiled/launched for bad input")

    def asarray(self, a: np.ndarray) -> Any:
        raise AssertionError("data was uploaded for bad input")

    def to_numpy(self, a: Any) -> np.ndarray:
        raise AssertionError("data was downloaded for bad input")

    def empty(self, shape: tuple[int, ...], dtype: Any) -> Any:
        raise AssertionError("device memory was allocated for bad input")

    def full(self, shape: tuple[int, ...], value: float, dtype: Any) -> Any:
        raise AssertionError("device memory was allocated for bad input")

    def synchronize(self) -> None:
        pass
