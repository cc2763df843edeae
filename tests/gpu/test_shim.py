"""The CPU shim itself, on small kernels: warp-shuffle and vote semantics, barriers, the CUDA-rule
checks that fail loudly instead of hanging, argument checking, launch limits, dynamic shared memory,
atomics across worker threads, half/bf16 conversions, and module isolation."""

from __future__ import annotations

import numpy as np
import pytest

from gpu.backends.cpu import CpuKernelError, CpuRawModule
from gpu.ops.dtypes import storage_type

KERNELS = r'''
extern "C" __global__ void shfl_all(int* out, int w) {
  const int l = threadIdx.x;
  out[0 * 32 + l] = __shfl_sync(0xffffffffu, l * 10, 3, w);
  out[1 * 32 + l] = __shfl_up_sync(0xffffffffu, l * 10, 2, w);
  out[2 * 32 + l] = __shfl_down_sync(0xffffffffu, l * 10, 2, w);
  out[3 * 32 + l] = __shfl_xor_sync(0xffffffffu, l * 10, 5, w);
  out[4 * 32 + l] = (int)__ballot_sync(0xffffffffu, l % 3 == 0);
  out[5 * 32 + l] = __any_sync(0xffffffffu, l == 7);
  out[6 * 32 + l] = __all_sync(0xffffffffu, l < 31);
}
extern "C" __global__ void reverse_with_barrier(const float* x, float* y) {
  __shared__ float s[64];
  s[threadIdx.x] = x[threadIdx.x] * 2.f;
  __syncthreads();
  y[threadIdx.x] = s[63 - threadIdx.x];
}
extern "C" __global__ void missing_barrier(const float* x, float* y) {
  __shared__ float s[64];
  s[threadIdx.x] = x[threadIdx.x] * 2.f;
  y[threadIdx.x] = s[63 - threadIdx.x];  // BUG: no __syncthreads() between write and read
}
extern "C" __global__ void read_before_write(float* y) {
  __shared__ float s[64];
  y[blockIdx.x * 64 + threadIdx.x] = s[threadIdx.x];  // garbage on a GPU, NaN here
  __syncthreads();
  s[threadIdx.x] = 1.f;  // what a previous block left must not show in the next one
}
extern "C" __global__ void divergent_shuffle(float* y) {
  float v = threadIdx.x;
  if (threadIdx.x % 32 < 16) v += __shfl_xor_sync(0xffffffffu, v, 1);  // BUG: half the mask never arrives
  y[threadIdx.x] = v;
}
extern "C" __global__ void divergent_barrier(float* y) {
  if (threadIdx.x < 32) __syncthreads();  // BUG: the other warps never reach it
  y[threadIdx.x] = 1.f;
}
extern "C" __global__ void barrier_sites(float* y) {
  if (threadIdx.x < 32) { __syncthreads(); } else { __syncthreads(); }  // BUG: two different barriers
  y[threadIdx.x] = 1.f;
}
extern "C" __global__ void exit_then_barrier(const int* n, float* y) {
  if ((int)threadIdx.x >= *n) return;
  __syncthreads();  // UB on a GPU when some threads exited
  y[threadIdx.x] = 1.f;
}
extern "C" __global__ void partial_warp_full_mask(float* y) {
  y[threadIdx.x] = __shfl_down_sync(0xffffffffu, (float)threadIdx.x, 1);  // BUG with 48 threads
}
extern "C" __global__ void lane_not_in_mask(float* y) {
  y[threadIdx.x] = __shfl_xor_sync(0x0000ffffu, (float)threadIdx.x, 1);  // lanes 16..31 call with a mask without them
}
extern "C" __global__ void trap_on_negative(const int* x) {
  if (x[threadIdx.x] < 0) __trap();
}
extern "C" __global__ void count_atomically(int* counter) {
  atomicAdd(counter, 1);
}
extern "C" __global__ void indices(int* out) {
  const int b = blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z);
  const int t = threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
  const int n = blockDim.x * blockDim.y * blockDim.z;
  out[b * n + t] = b * 1000 + t;
}
extern "C" __global__ void dyn_smem_reverse(const float* x, float* y, int n) {
  extern __shared__ __align__(16) unsigned char smem[];
  float* s = reinterpret_cast<float*>(smem);
  const int t = threadIdx.x;
  y[n + t] = s[t];  // before any write: poisoned (NaN), as GPU shared memory is garbage
  __syncthreads();
  s[t] = x[t];
  __syncthreads();
  y[t] = s[n - 1 - t];
}
extern "C" __global__ void half_bits_to_float(const __half* h, float* f, int n) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) f[i] = __half2float(h[i]);
}
extern "C" __global__ void float_to_half_and_bf16(const float* f, __half* h, __nv_bfloat16* b, int n) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) { h[i] = __float2half_rn(f[i]); b[i] = __float2bfloat16_rn(f[i]); }
}
extern "C" __global__ void takes_float(const float* x, float* y, float a, int n) {
  y[threadIdx.x] = a * x[threadIdx.x] + n;
}
'''


