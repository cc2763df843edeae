"""Backends: names and selection, the kernel text handed to compilers (headers inlined), and the
CuPy backend's code path exercised on the CPU through a stand-in `cupy` module whose RawModule is
the shim (the real thing runs under `pytest -m gpu`)."""

from __future__ import annotations

import sys
import types
from typing import Any

import numpy as np
import pytest
from gpu_testing import assert_close, reference_for

from gpu.backends.base import CpuBackend, CupyBackend, get_backend, gpu_available, kernel_source
from gpu.backends.cpu import CpuRawModule
from gpu.ops import attention as A
from gpu.ops.cache_ops import write_into_cache


def test_kernel_source_inlines_local_headers():
    src = kernel_source("paged_attention.cu")
    assert '#include "common.cuh"' not in src
    assert '#line 1 "common.cuh"' in src and '#line 1 "paged_attention.cu"' in src
    assert "load_vec16" in src and "#pragma once" not in src
    assert "#include <cuda_fp16.h>" in src  # system headers stay for the compiler to find


def test_backend_names():
    assert get_backend("cpu").name == "cpu"
    assert get_backend("cpu") is get_backend("cpu")
    be = CpuBackend(schedule="reverse")
    assert get_backend(be) is be
    with pytest.raises(ValueError, match="backend 'gpu': valid are cpu, cupy, auto"):
        get_backend("gpu")
    with pytest.raises(ValueError, match="schedule 'sideways'"):
        CpuBackend(schedule="sideways")
    assert isinstance(gpu_available(), bool)
    if not gpu_available():
        assert get_backend("auto").name == "cpu"
        with pytest.raises(RuntimeError, match="backend 'cupy' needs a CUDA GPU"):
            get_backend("cupy")


class _FakeCupy(types.ModuleType):
    """Just enough of cupy for CupyBackend: RawModule runs on the shim, arrays are NumPy arrays."""

    def __init__(self) -> None:
        super().__init__("cupy")
        self.compiled: list[tuple[str, ...]] = []

        def raw_module(code: str, options: tuple[str, ...]) -> Any:
            self.compiled.append(tuple(options))
            # the shim needs only the -D options; the name lets it reuse the CPU backend's cached build
            name = "paged_attention.cu" if "paged_decode_" in code else "cache_ops.cu"
            return CpuRawModule(code, [o for o in options if o.startswith("-D")], filename=name)

        self.RawModule = raw_module
        self.asarray = lambda a: np.array(a, copy=True)
        self.asnumpy = np.asarray
        self.empty = np.empty
        self.full = np.full
        device = types.SimpleNamespace(synchronize=lambda: None)
        self.cuda = types.SimpleNamespace(Device=lambda: device,
                                          runtime=types.SimpleNamespace(getDeviceCount=lambda: 1))


def test_cupy_backend_code_path(monkeypatch):
    fake = _FakeCupy()
    monkeypatch.setitem(sys.modules, "cupy", fake)
    be = CupyBackend()
    p = A.make_problem([3, 70, 0], num_heads=4, num_kv_heads=2, head_dim=64, block_size=8, dtype="bfloat16",
                       rng=np.random.default_rng(5), partition_size=32)
    for variant in A.VARIANTS:
        assert_close(A.run(p, variant, be), reference_for(p), "bfloat16")
    assert len(fake.compiled) == 1  # one module per (file, defines), reused by all variants
    opts = fake.compiled[0]
    assert "-std=c++17" in opts and "-DHEAD_DIM=64" in opts and "-DBLOCK_SIZE=8" in opts
    assert any(o.startswith("-I") for o in opts)  # where NVRTC finds cuda_fp16.h
    k, v = be.full((4, 2, 8, 64), 0, np.uint16), be.full((4, 2, 8, 64), 0, np.uint16)
    rows = np.ones((2, 2, 64), np.uint16)
    write_into_cache(be, k, v, be.asarray(rows), be.asarray(rows), np.array([0, 9]), dtype="bf16")
    assert (k[0, :, 0] == 1).all() and (k[1, :, 1] == 1).all() and k.sum() == 2 * 2 * 64
