// cuda_cpu_types.h -- CUDA C keywords, built-in variables, vector types, half / bfloat16 and the
// math, bit and atomic intrinsics, for compiling kernel source with g++ (part of pagesim's CPU shim).
//
// Everything here is plain C++20 with no runtime state except the built-in index variables, which
// live in thread-local storage set by the scheduler in cuda_cpu.h. Fast-math intrinsics (__expf,
// __fdividef, ...) are exact on the CPU: test tolerances must cover the GPU's approximation error.
#pragma once
#define CUDA_CPU_SHIM 1

#include <atomic>
#include <bit>
#include <cfloat>
#include <climits>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>

// ---------------------------------------------------------------------------------------------
// keywords
// ---------------------------------------------------------------------------------------------
#ifdef CUDA_CPU_SCAN  // preprocess-only pass that cpu_backend.py uses to find the kernels
#define __global__ __cuda_cpu_global__
#else
#define __global__
#endif
#define __device__
#define __host__
#define __forceinline__ inline __attribute__((always_inline))
#define __noinline__ __attribute__((noinline))
// A block's fibers all run on one OS thread, so block-scope thread_local (implicitly static) is
// exactly "one copy per block in flight". Stale values from the previous block on the same worker
// survive (the GPU gives garbage): kernels must initialise static shared memory themselves.
#define __shared__ thread_local
#define __constant__
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))
#define __grid_constant__

// ---------------------------------------------------------------------------------------------
// built-in variables (set per fiber by the scheduler)
// ---------------------------------------------------------------------------------------------
struct uint3 { unsigned int x, y, z; };
struct dim3 {
  unsigned int x, y, z;
  constexpr dim3(unsigned int x_ = 1, unsigned int y_ = 1, unsigned int z_ = 1) : x(x_), y(y_), z(z_) {}
};
// static: one translation unit per module, so the cheap local-dynamic TLS model applies
static thread_local uint3 threadIdx, blockIdx;
static thread_local dim3 blockDim, gridDim;
constexpr int warpSize = 32;

// ---------------------------------------------------------------------------------------------
// vector types, with the alignment of CUDA's vector_types.h (16-byte loads depend on it)
// ---------------------------------------------------------------------------------------------
struct __align__(8) float2 { float x, y; };
struct __align__(16) float4 { float x, y, z, w; };
struct __align__(8) int2 { int x, y; };
struct __align__(16) int4 { int x, y, z, w; };
struct __align__(8) uint2 { unsigned int x, y; };
struct __align__(16) uint4 { unsigned int x, y, z, w; };
inline float2 make_float2(float x, float y) { return {x, y}; }
inline float4 make_float4(float x, float y, float z, float w) { return {x, y, z, w}; }
inline int2 make_int2(int x, int y) { return {x, y}; }
inline uint2 make_uint2(unsigned x, unsigned y) { return {x, y}; }
inline uint4 make_uint4(unsigned x, unsigned y, unsigned z, unsigned w) { return {x, y, z, w}; }

// ---------------------------------------------------------------------------------------------
// __half / __nv_bfloat16: 2-byte structs, bit-compatible with numpy float16 and with bfloat16 bit
// patterns carried in uint16. Conversions from float round to nearest even, as the _rn intrinsics.
// ---------------------------------------------------------------------------------------------
struct __align__(2) __half {
  unsigned short __x;
  __half() = default;
  __half(float f) {  // _Float16 conversion is IEEE round-to-nearest-even, subnormals included
    _Float16 h = static_cast<_Float16>(f);
    std::memcpy(&__x, &h, 2);
  }
  operator float() const {  // exact; written out because libgcc's __extendhfsf2 call is slow
    const uint32_t s = static_cast<uint32_t>(__x & 0x8000u) << 16;
    const uint32_t e = (__x >> 10) & 0x1fu, m = __x & 0x3ffu;
    if (e == 0x1f) return std::bit_cast<float>(s | 0x7f800000u | (m << 13));  // inf / nan
    if (e != 0) return std::bit_cast<float>(s | ((e + 112u) << 23) | (m << 13));
    const float f = static_cast<float>(m) * 0x1p-24f;  // zero / subnormal
    return s ? -f : f;
  }
};
struct __align__(2) __nv_bfloat16 {
  unsigned short __x;
  __nv_bfloat16() = default;
  __nv_bfloat16(float f) {
    uint32_t u = std::bit_cast<uint32_t>(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) {  // NaN stays a (quiet) NaN
      __x = static_cast<unsigned short>((u >> 16) | 0x40u);
      return;
    }
    u += 0x7fffu + ((u >> 16) & 1u);  // round to nearest even
    __x = static_cast<unsigned short>(u >> 16);
  }
  operator float() const { return std::bit_cast<float>(static_cast<uint32_t>(__x) << 16); }
};
struct __align__(4) __half2 { __half x, y; };
struct __half_raw { unsigned short x; };  // bit patterns, as cuda_fp16.h declares them
struct __half2_raw { unsigned short x, y; };
struct __align__(4) __nv_bfloat162 { __nv_bfloat16 x, y; };
typedef __half half;
typedef __half2 half2;
typedef __nv_bfloat16 nv_bfloat16;
typedef __nv_bfloat162 nv_bfloat162;