@pytest.fixture(scope="module")
def mod():
    return CpuRawModule(KERNELS, filename="shim_kernels.cu")


@pytest.fixture(autouse=True)
def _default_schedule(mod):
    mod.configure()
    yield
    mod.configure()


@pytest.mark.parametrize("w", [32, 16, 8])
def test_shuffle_and_vote_semantics(mod, w):
    """Expected values follow the CUDA Programming Guide's definitions of width-segmented shuffles."""
    out = np.zeros(7 * 32, np.int32)
    mod.get_function("shfl_all")((1,), (32,), (out, np.int32(w)))
    lane = np.arange(32)
    seg = lane - lane % w
    up = np.where(lane % w >= 2, lane - 2, lane)
    down = np.where(lane % w + 2 < w, lane + 2, lane)
    x = lane ^ 5
    xor = np.where(x < seg + w, x, lane)
    ballot = np.uint32(sum(1 << i for i in range(32) if i % 3 == 0)).view(np.int32)
    expected = np.concatenate([(seg + 3 % w) * 10, up * 10, down * 10, xor * 10, np.full(32, ballot),
                               np.ones(32), np.zeros(32)]).astype(np.int32)
    assert np.array_equal(out, expected)


def test_barrier_orders_shared_memory_under_every_schedule(mod):
    x = np.arange(64, dtype=np.float32)
    for schedule in ("forward", "reverse", "random"):
        mod.configure(schedule=schedule, seed=3)
        y = np.zeros(64, np.float32)
        mod.get_function("reverse_with_barrier")((1,), (64,), (x, y))
        assert np.array_equal(y, 2 * x[::-1])


def test_missing_barrier_shows_as_schedule_dependence(mod):
    """Without the barrier a thread may read a slot before its writer ran: which ones depends on the
    order, and unwritten shared memory reads as NaN (it is poisoned at the start of every block)."""
    x = np.arange(64, dtype=np.float32)
    results = {}
    for schedule in ("forward", "reverse"):
        mod.configure(schedule=schedule)
        y = np.zeros(64, np.float32)
        mod.get_function("missing_barrier")((2,), (64,), (x, y))
        results[schedule] = y
    assert np.isnan(results["forward"][:32]).all() and np.array_equal(results["forward"][32:], 2 * x[31::-1])
    assert np.isnan(results["reverse"][32:]).all() and np.array_equal(results["reverse"][:32], 2 * x[:31:-1])


def test_static_shared_memory_is_poisoned_at_every_block(mod):
    y = np.zeros(3 * 64, np.float32)
    mod.get_function("read_before_write")((3,), (64,), (y,))
    assert np.isnan(y).all()


