// cuda_cpu_fp8.h -- the fp8 part of CUDA's cuda_fp8.h for the CPU shim: storage typedefs, the
// E4M3 / E5M2 conversions pagesim's kernels call and the __nv_fp8_e4m3 type, bit-compatible with
// NVIDIA's (one byte, the same codes). Float -> fp8 rounds to nearest even; __NV_SATFINITE clamps
// out-of-range values (and infinities) to the largest finite code, __NV_NOSAT gives NaN (E4M3) or
// Inf (E5M2); NaN becomes the canonical 0x7F. fp8 -> half is exact; NaN becomes 0x7FFF.
// tests/test_gpu_quant.py checks all 256 codes and sweeps of floats against NumPy (and against
// NVIDIA's own header, compiled for the host, where a CUDA toolkit is installed).
#pragma once
#include "cuda_cpu_types.h"

typedef unsigned char __nv_fp8_storage_t;
typedef unsigned short __nv_fp8x2_storage_t;
typedef unsigned int __nv_fp8x4_storage_t;
enum __nv_saturation_t { __NV_NOSAT, __NV_SATFINITE };
enum __nv_fp8_interpretation_t { __NV_E4M3, __NV_E5M2 };

namespace cuda_cpu {
struct Fp8Format {
  int man_bits, bias;
  unsigned char max_code;  // largest finite magnitude code
  float overflow;          // |x| above this (E4M3) or at/above it (E5M2) is out of range
};
inline Fp8Format fp8_format(__nv_fp8_interpretation_t f) {
  // E4M3: max 448 (0x7E), 0x7F is NaN, no Inf; values up to 448 + half an ulp (464) round to 448.
  // E5M2: max 57344 (0x7B), 0x7C Inf; the midpoint 61440 ties to even, i.e. to Inf.
  return f == __NV_E4M3 ? Fp8Format{3, 7, 0x7e, 464.f} : Fp8Format{2, 15, 0x7b, 61440.f};
}
}  // namespace cuda_cpu

inline __nv_fp8_storage_t __nv_cvt_float_to_fp8(float x, __nv_saturation_t sat, __nv_fp8_interpretation_t interp) {
  const cuda_cpu::Fp8Format f = cuda_cpu::fp8_format(interp);
  const uint32_t u = std::bit_cast<uint32_t>(x);
  const unsigned char sign = static_cast<unsigned char>((u >> 24) & 0x80u);
  const float a = std::fabs(x);
  if (std::isnan(x)) return 0x7f;
  const bool over = interp == __NV_E4M3 ? a > f.overflow : a >= f.overflow;
  if (over) {
    if (sat == __NV_SATFINITE) return sign | f.max_code;
    return sign | (interp == __NV_E4M3 ? 0x7f : 0x7c);
  }
  const float min_normal = std::ldexp(1.f, 1 - f.bias);
  unsigned code;
  if (a >= min_normal) {  // normal in fp8 (so a normal float): round the 23-bit mantissa to man_bits
    const int shift = 23 - f.man_bits;
    const uint32_t m = u & 0x7fffffu;
    const uint32_t e = ((u >> 23) & 0xffu) - 127u + static_cast<uint32_t>(f.bias);
    const uint32_t half = 1u << (shift - 1), rest = m & ((1u << shift) - 1u);
    uint32_t q = (e << f.man_bits) | (m >> shift);
    if (rest > half || (rest == half && (q & 1u))) ++q;  // a carry into the exponent is correct
    code = q;
  } else {  // subnormal grid: multiples of 2^(1 - bias - man_bits); the scaling is exact
    code = static_cast<unsigned>(std::nearbyint(std::ldexp(a, f.bias - 1 + f.man_bits)));  // ties to even
  }
  return static_cast<__nv_fp8_storage_t>(sign | code);
}

inline __half_raw __nv_cvt_fp8_to_halfraw(__nv_fp8_storage_t x, __nv_fp8_interpretation_t interp) {
  __half_raw r;
  if (interp == __NV_E5M2) {  // E5M2 is the top byte of an fp16
    r.x = static_cast<unsigned short>(x << 8);
    if ((r.x & 0x7fffu) > 0x7c00u) r.x = 0x7fff;
    return r;
  }
  const unsigned mag = x & 0x7fu;
  if (mag == 0x7fu) {
    r.x = 0x7fff;
    return r;
  }
  const unsigned e = mag >> 3, m = mag & 7u;
  const float v = e ? std::ldexp(static_cast<float>(8 + m), static_cast<int>(e) - 10)
                    : std::ldexp(static_cast<float>(m), -9);  // exact in fp16 (normal there)
  r.x = __half(x & 0x80u ? -v : v).__x;
  return r;
}

inline __half2_raw __nv_cvt_fp8x2_to_halfraw2(__nv_fp8x2_storage_t x, __nv_fp8_interpretation_t interp) {
  __half2_raw r;
  r.x = __nv_cvt_fp8_to_halfraw(static_cast<__nv_fp8_storage_t>(x & 0xffu), interp).x;
  r.y = __nv_cvt_fp8_to_halfraw(static_cast<__nv_fp8_storage_t>(x >> 8), interp).x;
  return r;
}

// One E4M3 value; construction from float saturates to +-448 (as NVIDIA's constructor does).
struct __nv_fp8_e4m3 {
  __nv_fp8_storage_t __x;
  __nv_fp8_e4m3() = default;
  explicit __nv_fp8_e4m3(float f) : __x(__nv_cvt_float_to_fp8(f, __NV_SATFINITE, __NV_E4M3)) {}
  explicit operator float() const {
    __half h;
    h.__x = __nv_cvt_fp8_to_halfraw(__x, __NV_E4M3).x;
    return static_cast<float>(h);
  }
};
static_assert(sizeof(__nv_fp8_e4m3) == 1 && alignof(__nv_fp8_e4m3) == 1, "__nv_fp8_e4m3 must be one byte");
