// cache_ops.cu -- writing into the paged KV cache: scatter new K/V rows through a slot mapping
// (reshape_and_cache) and copy whole blocks for copy-on-write (copy_blocks).
//
// Pool layout (see paged_attention.cu): K and V are each [num_blocks, num_kv_heads, block_size,
// head_dim]; slot = physical_block * block_size + offset. Everything is moved in 16-byte vectors,
// so head_dim * sizeof(T) must be a multiple of 16 and all buffers 16-byte aligned (the Python
// side checks both). Shapes are runtime arguments: one compiled module serves every configuration.
#include "common.cuh"

namespace pagesim {

// Grid (num_tokens), any block size. key/value [num_tokens, num_kv_heads, head_dim]; a negative
// slot marks a padding token, which writes nothing.
// Hook for quantised storage (issue #8): a variant with a different cache type converts here.
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

// Grid (num_pairs), any block size. block_mapping [num_pairs, 2] = (src, dst) physical block ids;
// copies K and V of every head. Type-agnostic: a block is one contiguous slab of block_bytes.
// Destinations must be distinct and not sources of another pair (the Python side checks).
extern "C" __global__ void copy_blocks(unsigned char* __restrict__ k_cache, unsigned char* __restrict__ v_cache,
                                       const long long* __restrict__ block_mapping, long long block_bytes) {
  const long long src = block_mapping[2 * static_cast<long long>(blockIdx.x)];
  const long long dst = block_mapping[2 * static_cast<long long>(blockIdx.x) + 1];
  const long long n = block_bytes / 16;
  const uint4* ks = reinterpret_cast<const uint4*>(k_cache + src * block_bytes);
  const uint4* vs = reinterpret_cast<const uint4*>(v_cache + src * block_bytes);
  uint4* kd = reinterpret_cast<uint4*>(k_cache + dst * block_bytes);
  uint4* vd = reinterpret_cast<uint4*>(v_cache + dst * block_bytes);
  for (long long i = threadIdx.x; i < n; i += blockDim.x) {
    kd[i] = ks[i];
    vd[i] = vs[i];
  }
}