@pytest.mark.parametrize("name,threads,pattern", [
    ("divergent_shuffle", 64, "names lane 16, which has exited|can never complete"),
    ("divergent_barrier", 64, "other threads of the block have exited|different call sites"),
    ("barrier_sites", 64, r"different call sites .*\n.*shim_kernels.cu:\d+"),
    ("partial_warp_full_mask", 48, "names lane 16, which does not exist"),
    ("lane_not_in_mask", 32, "calling lane 16 is not in its mask 0x0000ffff"),
])
def test_rule_violations_raise_instead_of_hanging(mod, name, threads, pattern):
    y = np.zeros(threads, np.float32)
    with pytest.raises(CpuKernelError, match=pattern):
        mod.get_function(name)((1,), (threads,), (y,))


def test_barrier_after_exit_is_an_error_in_strict_mode_only(mod):
    y = np.zeros(64, np.float32)
    n = np.array([40], np.int32)
    with pytest.raises(CpuKernelError, match="other threads of the block have exited"):
        mod.get_function("exit_then_barrier")((1,), (64,), (n, y))
    mod.configure(strict=False)
    mod.get_function("exit_then_barrier")((1,), (64,), (n, y))
    assert (y[:40] == 1).all() and (y[40:] == 0).all()


def test_trap_names_block_thread_and_line(mod):
    mod.get_function("trap_on_negative")((2,), (32,), (np.zeros(32, np.int32),))  # no trap
    x = np.zeros(32, np.int32)
    x[5] = -1
    with pytest.raises(CpuKernelError, match=r"block \(0,0,0\): __trap\(\) at shim_kernels.cu:\d+, thread \(5,0,0\)"):
        mod.get_function("trap_on_negative")((2,), (32,), (x,))


def test_atomics_across_worker_threads(mod):
    mod.configure(workers=2)
    counter = np.zeros(1, np.int32)
    mod.get_function("count_atomically")((500,), (64,), (counter,))
    assert counter[0] == 500 * 64


def test_built_in_indices_in_three_dimensions(mod):
    grid, block = (3, 2, 2), (4, 2, 3)
    out = np.full(12 * 24, -1, np.int32)
    mod.get_function("indices")(grid, block, (out,))
    b, t = np.divmod(np.arange(12 * 24), 24)
    assert np.array_equal(out, b * 1000 + t)


def test_dynamic_shared_memory_is_poisoned_and_per_block(mod):
    n = 64
    x = np.arange(n, dtype=np.float32)
    y = np.zeros(2 * n, np.float32)
    mod.get_function("dyn_smem_reverse")((1,), (n,), (x, y, np.int32(n)), shared_mem=n * 4)
    assert np.array_equal(y[:n], x[::-1])
    assert np.isnan(y[n:]).all()


def test_argument_checks(mod):
    x, y = np.ones(32, np.float32), np.zeros(32, np.float32)
    k = mod.get_function("takes_float")
    with pytest.raises(TypeError, match="argument 2: pass a NumPy scalar"):
        k((1,), (32,), (x, y, 0.5, np.int32(1)))  # CuPy would pass a Python float as a double
    with pytest.raises(TypeError, match="argument 3: kernel parameter has 4 bytes, got int64"):
        k((1,), (32,), (x, y, np.float32(0.5), np.int64(1)))
    with pytest.raises(TypeError, match="argument 0: kernel expects 4-byte elements, array dtype is float16"):
        k((1,), (32,), (x.astype(np.float16), y, np.float32(0.5), np.int32(1)))
    with pytest.raises(ValueError, match="argument 1: array is not C-contiguous"):
        k((1,), (32,), (x, np.zeros(64, np.float32)[::2], np.float32(0.5), np.int32(1)))
    with pytest.raises(ValueError, match="argument 0: array address is not 4-byte aligned"):
        k((1,), (32,), (np.zeros(33 * 4 + 1, np.uint8)[1:129].view(np.float32), y, np.float32(0.5), np.int32(1)))
    with pytest.raises(TypeError, match="expected 4 arguments, got 3"):
        k((1,), (32,), (x, y, np.float32(0.5)))
    with pytest.raises(CpuKernelError, match="no extern \"C\" __global__ kernel named 'nope'"):
        mod.get_function("nope")
    k((1,), (32,), (x, y, np.float32(0.5), np.int32(2)))
    assert (y == 2.5).all()


