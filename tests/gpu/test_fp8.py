"""The 1-byte KV codes, bit for bit: the NumPy fp8 e4m3 / int8 codecs (gpu.ops.dtypes) against the CUDA
conversions the kernels call (__nv_cvt_float_to_fp8 / __nv_cvt_fp8_to_halfraw, the shim's cuda_fp8.h
on the CPU, NVIDIA's on a GPU), the kernels' quantize_code and load_vec16 (which widens codes in
registers), and, where a CUDA toolkit is installed, the shim's header against NVIDIA's own header
compiled for the host (E4M3 and E5M2, with and without saturation)."""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from gpu_testing import BACKENDS, backend_for

from gpu.backends.cpu import KERNEL_DIR, SHIM_DIR, CpuRawModule
from gpu.ops.dtypes import FP8_E4M3_VALUES, QUANT_TYPES, fp8_e4m3_decode, fp8_e4m3_encode, int8_encode

PROBE = r'''
#include "common.cuh"
#define GRID_STRIDE(i, n) for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < (n); \
                               i += (long long)gridDim.x * blockDim.x)
extern "C" __global__ void fp8_encode(const float* x, unsigned char* y, long long n) {
  GRID_STRIDE(i, n) y[i] = __nv_cvt_float_to_fp8(x[i], __NV_SATFINITE, __NV_E4M3);
}
extern "C" __global__ void fp8_to_half(const unsigned char* c, unsigned short* h, long long n) {
  GRID_STRIDE(i, n) h[i] = __nv_cvt_fp8_to_halfraw(c[i], __NV_E4M3).x;
}
extern "C" __global__ void quantize_codes(const float* x, unsigned char* fp8, unsigned char* i8, long long n) {
  GRID_STRIDE(i, n) {
    fp8[i] = pagesim::quantize_code<__nv_fp8_e4m3>(x[i]);
    i8[i] = pagesim::quantize_code<signed char>(x[i]);
  }
}
// thread t widens codes[16t, 16t + 16) as fp8 and as int8 through the kernels' load_vec16
extern "C" __global__ void widen(const unsigned char* codes, float* as_fp8, float* as_int8) {
  float o[16];
  pagesim::load_vec16(reinterpret_cast<const __nv_fp8_e4m3*>(codes) + 16 * threadIdx.x, o);
  for (int e = 0; e < 16; ++e) as_fp8[16 * threadIdx.x + e] = o[e];
  pagesim::load_vec16(reinterpret_cast<const signed char*>(codes) + 16 * threadIdx.x, o);
  for (int e = 0; e < 16; ++e) as_int8[16 * threadIdx.x + e] = o[e];
}
'''

_MODULES: dict[str, object] = {}


def probe(backend: str):
    """The PROBE kernels on a backend: the shim, or cupy.RawModule with the kernels' include path."""
    if backend not in _MODULES:
        if backend == "cpu":
            _MODULES[backend] = CpuRawModule(PROBE, filename="fp8_probe.cu")
        else:
            import cupy

            from gpu.backends.nvrtc import cuda_include_dir

            _MODULES[backend] = cupy.RawModule(code=PROBE, options=("-std=c++17", f"-I{cuda_include_dir()}",
                                                                    f"-I{KERNEL_DIR}"))
    return _MODULES[backend]


