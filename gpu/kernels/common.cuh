// common.cuh -- storage types, 16-byte vector loads and warp reductions shared by pagesim's kernels.
//
// The same text compiles with NVRTC (CuPy RawModule), nvcc, and g++ through the CPU shim, so it uses
// only what all three provide: no <cmath> names (NVRTC has no INFINITY), no host headers.
#pragma once
#include <cuda_fp16.h>
#include <cuda_bf16.h>

#define PAGESIM_FULL_MASK 0xffffffffu
// -inf from its bit pattern: NVRTC has no math.h, so INFINITY is undefined there
#define PAGESIM_NEG_INF __int_as_float(0xff800000)

namespace pagesim {

__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename T> __device__ __forceinline__ T from_float(float x);
template <> __device__ __forceinline__ float from_float<float>(float x) { return x; }
template <> __device__ __forceinline__ __half from_float<__half>(float x) { return __float2half_rn(x); }
template <> __device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float x) {
  return __float2bfloat16_rn(x);
}

// Elements of T in one 16-byte vector (the widest single load a thread can issue).
template <typename T> struct Vec16 {
  static constexpr int kElems = 16 / static_cast<int>(sizeof(T));
};

// Load 16 bytes (16-byte aligned) and widen to float. Hook for quantised KV storage (fp8 / int8,
// issue #8): add an overload for the storage type; the caller multiplies by the per-tensor scale.
__device__ __forceinline__ void load_vec16(const float* p, float (&o)[4]) {
  const float4 v = *reinterpret_cast<const float4*>(p);
  o[0] = v.x;
  o[1] = v.y;
  o[2] = v.z;
  o[3] = v.w;
}
__device__ __forceinline__ void load_vec16(const __half* p, float (&o)[8]) {
  const uint4 v = *reinterpret_cast<const uint4*>(p);
  const __half2* h = reinterpret_cast<const __half2*>(&v);
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const float2 f = __half22float2(h[i]);
    o[2 * i] = f.x;
    o[2 * i + 1] = f.y;
  }
}
__device__ __forceinline__ void load_vec16(const __nv_bfloat16* p, float (&o)[8]) {
  const uint4 v = *reinterpret_cast<const uint4*>(p);
  const __nv_bfloat162* h = reinterpret_cast<const __nv_bfloat162*>(&v);
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const float2 f = __bfloat1622float2(h[i]);
    o[2 * i] = f.x;
    o[2 * i + 1] = f.y;
  }
}

// Butterfly reductions over the lanes whose index differs only in bits [lo, hi) of the lane id:
// xor_reduce_sum<1, 4> sums over groups of 4 consecutive lanes; <1, 32> over the whole warp.
template <int LO, int HI> __device__ __forceinline__ float xor_reduce_sum(float v) {
#pragma unroll
  for (int o = LO; o < HI; o <<= 1) v += __shfl_xor_sync(PAGESIM_FULL_MASK, v, o);
  return v;
}
template <int LO, int HI> __device__ __forceinline__ float xor_reduce_max(float v) {
#pragma unroll
  for (int o = LO; o < HI; o <<= 1) v = fmaxf(v, __shfl_xor_sync(PAGESIM_FULL_MASK, v, o));
  return v;
}

}  // namespace pagesim
