"""The kernel sources compile through NVRTC (the compiler cupy.RawModule uses) for sm_80 and sm_90 in
every dtype / head_dim / block size instantiation, with no register spills; the quantised (fp8 e4m3 /
int8, KV_QUANT=1) instantiations on a smaller matrix (fp8 on sm_80 takes cuda_fp8.h's software
conversion path, on sm_90 the hardware one); compile errors and spills are detected; nvcc
--resource-usage agrees where nvcc is installed. No GPU needed."""

from __future__ import annotations

import shutil

import pytest

from gpu.backends import nvrtc
from gpu.ops.layout import SUPPORTED_BLOCK_SIZES, SUPPORTED_HEAD_DIMS
from gpu.ops.split import QUERY_GROUPS, DecodeGeometry

KV_ITEMSIZE = {"f32": 4, "f16": 2, "bf16": 2, "fp8": 1, "int8": 1}


def check_decode_kernel(k: nvrtc.KernelResources, head_dim: int, group: int) -> None:
    """No spills, within the launch-bounds register budget, and the static shared memory the Python
    mirror of the geometry (gpu.ops.split.DecodeGeometry) computes: the launcher's view is the kernel's."""
    assert not k.spills, f"{k.name}: {k.spill_stores} B spill stores, {k.spill_loads} B spill loads"
    assert k.stack_bytes == 0, k
    if k.name.startswith("decode_reduce"):
        assert 0 < k.registers <= 128 and k.occupancy(128) >= 0.25, k
        return
    geo = DecodeGeometry(head_dim, KV_ITEMSIZE[k.name.rsplit("_", 1)[1]], group)
    assert 0 < k.registers <= 65536 // (geo.threads * geo.min_blocks), k  # __launch_bounds__ budget
    assert k.smem_bytes == geo.smem_bytes, (k, geo)
    assert k.occupancy(geo.threads) >= 0.125, k

DECODE_KERNELS = {f"{k}_{s}" for k in ("paged_decode", "contiguous_decode", "decode_reduce")
                  for s in ("f32", "f16", "bf16")}
QUANT_DECODE_KERNELS = {f"{k}_{q}_{c}" for k in ("paged_decode", "contiguous_decode") for q in ("f16", "bf16")
                        for c in ("fp8", "int8")} | {"decode_reduce_f16", "decode_reduce_bf16"}
CACHE_KERNELS = ({"copy_blocks", "gather_blocks", "scatter_blocks"}
                 | {f"reshape_and_cache_{s}" for s in ("f32", "f16", "bf16")}
                 | {f"reshape_and_cache_{s}_{c}" for s in ("f32", "f16", "bf16") for c in ("fp8", "int8")})


@pytest.mark.slow
@pytest.mark.parametrize("arch", nvrtc.ARCHS)
@pytest.mark.parametrize("head_dim", SUPPORTED_HEAD_DIMS)
@pytest.mark.parametrize("block_size", SUPPORTED_BLOCK_SIZES)
def test_decode_kernels_compile_without_spills(arch, head_dim, block_size):
    # the query group rotates over the matrix so every group meets every head_dim and block size once
    # per arch pair (benchmarks/kernel_resources.py compiles the full product)
    group = sorted(QUERY_GROUPS)[(SUPPORTED_HEAD_DIMS.index(head_dim) + SUPPORTED_BLOCK_SIZES.index(block_size)
                                  + nvrtc.ARCHS.index(arch)) % len(QUERY_GROUPS)]
    r = nvrtc.compile_kernel_file("paged_attention.cu", arch=arch,
                                  defines={"HEAD_DIM": head_dim, "BLOCK_SIZE": block_size, "QUERY_GROUP": group})
    assert set(r.kernels) == DECODE_KERNELS
    for k in r.kernels.values():
        assert k.arch == arch
        check_decode_kernel(k, head_dim, group)
    assert not r.warnings, r.warnings


@pytest.mark.parametrize("arch", nvrtc.ARCHS)
@pytest.mark.parametrize("head_dim,block_size,group", [(64, 8, 8), (128, 16, 4), (256, 32, 8), (128, 32, 2)])
def test_quantized_decode_kernels_compile_without_spills(arch, head_dim, block_size, group):
    r = nvrtc.compile_kernel_file("paged_attention.cu", arch=arch, defines={
        "HEAD_DIM": head_dim, "BLOCK_SIZE": block_size, "KV_QUANT": 1, "QUERY_GROUP": group})
    assert set(r.kernels) == QUANT_DECODE_KERNELS
    for k in r.kernels.values():
        check_decode_kernel(k, head_dim, group)
    assert not r.warnings, r.warnings


