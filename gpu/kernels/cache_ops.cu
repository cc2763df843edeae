// cache_ops.cu -- writing into the paged KV cache: scatter new K/V rows through a slot mapping
// (reshape_and_cache, quantising for fp8 / int8 storage), copy whole blocks for copy-on-write
// (copy_blocks) and move blocks to and from a contiguous staging buffer for swapping (gather_blocks,
// scatter_blocks).
//
// Pool layout (see paged_attention.cu): K and V are each [num_blocks, num_kv_heads, block_size,
// head_dim]; slot = physical_block * block_size + offset. Everything is moved in 16-byte vectors,
// so head_dim * sizeof(T) must be a multiple of 16 and all buffers 16-byte aligned (the Python
// side checks both). Shapes are runtime arguments: one compiled module serves every configuration.
#include "common.cuh"

namespace pagesim {

// Grid (num_tokens), any block size. key/value [num_tokens, num_kv_heads, head_dim]; a negative
// slot marks a padding token, which writes nothing.
template <typename T>
__device__ __forceinline__ void reshape_and_cache(T* __restrict__ k_cache, T* __restrict__ v_cache,
                                                  const T* __restrict__ key, const T* __restrict__ value,
                                                  const long long* __restrict__ slot_mapping, int num_kv_heads,
                                                  int head_dim, int block_size) {
  constexpr int VEC = Vec16<T>::kElems;
  const long long token = blockIdx.x;
  const long long slot = slot_mapping[token];
  if (slot < 0) return;
  const long long block = slot / block_size;
  const int offset = static_cast<int>(slot % block_size);
  const int row_vecs = head_dim / VEC;
  for (int i = threadIdx.x; i < num_kv_heads * row_vecs; i += blockDim.x) {
    const int h = i / row_vecs, d = (i % row_vecs) * VEC;
    const long long src = (token * num_kv_heads + h) * head_dim + d;
    const long long dst = ((block * num_kv_heads + h) * block_size + offset) * head_dim + d;
    *reinterpret_cast<uint4*>(k_cache + dst) = *reinterpret_cast<const uint4*>(key + src);
    *reinterpret_cast<uint4*>(v_cache + dst) = *reinterpret_cast<const uint4*>(value + src);
  }
}

// 8 elements of T at p (16-byte aligned for fp16 / bf16, 32-byte for fp32) widened to float.
template <typename T> __device__ __forceinline__ void load8(const T* p, float (&o)[8]) {
  constexpr int V = Vec16<T>::kElems;
#pragma unroll
  for (int i = 0; i < 8 / V; ++i) {
    float t[V];
    load_vec16(p + i * V, t);
#pragma unroll
    for (int e = 0; e < V; ++e) o[i * V + e] = t[e];
  }
}

// One row of head_dim values -> codes, by one warp (each lane 8 values per 256). The row's scale is
// *scale_ptr, or with `dynamic` (warp-uniform) max(absmax / kMax, FLT_MIN), stored there: FLT_MIN
// keeps an all-zero row's scale finite and positive. Each value becomes quantize_code(x / scale)
// (an IEEE division, so the NumPy reference reproduces the codes bit for bit).
template <typename T, typename C>
__device__ __forceinline__ void quantize_row(unsigned char* __restrict__ dst, const T* __restrict__ src,
                                             float* __restrict__ scale_ptr, int head_dim, int lane, bool dynamic) {
  float scale;
  if (dynamic) {
    float amax = 0.f;
    for (int d = 8 * lane; d < head_dim; d += 256) {
      float x[8];
      load8(src + d, x);
#pragma unroll
      for (int e = 0; e < 8; ++e) amax = fmaxf(amax, fabsf(x[e]));
    }
    amax = xor_reduce_max<1, 32>(amax);
    scale = fmaxf(amax / KVQuant<C>::kMax, __int_as_float(0x00800000));  // FLT_MIN
    if (lane == 0) *scale_ptr = scale;
  } else {
    scale = *scale_ptr;
  }
  for (int d = 8 * lane; d < head_dim; d += 256) {
    float x[8];
    load8(src + d, x);
    unsigned w[2] = {0u, 0u};
#pragma unroll
    for (int e = 0; e < 8; ++e) w[e / 4] |= static_cast<unsigned>(quantize_code<C>(x[e] / scale)) << (8 * (e % 4));
    *reinterpret_cast<uint2*>(dst + d) = make_uint2(w[0], w[1]);
  }
}

// Quantising write: rows of T -> codes of C with fp32 scales, one warp per (token, kv head). Scale
// layouts and kinds as in paged_attention.cu (KVScales): 0 per_tensor, 1 per_kv_head and 2 per_block
// read the scale, which the caller fixed before the block's first write (values beyond it saturate);
// 3 per_head computes each row's scale from the row and stores it beside the slot.
template <typename T, typename C>
__device__ __forceinline__ void reshape_and_cache_quant(unsigned char* __restrict__ k_cache,
                                                        unsigned char* __restrict__ v_cache,
                                                        const T* __restrict__ key, const T* __restrict__ value,
                                                        const long long* __restrict__ slot_mapping,
                                                        float* __restrict__ k_scales, float* __restrict__ v_scales,
                                                        int num_kv_heads, int head_dim, int block_size,
                                                        int scale_kind) {
  const long long token = blockIdx.x;
  const long long slot = slot_mapping[token];
  if (slot < 0) return;
  const long long block = slot / block_size;
  const int offset = static_cast<int>(slot % block_size);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  for (int h = warp; h < num_kv_heads; h += blockDim.x / 32) {  // warp-uniform
    const long long src = (token * num_kv_heads + h) * head_dim;
    const long long dst = ((block * num_kv_heads + h) * block_size + offset) * head_dim;
    const long long s = scale_kind == 0   ? 0
                        : scale_kind == 1 ? h
                        : scale_kind == 2 ? block * num_kv_heads + h
                                          : (block * num_kv_heads + h) * block_size + offset;
    quantize_row<T, C>(k_cache + dst, key + src, k_scales + s, head_dim, lane, scale_kind == 3);
    quantize_row<T, C>(v_cache + dst, value + src, v_scales + s, head_dim, lane, scale_kind == 3);
  }
}

// dst[0, n) = src[0, n) by the threads of a block: 16-byte vectors when n is a multiple of 16 (and
// the pointers 16-byte aligned), else 4-byte words (n a multiple of 4).
__device__ __forceinline__ void copy_bytes(unsigned char* __restrict__ dst, const unsigned char* __restrict__ src,
                                           long long n) {
  if (n % 16 == 0) {
    for (long long i = threadIdx.x; i < n / 16; i += blockDim.x)
      reinterpret_cast<uint4*>(dst)[i] = reinterpret_cast<const uint4*>(src)[i];
  } else {
    for (long long i = threadIdx.x; i < n / 4; i += blockDim.x)
      reinterpret_cast<unsigned*>(dst)[i] = reinterpret_cast<const unsigned*>(src)[i];
  }
}

}  // namespace pagesim