inline float __half2float(__half h) { return static_cast<float>(h); }
inline __half __float2half(float f) { return __half(f); }
inline __half __float2half_rn(float f) { return __half(f); }
inline float2 __half22float2(__half2 h) { return {static_cast<float>(h.x), static_cast<float>(h.y)}; }
inline __half2 __floats2half2_rn(float a, float b) { return {__half(a), __half(b)}; }
inline __half2 __float22half2_rn(float2 f) { return {__half(f.x), __half(f.y)}; }
inline float __low2float(__half2 h) { return static_cast<float>(h.x); }
inline float __high2float(__half2 h) { return static_cast<float>(h.y); }
inline float __bfloat162float(__nv_bfloat16 h) { return static_cast<float>(h); }
inline __nv_bfloat16 __float2bfloat16(float f) { return __nv_bfloat16(f); }
inline __nv_bfloat16 __float2bfloat16_rn(float f) { return __nv_bfloat16(f); }
inline float2 __bfloat1622float2(__nv_bfloat162 h) { return {static_cast<float>(h.x), static_cast<float>(h.y)}; }
inline __nv_bfloat162 __floats2bfloat162_rn(float a, float b) { return {__nv_bfloat16(a), __nv_bfloat16(b)}; }
inline __nv_bfloat162 __float22bfloat162_rn(float2 f) { return {__nv_bfloat16(f.x), __nv_bfloat16(f.y)}; }

// ---------------------------------------------------------------------------------------------
// math and bit intrinsics
// ---------------------------------------------------------------------------------------------
inline float __expf(float x) { return expf(x); }
inline float __logf(float x) { return logf(x); }
inline float __powf(float a, float b) { return powf(a, b); }
inline float __fdividef(float a, float b) { return a / b; }
inline float __frcp_rn(float x) { return 1.0f / x; }
inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
inline float __saturatef(float x) { return fminf(fmaxf(x, 0.f), 1.f); }
inline float __fmaf_rn(float a, float b, float c) { return fmaf(a, b, c); }
inline float __int_as_float(int i) { return std::bit_cast<float>(i); }
inline int __float_as_int(float f) { return std::bit_cast<int>(f); }
inline float __uint_as_float(unsigned u) { return std::bit_cast<float>(u); }
inline unsigned __float_as_uint(float f) { return std::bit_cast<unsigned>(f); }
template <class A, class B> inline auto min(A a, B b) -> std::common_type_t<A, B> { return b < a ? b : a; }
template <class A, class B> inline auto max(A a, B b) -> std::common_type_t<A, B> { return a < b ? b : a; }
template <class T> inline T __ldg(const T* p) { return *p; }
// Ties to even; out-of-range values clamp and NaN gives 0, as PTX cvt.rni.s32.f32 does.
inline int __float2int_rn(float x) {
  if (std::isnan(x)) return 0;
  const float r = std::nearbyint(x);
  return r >= 2147483648.f ? INT_MAX : r < -2147483648.f ? INT_MIN : static_cast<int>(r);
}
// Byte i of the result is byte s[4i..4i+3] of the 8-byte value (y:x) (CUDA's default mode).
inline unsigned __byte_perm(unsigned x, unsigned y, unsigned s) {
  const uint64_t v = (static_cast<uint64_t>(y) << 32) | x;
  unsigned r = 0;
  for (int i = 0; i < 4; ++i) r |= static_cast<unsigned>((v >> (8 * ((s >> (4 * i)) & 7u))) & 0xffu) << (8 * i);
  return r;
}
inline int __popc(unsigned x) { return std::popcount(x); }
inline int __popcll(unsigned long long x) { return std::popcount(x); }
inline int __ffs(int x) { return x ? std::countr_zero(static_cast<unsigned>(x)) + 1 : 0; }
inline int __clz(int x) { return std::countl_zero(static_cast<unsigned>(x)); }
inline unsigned __brev(unsigned x) {
  unsigned r = 0;
  for (int i = 0; i < 32; ++i) r |= ((x >> i) & 1u) << (31 - i);
  return r;
}
inline long long clock64() { return static_cast<long long>(__builtin_ia32_rdtsc()); }
inline void __threadfence() { std::atomic_thread_fence(std::memory_order_seq_cst); }
inline void __threadfence_block() { std::atomic_thread_fence(std::memory_order_seq_cst); }

// ---------------------------------------------------------------------------------------------
// atomics: blocks run concurrently on several OS threads, so these must be real atomics
// ---------------------------------------------------------------------------------------------
template <class T> inline T atomicAdd(T* p, T v) { return std::atomic_ref<T>(*p).fetch_add(v); }
template <class T> inline T atomicSub(T* p, T v) { return std::atomic_ref<T>(*p).fetch_sub(v); }
template <class T> inline T atomicExch(T* p, T v) { return std::atomic_ref<T>(*p).exchange(v); }
template <class T> inline T atomicCAS(T* p, T expected, T v) {
  std::atomic_ref<T>(*p).compare_exchange_strong(expected, v);
  return expected;  // the old value, as CUDA's atomicCAS returns
}
template <class T> inline T atomicMax(T* p, T v) {
  std::atomic_ref<T> r(*p);
  T old = r.load();
  while (old < v && !r.compare_exchange_weak(old, v)) {
  }
  return old;
}
template <class T> inline T atomicMin(T* p, T v) {
  std::atomic_ref<T> r(*p);
  T old = r.load();
  while (v < old && !r.compare_exchange_weak(old, v)) {
  }
  return old;
}