def test_bad_query_group_is_a_compile_error():
    with pytest.raises(nvrtc.CompileError, match="QUERY_GROUP must be 1, 2, 4 or 8"):
        nvrtc.compile_kernel_file("paged_attention.cu", arch="sm_90", defines={"QUERY_GROUP": 3})


@pytest.mark.parametrize("arch", nvrtc.ARCHS)
def test_bandwidth_kernel_compiles(arch):
    r = nvrtc.compile_kernel_file("bandwidth.cu", arch=arch)
    assert set(r.kernels) == {"read_stream"} and not r.kernels["read_stream"].spills


@pytest.mark.parametrize("arch", nvrtc.ARCHS)
def test_cache_kernels_compile_without_spills(arch):
    r = nvrtc.compile_kernel_file("cache_ops.cu", arch=arch)
    assert set(r.kernels) == CACHE_KERNELS
    assert not any(k.spills for k in r.kernels.values())


def test_compile_error_carries_the_log():
    with pytest.raises(nvrtc.CompileError, match=r'broken.cu \(sm_90, \): NVRTC failed:\n.*identifier "INFINITY" is undefined'):
        nvrtc.compile_source('extern "C" __global__ void k(float* y) { y[0] = -INFINITY; }', filename="broken.cu")


SPILLER = r'''
extern "C" __global__ void __launch_bounds__(1024, 2) spill(const float* x, float* y, int n) {
  float v[96];
#pragma unroll
  for (int i = 0; i < 96; ++i) v[i] = x[threadIdx.x * 96 + i] * (i + 1);
  float s = 0.f;
#pragma unroll
  for (int i = 0; i < 96; ++i) s += v[i] * v[(i * 7 + n) % 96];
  y[threadIdx.x] = s;
}
'''


def test_spills_are_detected():
    """A 32-register budget (1024 threads x 2 blocks per SM) with 96 live values must spill."""
    r = nvrtc.compile_source(SPILLER, arch="sm_80", filename="spiller.cu")
    k = r.kernels["spill"]
    assert k.spills and k.registers <= 32 and k.stack_bytes > 0


def test_parse_ptxas_log():
    log = """ptxas info    : 0 bytes gmem
ptxas info    : Compiling entry function 'paged_decode_f16' for 'sm_90'
ptxas info    : Function properties for paged_decode_f16
    8 bytes stack frame, 4 bytes spill stores, 4 bytes spill loads
ptxas info    : Used 48 registers, used 1 barriers, 8 bytes cumulative stack size, 6176 bytes smem
ptxas info    : Compiling entry function 'copy_blocks' for 'sm_90'
ptxas info    : Function properties for copy_blocks
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 30 registers, used 0 barriers
"""
    rows = nvrtc.parse_ptxas_log(log, "sm_90")
    assert rows["paged_decode_f16"] == nvrtc.KernelResources("paged_decode_f16", "sm_90", 48, 6176, 8, 4, 4)
    assert rows["copy_blocks"] == nvrtc.KernelResources("copy_blocks", "sm_90", 30, 0, 0, 0, 0)


def test_occupancy_estimate():
    # 64 registers x 128 threads = 8192 per block -> 8 blocks = 32 warps of 64
    assert nvrtc.KernelResources("k", "sm_90", registers=64, smem_bytes=4096).occupancy(128) == 0.5
    # 128 registers -> 4 blocks -> 16 warps
    assert nvrtc.KernelResources("k", "sm_80", registers=128, smem_bytes=4096).occupancy(128) == 0.25
    # shared memory bound: 100 KiB per block on sm_80 (164 KiB) -> 1 block
    assert nvrtc.KernelResources("k", "sm_80", registers=32, smem_bytes=100 * 1024).occupancy(128) == 4 / 64


def test_cuda_include_dir_has_half_headers():
    import os

    inc = nvrtc.cuda_include_dir()
    assert os.path.exists(os.path.join(inc, "cuda_bf16.h"))


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is not installed (NVRTC above is the CI check)")
@pytest.mark.parametrize("arch", nvrtc.ARCHS)
def test_nvcc_resource_usage_agrees(arch):
    rows = nvrtc.nvcc_resource_usage("paged_attention.cu", arch=arch, defines={"HEAD_DIM": 128, "BLOCK_SIZE": 16})
    assert set(rows) == DECODE_KERNELS
    assert all(not k.spills and 0 < k.registers <= 128 for k in rows.values())
    rows = nvrtc.nvcc_resource_usage("paged_attention.cu", arch=arch,
                                     defines={"HEAD_DIM": 128, "BLOCK_SIZE": 16, "KV_QUANT": 1})
    assert set(rows) == QUANT_DECODE_KERNELS
    assert all(not k.spills and 0 < k.registers <= 128 for k in rows.values())