#define PAGESIM_DEFINE_CACHE_KERNELS(T, SUF)                                                                      \
  extern "C" __global__ void reshape_and_cache_##SUF(T* __restrict__ k_cache, T* __restrict__ v_cache,           \
                                                     const T* __restrict__ key, const T* __restrict__ value,     \
                                                     const long long* __restrict__ slot_mapping, int num_kv_heads, \
                                                     int head_dim, int block_size) {                             \
    pagesim::reshape_and_cache<T>(k_cache, v_cache, key, value, slot_mapping, num_kv_heads, head_dim, block_size); \
  }

PAGESIM_DEFINE_CACHE_KERNELS(float, f32)
PAGESIM_DEFINE_CACHE_KERNELS(__half, f16)
PAGESIM_DEFINE_CACHE_KERNELS(__nv_bfloat16, bf16)

// reshape_and_cache_<in>_<kv>: rows in fp32 / fp16 / bf16, K/V stored as fp8 e4m3 or int8 codes.
// Grid (num_tokens), a multiple of 32 threads; head_dim a multiple of 16.
#define PAGESIM_DEFINE_QUANT_CACHE_KERNEL(T, C, SUF)                                                               \
  extern "C" __global__ void reshape_and_cache_##SUF(                                                              \
      unsigned char* __restrict__ k_cache, unsigned char* __restrict__ v_cache, const T* __restrict__ key,         \
      const T* __restrict__ value, const long long* __restrict__ slot_mapping, float* __restrict__ k_scales,       \
      float* __restrict__ v_scales, int num_kv_heads, int head_dim, int block_size, int scale_kind) {              \
    pagesim::reshape_and_cache_quant<T, C>(k_cache, v_cache, key, value, slot_mapping, k_scales, v_scales,         \
                                           num_kv_heads, head_dim, block_size, scale_kind);                        \
  }