def launch(backend: str, name: str, *arrays: np.ndarray, out_dtypes: tuple, n: int | None = None):
    """Grid-stride kernels over len(arrays[0]) elements; with `n`, the fixed-size widen kernel."""
    be = backend_for(backend)
    dev_in = [be.asarray(a) for a in arrays]
    count = len(arrays[0]) if n is None else n
    outs = [be.empty((count,), d) for d in out_dtypes]
    args = (*dev_in, *outs) + ((np.int64(count),) if n is None else ())
    grid, block = ((64,), (32,)) if n is None else ((1,), (n // 16,))
    probe(backend).get_function(name)(grid, block, args)
    be.synchronize()
    return [be.to_numpy(o) for o in outs]


def encode_inputs() -> np.ndarray:
    """float32 values that exercise every rounding case: all float16 values (fp8 subnormals, ties,
    Inf, NaN), every midpoint between neighbouring fp8 values and its float32 neighbours, the
    saturation boundary (448 + half an ulp = 464) and random bit patterns."""
    halves = np.arange(65536, dtype=np.uint16).view(np.float16).astype(np.float32)
    pos = FP8_E4M3_VALUES[:0x7F].astype(np.float32)
    mids = ((pos[1:].astype(np.float64) + pos[:-1]) / 2).astype(np.float32)
    edges = np.array([448, 464, 480, 1e30, np.inf, 2.0**-10, 2.0**-9, 2.0**-6, 1e-45, 0.0], np.float32)
    near = np.concatenate([mids, edges])
    near = np.concatenate([near, np.nextafter(near, np.float32(np.inf)), np.nextafter(near, np.float32(0))])
    rand = np.random.default_rng(0).integers(0, 2**32, 100_000, dtype=np.uint64).astype(np.uint32).view(np.float32)
    return np.concatenate([halves, near, -near, rand]).astype(np.float32)


def test_fp8_codec_tables():
    v = FP8_E4M3_VALUES
    assert np.isnan(v[[0x7F, 0xFF]]).all() and np.isnan(v).sum() == 2
    assert v[0x7E] == 448 and v[0x01] == 2.0**-9 and v[0x08] == 2.0**-6 and v[0x38] == 1.0
    assert np.all(np.diff(v[:0x7F]) > 0)  # positive codes are monotonic
    codes = np.arange(256)[~np.isnan(v)]
    assert np.array_equal(fp8_e4m3_encode(v[codes]), codes)  # every value encodes to its code (-0 -> 0x80)
    assert list(fp8_e4m3_encode(np.array([464, 464.0001, -1e9, np.inf, np.nan, 2.0**-10, 3 * 2.0**-10]))) == \
        [0x7E, 0x7E, 0xFE, 0x7E, 0x7F, 0x00, 0x02]  # ties to even; saturation; NaN -> 0x7F
    assert list(int8_encode(np.array([0.5, 1.5, 2.5, -0.5, -126.5, 200, -1e9, np.nan]))) == \
        [0, 2, 2, 0, -126, 127, -127, -127]
    assert QUANT_TYPES["int8"].decode(np.array([-127, 5], np.int8)).tolist() == [-127.0, 5.0]


@pytest.mark.parametrize("backend", BACKENDS)
def test_all_256_codes_decode_as_cuda_does(backend):
    codes = np.arange(256, dtype=np.uint8)
    (halves,) = launch(backend, "fp8_to_half", codes, out_dtypes=(np.uint16,))
    got = halves.view(np.float16).astype(np.float64)
    want = fp8_e4m3_decode(codes)
    assert np.array_equal(np.isnan(got), np.isnan(want))
    assert np.array_equal(got[~np.isnan(want)], want[~np.isnan(want)])
    assert np.array_equal(np.signbit(got[:0x7F]), np.zeros(0x7F, bool)) and np.signbit(got[0x80])  # -0 stays -0


@pytest.mark.parametrize("backend", BACKENDS)
def test_encode_matches_cuda_bit_for_bit(backend):
    x = encode_inputs()
    (codes,) = launch(backend, "fp8_encode", x, out_dtypes=(np.uint8,))
    want = fp8_e4m3_encode(x)
    bad = np.flatnonzero(codes != want)
    assert bad.size == 0, [(float(x[i]), int(codes[i]), int(want[i])) for i in bad[:5]]


@pytest.mark.parametrize("backend", BACKENDS)
def test_kernel_quantize_code_and_widening(backend):
    x = np.concatenate([encode_inputs()[::7], np.arange(-140, 140, 0.25, dtype=np.float32)])
    x[np.isnan(x)] = np.nan  # quiet NaNs only: the shim's fmaxf is glibc's, which turns a signalling NaN into NaN
    fp8, i8 = launch(backend, "quantize_codes", x, out_dtypes=(np.uint8, np.uint8))
    assert np.array_equal(fp8, fp8_e4m3_encode(x))
    assert np.array_equal(i8.view(np.int8), int8_encode(x))
    assert i8.view(np.int8).min() == -127  # -128 is never written (the pool's poison code)
    codes = np.arange(256, dtype=np.uint8)
    as_fp8, as_int8 = launch(backend, "widen", codes, out_dtypes=(np.float32, np.float32), n=256)
    np.testing.assert_array_equal(as_fp8, fp8_e4m3_decode(codes).astype(np.float32))  # NaN positions too
    np.testing.assert_array_equal(as_int8, codes.view(np.int8).astype(np.float32))


# --- the shim's cuda_fp8.h against NVIDIA's, both compiled for the host with g++ -------------------
HOST_PROBE = r'''
#include <cuda_fp8.h>
extern "C" void enc(const float* x, unsigned char* y, long n, int sat, int fmt) {
  for (long i = 0; i < n; ++i) y[i] = __nv_cvt_float_to_fp8(x[i], (__nv_saturation_t)sat, (__nv_fp8_interpretation_t)fmt);
}
extern "C" void dec(const unsigned char* c, unsigned short* h, long n, int fmt) {
  for (long i = 0; i < n; ++i) h[i] = __nv_cvt_fp8_to_halfraw(c[i], (__nv_fp8_interpretation_t)fmt).x;
}
'''


def _toolkit_include() -> str | None:
    for d in (os.environ.get("CUDA_PATH", ""), "/usr/local/cuda"):
        inc = os.path.join(d, "include") if d else ""
        if inc and os.path.exists(os.path.join(inc, "crt", "host_defines.h")) and \
                os.path.exists(os.path.join(inc, "cuda_fp8.hpp")):
            return inc
    return None


def _host_lib(tmp: Path, name: str, flags: list[str]) -> ctypes.CDLL:
    src = tmp / f"{name}.cpp"
    src.write_text(HOST_PROBE)
    so = tmp / f"{name}.so"
    subprocess.run([os.environ.get("CXX", "g++"), "-std=c++20", "-O1", "-shared", "-fPIC", *flags, str(src), "-o",
                    str(so)], check=True, capture_output=True, text=True)
    lib = ctypes.CDLL(str(so))
    ptr = ctypes.c_void_p
    lib.enc.argtypes = [ptr, ptr, ctypes.c_long, ctypes.c_int, ctypes.c_int]
    lib.dec.argtypes = [ptr, ptr, ctypes.c_long, ctypes.c_int]
    return lib


@pytest.mark.skipif(_toolkit_include() is None or shutil.which("g++") is None,
                    reason="no CUDA toolkit headers (crt/host_defines.h) for a host build of NVIDIA's cuda_fp8.h")
def test_shim_header_matches_nvidia_header(tmp_path):
    nvidia = _host_lib(tmp_path, "nvidia", [f"-I{_toolkit_include()}"])
    shim = _host_lib(tmp_path, "shim", [f"-I{SHIM_DIR / 'include'}"])
    x = encode_inputs()
    with np.errstate(over="ignore", invalid="ignore"):
        x = np.concatenate([x, x * 128, x * 2.0**-8])  # E5M2's range and subnormals too
    codes = np.arange(256, dtype=np.uint8)
    for fmt in (0, 1):  # __NV_E4M3, __NV_E5M2
        for sat in (0, 1):  # __NV_NOSAT, __NV_SATFINITE
            a, b = np.empty(len(x), np.uint8), np.empty(len(x), np.uint8)
            nvidia.enc(x.ctypes.data, a.ctypes.data, len(x), sat, fmt)
            shim.enc(x.ctypes.data, b.ctypes.data, len(x), sat, fmt)
            bad = np.flatnonzero(a != b)
            assert bad.size == 0, (fmt, sat, [(float(x[i]), int(a[i]), int(b[i])) for i in bad[:5]])
            if fmt == 0 and sat == 1:
                assert np.array_equal(a, fp8_e4m3_encode(x))  # and NumPy agrees with NVIDIA
        ha, hb = np.empty(256, np.uint16), np.empty(256, np.uint16)
        nvidia.dec(codes.ctypes.data, ha.ctypes.data, 256, fmt)
        shim.dec(codes.ctypes.data, hb.ctypes.data, 256, fmt)
        assert np.array_equal(ha, hb), fmt
