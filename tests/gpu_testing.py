"""Helpers shared by the tests/test_gpu_*.py files: the backend parameter list (the CPU shim always,
CuPy under the `gpu` marker), cached backends, references for a DecodeProblem and the tolerances."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from gpu.attention import DecodeProblem
from gpu.backend import Backend, CpuBackend, get_backend
from gpu.reference import paged_decode_attention

# `pytest -m gpu` runs the cupy half of every parametrized test on a real GPU.
BACKENDS = ["cpu", pytest.param("cupy", marks=pytest.mark.gpu)]

# (atol, rtol) of kernel output vs the float64 reference computed on the same rounded inputs.
# float32: fp32 accumulation and the GPU's __expf (~2 ulp); float16 / bfloat16 add the rounding
# of the output itself (2^-11 and 2^-8 relative) plus fp32 accumulation error.
TOLERANCE = {"float32": (2e-5, 2e-5), "float16": (1e-3, 2e-3), "bfloat16": (8e-3, 1.6e-2)}

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
    """float64 reference of a problem, computed from the rounded values the kernel sees."""
    st = p.storage
    return paged_decode_attention(st.decode(p.q), st.decode(p.k_pool), st.decode(p.v_pool), p.block_tables,
                                  p.context_lens, p.scale, window=p.window)


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