PAGESIM_DEFINE_QUANT_CACHE_KERNEL(float, __nv_fp8_e4m3, f32_fp8)
PAGESIM_DEFINE_QUANT_CACHE_KERNEL(__half, __nv_fp8_e4m3, f16_fp8)
PAGESIM_DEFINE_QUANT_CACHE_KERNEL(__nv_bfloat16, __nv_fp8_e4m3, bf16_fp8)
PAGESIM_DEFINE_QUANT_CACHE_KERNEL(float, signed char, f32_int8)
PAGESIM_DEFINE_QUANT_CACHE_KERNEL(__half, signed char, f16_int8)
PAGESIM_DEFINE_QUANT_CACHE_KERNEL(__nv_bfloat16, signed char, bf16_int8)

// Grid (num_pairs), any block size. block_mapping [num_pairs, 2] = (src, dst) physical block ids;
// copies K and V of every head (or, called on the scale arrays, a block's K and V scales).
// Type-agnostic: a block is one contiguous slab of block_bytes (a multiple of 4; 16-byte vectors
// when a multiple of 16). Destinations must be distinct and not sources of another pair (Python checks).
extern "C" __global__ void copy_blocks(unsigned char* __restrict__ k_cache, unsigned char* __restrict__ v_cache,
                                       const long long* __restrict__ block_mapping, long long block_bytes) {
  const long long src = block_mapping[2 * static_cast<long long>(blockIdx.x)];
  const long long dst = block_mapping[2 * static_cast<long long>(blockIdx.x) + 1];
  pagesim::copy_bytes(k_cache + dst * block_bytes, k_cache + src * block_bytes, block_bytes);
  pagesim::copy_bytes(v_cache + dst * block_bytes, v_cache + src * block_bytes, block_bytes);
}

// Swapping through a contiguous staging buffer (device memory, or pinned host memory mapped into the
// device's address space): staging[i] = [block ids[i] of a | block ids[i] of b], 2 * block_bytes bytes
// (a = K, b = V; or the K and V scale arrays). Type-agnostic; block_bytes a multiple of 4, and of 16
// for 16-byte vectors. Grid (num_ids), any block size. scatter_blocks: ids distinct (Python checks).
extern "C" __global__ void gather_blocks(unsigned char* __restrict__ staging, const unsigned char* __restrict__ a,
                                         const unsigned char* __restrict__ b, const long long* __restrict__ ids,
                                         long long block_bytes) {
  const long long i = blockIdx.x, id = ids[i];
  pagesim::copy_bytes(staging + 2 * i * block_bytes, a + id * block_bytes, block_bytes);
  pagesim::copy_bytes(staging + (2 * i + 1) * block_bytes, b + id * block_bytes, block_bytes);
}
extern "C" __global__ void scatter_blocks(unsigned char* __restrict__ a, unsigned char* __restrict__ b,
                                          const unsigned char* __restrict__ staging, const long long* __restrict__ ids,
                                          long long block_bytes) {
  const long long i = blockIdx.x, id = ids[i];
  pagesim::copy_bytes(a + id * block_bytes, staging + 2 * i * block_bytes, block_bytes);
  pagesim::copy_bytes(b + id * block_bytes, staging + (2 * i + 1) * block_bytes, block_bytes);
}
