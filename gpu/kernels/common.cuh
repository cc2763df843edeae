// common.cuh -- storage types, 16-byte vector loads and warp reductions shared by pagesim's kernels.
// Quantised KV storage (fp8 e4m3, int8): 1-byte codes whose value is code * scale; loads widen the
// codes to float in registers, the caller applies the fp32 scale (see KVQuant and quantize_code).
//
// The same text compiles with NVRTC (CuPy RawModule), nvcc, and g++ through the CPU shim, so it uses
// only what all three provide: no <cmath> names (NVRTC has no INFINITY), no host headers.
#pragma once
#include <cuda_fp16.h>
#include <cuda_bf16.h>
#include <cuda_fp8.h>

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

// Quantised KV storage types: __nv_fp8_e4m3 (E4M3, |code| <= 448) and signed char (int8, [-127, 127];
// -128 is never written). A float storage type is its own "code" with no scale.
template <typename C> struct KVQuant {
  static constexpr bool kQuantized = false;
};
template <> struct KVQuant<__nv_fp8_e4m3> {
  static constexpr bool kQuantized = true;
  static constexpr float kMax = 448.f;
};
template <> struct KVQuant<signed char> {
  static constexpr bool kQuantized = true;
  static constexpr float kMax = 127.f;
};

// y = x / scale -> code. fp8: round to nearest even, saturate to +-448 (__NV_SATFINITE); int8: clamp
// to [-127, 127] (NaN -> -127, as fmaxf drops NaN), then round to nearest even.
template <typename C> __device__ __forceinline__ unsigned char quantize_code(float y);
template <> __device__ __forceinline__ unsigned char quantize_code<__nv_fp8_e4m3>(float y) {
  return __nv_cvt_float_to_fp8(y, __NV_SATFINITE, __NV_E4M3);
}
template <> __device__ __forceinline__ unsigned char quantize_code<signed char>(float y) {
  return static_cast<unsigned char>(__float2int_rn(fminf(fmaxf(y, -127.f), 127.f)));
}

// Load 16 bytes (16-byte aligned) and widen to float. For quantised storage the values are the raw
// codes: the caller multiplies by the scale.
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

// Two E4M3 codes (bits 0-7 and 16-23 of `pair`) -> float2, exactly.
__device__ __forceinline__ float2 fp8x2_to_float2(unsigned pair) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 890
  // one cvt.rn.f16x2.e4m3x2 (the hardware conversion of sm_89+)
  const __half2_raw r = __nv_cvt_fp8x2_to_halfraw2(static_cast<__nv_fp8x2_storage_t>((pair & 0xffu) | (pair >> 8)),
                                                   __NV_E4M3);
  return __half22float2(*reinterpret_cast<const __half2*>(&r));
#else
  // Elsewhere (sm_80, the CPU shim) cuda_fp8.h's software path costs a loop per value and ~4x the
  // compile time. E4M3 is fp16 with a 4-bit exponent: the code's 7 magnitude bits moved to fp16 bits
  // 13..7 and its sign to bit 15 read as the value / 2^8, subnormals included, exactly. Only the NaN
  // code 0x7F needs a fix (it would read 480).
  const unsigned h = ((pair & 0x00800080u) << 8) | ((pair & 0x007f007fu) << 7);
  const float2 f = __half22float2(*reinterpret_cast<const __half2*>(&h));
  const float nan = __int_as_float(0x7fffffff);
  return make_float2((pair & 0x7fu) == 0x7fu ? nan : f.x * 256.f, ((pair >> 16) & 0x7fu) == 0x7fu ? nan : f.y * 256.f);
#endif
}
__device__ __forceinline__ void load_vec16(const __nv_fp8_e4m3* p, float (&o)[16]) {
  const uint4 v = *reinterpret_cast<const uint4*>(p);
  const unsigned* w = reinterpret_cast<const unsigned*>(&v);
#pragma unroll
  for (int i = 0; i < 8; ++i) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 890
    // direct: each 16-bit half of a word is one cvt.rn.f16x2.e4m3x2 operand (no byte re-packing)
    const __half2_raw r = __nv_cvt_fp8x2_to_halfraw2(
        static_cast<__nv_fp8x2_storage_t>(i % 2 ? w[i / 2] >> 16 : w[i / 2] & 0xffffu), __NV_E4M3);
    const float2 f = __half22float2(*reinterpret_cast<const __half2*>(&r));
#else
    const float2 f = fp8x2_to_float2(__byte_perm(w[i / 2], 0u, i % 2 ? 0x4342u : 0x4140u));
#endif
    o[2 * i] = f.x;
    o[2 * i + 1] = f.y;
  }
}
__device__ __forceinline__ void load_vec16(const signed char* p, float (&o)[16]) {
  const uint4 v = *reinterpret_cast<const uint4*>(p);
  const unsigned* w = reinterpret_cast<const unsigned*>(&v);
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    // No int -> float conversion instruction: byte b ^ 0x80 = b + 128 placed in the low mantissa
    // bits of 2^23 (0x4B000000) is the float 2^23 + b + 128 exactly; one PRMT and one FADD each.
    const unsigned u = w[i] ^ 0x80808080u;
#pragma unroll
    for (int j = 0; j < 4; ++j) o[4 * i + j] = __uint_as_float(__byte_perm(u, 0x4b000000u, 0x7440u | j)) - 8388736.f;
  }
}

// Asynchronous global -> shared copies (cp.async, sm_80+): the copy runs while the thread goes on;
// cp_async_commit() closes a group and cp_async_wait<N>() waits until at most N groups are pending
// (then a __syncthreads() makes the copies of every thread visible). Elsewhere (the CPU shim, older
// GPUs) each copy is a plain load + store at issue time and the waits are no-ops: the same ordering
// rules hold (a stage is read only after the barrier that follows its wait), and a missing barrier
// still shows as schedule dependence in the shim.
__device__ __forceinline__ void cp_async16(void* smem, const void* gmem) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(static_cast<unsigned>(__cvta_generic_to_shared(smem))),
               "l"(gmem)
               : "memory");
#else
  *static_cast<uint4*>(smem) = *static_cast<const uint4*>(gmem);
#endif
}
__device__ __forceinline__ void cp_async4(void* smem, const void* gmem) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4;\n" ::"r"(static_cast<unsigned>(__cvta_generic_to_shared(smem))),
               "l"(gmem)
               : "memory");
#else
  *static_cast<float*>(smem) = *static_cast<const float*>(gmem);
#endif
}
__device__ __forceinline__ void cp_async_commit() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.commit_group;\n" ::: "memory");
#endif
}
template <int N> __device__ __forceinline__ void cp_async_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
#endif
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