def test_launch_limits(mod):
    y = np.zeros(2048, np.float32)
    with pytest.raises(CpuKernelError, match="invalid block dimensions"):
        mod.get_function("partial_warp_full_mask")((1,), (2048,), (y,))
    with pytest.raises(CpuKernelError, match="invalid grid dimensions"):
        mod.get_function("partial_warp_full_mask")((0,), (32,), (y,))
    with pytest.raises(CpuKernelError, match="exceeds the 49152-byte limit"):
        mod.get_function("dyn_smem_reverse")((1,), (32,), (y, y, np.int32(32)), shared_mem=64 * 1024)


def test_half_conversion_is_exact_for_every_bit_pattern(mod):
    bits = np.arange(65536, dtype=np.uint16)
    f = np.zeros(65536, np.float32)
    mod.get_function("half_bits_to_float")((256,), (256,), (bits.view(np.float16), f, np.int32(65536)))
    ref = bits.view(np.float16).astype(np.float32)
    assert np.array_equal(f.view(np.uint32)[~np.isnan(ref)], ref.view(np.uint32)[~np.isnan(ref)])
    assert np.isnan(f[np.isnan(ref)]).all()


def test_float_to_half_and_bf16_round_to_nearest_even(mod):
    rng = np.random.default_rng(0)
    f = np.concatenate([rng.standard_normal(5000) * 10.0 ** rng.integers(-8, 6, 5000),
                        [0.0, -0.0, 65504.0, 65520.0, 1e-8, np.inf, -np.inf, 1 + 2**-11, 1 + 3 * 2**-11]])
    f = f.astype(np.float32)
    h = np.zeros(len(f), np.float16)
    b = np.zeros(len(f), np.uint16)
    mod.get_function("float_to_half_and_bf16")((-(-len(f) // 128),), (128,), (f, h, b, np.int32(len(f))))
    with np.errstate(over="ignore"):  # 65520 rounds to inf, as on the GPU
        assert np.array_equal(h.view(np.uint16), f.astype(np.float16).view(np.uint16))
    assert np.array_equal(b, storage_type("bfloat16").encode(f))


SIZED = r'''
template <int N> __device__ void fill(float* y) {
  __shared__ float s[N];
  for (int i = threadIdx.x; i < N; i += blockDim.x) s[i] = (float)(N + i);
  __syncthreads();
  for (int i = threadIdx.x; i < N; i += blockDim.x) y[i] = s[N - 1 - i];
}
extern "C" __global__ void sized(float* y) { fill<SIZE>(y); }
'''


def test_modules_do_not_share_template_shared_memory():
    """Two builds of one template (different -D) loaded together keep separate __shared__ arrays."""
    small = CpuRawModule(SIZED, ("-DSIZE=64",), filename="sized.cu")
    big = CpuRawModule(SIZED, ("-DSIZE=4096",), filename="sized.cu")
    for m, n in ((small, 64), (big, 4096), (small, 64)):
        y = np.zeros(n, np.float32)
        m.get_function("sized")((2,), (128,), (y,))
        assert np.array_equal(y, (n + np.arange(n)[::-1]).astype(np.float32))


def test_build_errors_are_reported():
    with pytest.raises(CpuKernelError, match="g\\+\\+ failed"):
        CpuRawModule('extern "C" __global__ void broken(float* y) { y[0] = undefined_name; }', filename="broken.cu")
    with pytest.raises(CpuKernelError, match="no extern \"C\" __global__ kernels"):
        CpuRawModule("__device__ int f() { return 1; }", filename="empty.cu")
