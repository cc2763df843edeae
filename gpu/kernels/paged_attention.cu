// paged_attention.cu -- decode attention over a paged KV cache (one query token per sequence),
// its partitioned (split-context) variant with a reduce kernel, and the same algorithm over a
// contiguous cache so that paging overhead is measured kernel for kernel.
//
// KV layout (pool): K and V are each [num_blocks, num_kv_heads, BLOCK_SIZE, HEAD_DIM], row-major.
//   Why: * the tile of one (block, kv head) is one contiguous run of BLOCK_SIZE*HEAD_DIM elements
//          (4 KiB for fp16, 16 x 128), so a block-table gather is one contiguous read per head;
//        * a token's head_dim row is contiguous, so every thread issues 16-byte vector loads and
//          the lanes of a warp cover consecutive 16-byte chunks (all 32-byte sectors fully used);
//        * a whole block (all heads) is one contiguous slab, so copy-on-write and swap are one
//          memcpy per block; K and V share one layout, one write kernel and one copy kernel.
//   (vLLM's K layout [.., HEAD_DIM/x, BLOCK_SIZE, x] serves its own thread mapping; this one gives
//   the same coalescing with a single indexing rule.)
// Contiguous layout: K and V are each [num_seqs, num_kv_heads, max_len, HEAD_DIM]; the kernel is the
//   same template with another tile-address rule (no block-table load).
// q and out are [num_seqs, num_heads, HEAD_DIM]; block_tables [num_seqs, max_blocks_per_seq] int32;
// context_lens [num_seqs] int32. Storage fp32 / fp16 / bf16 (kernel suffix f32 / f16 / bf16),
// accumulation in fp32. Query heads map to kv heads as head / (num_heads / num_kv_heads) (GQA).
// Quantised KV (built with -DKV_QUANT=1, suffix <q>_<kv>: f16_fp8, f16_int8, bf16_fp8, bf16_int8):
// q and out in fp16 / bf16, K/V as 1-byte fp8 e4m3 or int8 codes with fp32 scales (KVScales below);
// codes are widened to float in registers, a token's K scale multiplies its logit and its V scale
// its probability, so the inner loops are those of the float kernels.
//
// Work split: grid (num_heads, num_seqs, num_partitions), NUM_THREADS threads. Warps take KV blocks
// round-robin; per block a warp (1) computes BLOCK_SIZE logits, TPT lanes per token each dotting
// 16-byte vectors of K with q (q * scale kept in shared memory), (2) updates its running max and
// sum (online softmax), (3) publishes the probabilities in shared memory and accumulates
// p * V with lanes spread over head_dim. Warps merge through shared memory at the end.
// Partitioned: each block covers partition_size tokens (a multiple of BLOCK_SIZE) and writes its
// normalised partial output, exp-sum and max logit; decode_reduce_* merges the partitions.
// Sliding window (window > 0): only the last `window` tokens are read; blocks before them are
// skipped entirely. k_scale / v_scale multiply K and V (1.0 for float storage) on top of any scale
// arrays of quantised storage.
//
// Compile-time configuration (-D): HEAD_DIM (64/128/256), BLOCK_SIZE (8..128, power of two),
// NUM_THREADS (multiple of 32), MAX_PARTITIONS (reduce kernel's shared-memory weight array),
// MIN_BLOCKS_PER_SM (register budget, see below), KV_QUANT (1: the quantised kernels instead of
// the float ones, so that a float user does not compile them).
#include "common.cuh"

#ifndef HEAD_DIM
#define HEAD_DIM 128
#endif
#ifndef BLOCK_SIZE
#define BLOCK_SIZE 16
#endif
#ifndef NUM_THREADS
#define NUM_THREADS 128
#endif
#ifndef MAX_PARTITIONS
#define MAX_PARTITIONS 1024
#endif
// Register budget: at least this many blocks per SM, i.e. <= 65536 / (4 * 128) = 128 registers per
// thread. With that budget ptxas hoists the 16-byte loads (memory-level parallelism) and never spills
// in any instantiation; its default heuristic picked ~48 registers and spilled a few bytes in some.
#ifndef MIN_BLOCKS_PER_SM
#define MIN_BLOCKS_PER_SM 4
#endif
#define NUM_WARPS (NUM_THREADS / 32)

static_assert(NUM_THREADS % 32 == 0 && NUM_THREADS <= 1024, "NUM_THREADS must be a multiple of 32, <= 1024");
static_assert(BLOCK_SIZE >= 8 && BLOCK_SIZE <= 128 && (BLOCK_SIZE & (BLOCK_SIZE - 1)) == 0,
              "BLOCK_SIZE must be a power of two in [8, 128]");

namespace pagesim {

// Tile addressing for logical KV block `b` of a sequence: block_id() is the block whose scales apply
// (paged: the physical block; contiguous: seq * blocks_per_seq + b, an index into scales gathered per
// sequence), tile() the element offset of its token 0 for one kv head.
struct PagedTiles {
  const int* __restrict__ block_tables;
  int max_blocks_per_seq;
  __device__ __forceinline__ long long block_id(int seq, int b) const {
    return block_tables[static_cast<long long>(seq) * max_blocks_per_seq + b];
  }
  __device__ __forceinline__ long long tile(long long id, int, int kv_head, int num_kv_heads, int) const {
    return (id * num_kv_heads + kv_head) * static_cast<long long>(BLOCK_SIZE * HEAD_DIM);
  }
};
struct ContiguousTiles {
  int max_len;
  __device__ __forceinline__ long long block_id(int seq, int b) const {
    return static_cast<long long>(seq) * ((max_len + BLOCK_SIZE - 1) / BLOCK_SIZE) + b;
  }
  __device__ __forceinline__ long long tile(long long, int seq, int kv_head, int num_kv_heads, int b) const {
    return ((static_cast<long long>(seq) * num_kv_heads + kv_head) * max_len + static_cast<long long>(b) * BLOCK_SIZE) *
           HEAD_DIM;
  }
};

// fp32 scales of quantised K and V. The scale of token t (offset in its block) of block `id`, kv head
// h, is k[id * sb + h * sh + t * st], with (sb, sh, st) given by `kind`:
//   0 per_tensor  [1]                                      (0, 0, 0)
//   1 per_kv_head [num_kv_heads]                           (0, 1, 0)
//   2 per_block   [num_blocks, num_kv_heads]               (num_kv_heads, 1, 0)
//   3 per_head    [num_blocks, num_kv_heads, BLOCK_SIZE]   (num_kv_heads * BLOCK_SIZE, BLOCK_SIZE, 1)
// per_head is one scale per token and kv head (what sim/presets.py charges 4 bytes per head per
// token for). Blocks are physical blocks (paged) or block_id()s of the gathered contiguous cache.
struct KVScales {
  const float* __restrict__ k;
  const float* __restrict__ v;
  int kind;
};

template <typename C> struct DecodeGeometry {
  static constexpr int kVec = Vec16<C>::kElems;          // elements per 16-byte load
  static constexpr int kRowVecs = HEAD_DIM / kVec;       // 16-byte vectors per token row
  // K phase: TPT lanes share a token (each dots kKVecs vectors, strided by TPT so that the TPT
  // lanes read adjacent 16-byte chunks); 32 / TPT tokens per pass, kPasses passes per block.
  static constexpr int kTpt = (32 / BLOCK_SIZE) > 2 ? (32 / BLOCK_SIZE) : 2;
  static constexpr int kTokPerPass = 32 / kTpt;
  static constexpr int kPasses = BLOCK_SIZE / kTokPerPass;
  static constexpr int kKVecs = kRowVecs / kTpt;
  // V phase: kVLanes lanes cover a row (kVVecs vectors each); kVGroups rows at a time.
  static constexpr int kVLanes = kRowVecs < 32 ? kRowVecs : 32;
  static constexpr int kVGroups = 32 / kVLanes;
  static constexpr int kVVecs = kRowVecs / kVLanes;
  static_assert(HEAD_DIM % (kVec * kTpt) == 0, "HEAD_DIM too small for this block size and dtype");
  static_assert(kRowVecs % kVLanes == 0 && 32 % kVLanes == 0, "HEAD_DIM must be 64, 128 or 256");
};

// T: q / out type; C: KV storage type (T itself, or a quantised code type with `scales`).
template <typename T, typename C, typename Tiles>
__device__ __forceinline__ void decode_attention(T* __restrict__ out, float* __restrict__ tmp_out,
                                                 float* __restrict__ exp_sums, float* __restrict__ max_logits,
                                                 const T* __restrict__ q, const C* __restrict__ k_cache,
                                                 const C* __restrict__ v_cache, const Tiles tiles,
                                                 const int* __restrict__ context_lens, int num_kv_heads,
                                                 int partition_size, int window, float scale, float k_scale,
                                                 float v_scale, const KVScales scales) {
  using G = DecodeGeometry<C>;
  constexpr int VEC = G::kVec;
  constexpr bool kQuant = KVQuant<C>::kQuantized;
  const int head = blockIdx.x, seq = blockIdx.y, part = blockIdx.z;
  const int num_heads = gridDim.x, num_parts = gridDim.z;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int kv_head = head / (num_heads / num_kv_heads);
  const int ctx = context_lens[seq];
  const int first = window > 0 ? max(ctx - window, 0) : 0;  // first token read
  int t_begin = first, t_end = ctx;
  if (partition_size > 0) {
    t_begin = max(first, part * partition_size);
    t_end = min(ctx, (part + 1) * partition_size);
    if (t_begin >= t_end) return;  // the whole block leaves before any barrier; the reduce skips it
  }

  __shared__ __align__(16) float q_s[HEAD_DIM];
  __shared__ float p_s[2][NUM_WARPS][BLOCK_SIZE];  // double-buffered probabilities, per warp
  __shared__ __align__(16) float acc_s[NUM_WARPS][G::kVGroups * HEAD_DIM];
  __shared__ float m_s[NUM_WARPS], l_s[NUM_WARPS];

  const long long seq_head = static_cast<long long>(seq) * num_heads + head;
  const float q_scale = scale * k_scale;
  for (int d = threadIdx.x; d < HEAD_DIM; d += NUM_THREADS) q_s[d] = to_float(q[seq_head * HEAD_DIM + d]) * q_scale;
  __syncthreads();

  long long s_block = 0;  // scale strides (see KVScales)
  int s_head = 0, s_tok = 0;
  if constexpr (kQuant) {
    s_block = scales.kind == 2 ? num_kv_heads : scales.kind == 3 ? static_cast<long long>(num_kv_heads) * BLOCK_SIZE : 0;
    s_head = scales.kind == 0 ? 0 : scales.kind == 3 ? BLOCK_SIZE : 1;
    s_tok = scales.kind == 3 ? 1 : 0;
  }

  const int k_tok = lane / G::kTpt, k_sub = lane % G::kTpt;
  const int v_grp = lane / G::kVLanes, v_sub = lane % G::kVLanes;
  float m = PAGESIM_NEG_INF, l = 0.f;  // running max and (per-lane partial) sum of exp(logit - m)
  float acc[G::kVVecs * VEC];
#pragma unroll
  for (int i = 0; i < G::kVVecs * VEC; ++i) acc[i] = 0.f;

  const int b_begin = t_begin / BLOCK_SIZE, b_end = (t_end + BLOCK_SIZE - 1) / BLOCK_SIZE;
  int iter = 0;
  for (int b = b_begin + warp; b < b_end; b += NUM_WARPS, ++iter) {  // warp-uniform loop
    const long long id = tiles.block_id(seq, b);
    const long long tile = tiles.tile(id, seq, kv_head, num_kv_heads, b);
    const C* k_tile = k_cache + tile;
    const C* v_tile = v_cache + tile;
    const long long s_base = id * s_block + kv_head * s_head;  // this block's scales (quantised only)
    const int tok_lo = max(t_begin - b * BLOCK_SIZE, 0);  // valid tokens of this block: [tok_lo, tok_hi)
    const int tok_hi = min(t_end - b * BLOCK_SIZE, BLOCK_SIZE);

    // (1) logits: masked tokens load nothing (the tail of a last block may hold garbage)
    float logit[G::kPasses];
    float block_max = PAGESIM_NEG_INF;
#pragma unroll
    for (int pass = 0; pass < G::kPasses; ++pass) {
      const int tok = pass * G::kTokPerPass + k_tok;
      const bool valid = tok >= tok_lo && tok < tok_hi;
      float dot = 0.f;
      if (valid) {
        const C* row = k_tile + tok * HEAD_DIM;
#pragma unroll
        for (int i = 0; i < G::kKVecs; ++i) {
          const int d0 = (i * G::kTpt + k_sub) * VEC;
          float kv[VEC];
          load_vec16(row + d0, kv);
#pragma unroll
          for (int e = 0; e < VEC; ++e) dot += q_s[d0 + e] * kv[e];
        }
      }
      dot = xor_reduce_sum<1, G::kTpt>(dot);  // outside the branch: every lane takes part
      if constexpr (kQuant) {
        if (valid) dot *= scales.k[s_base + tok * s_tok];
      }
      logit[pass] = valid ? dot : PAGESIM_NEG_INF;
      block_max = fmaxf(block_max, logit[pass]);
    }
    block_max = xor_reduce_max<G::kTpt, 32>(block_max);

    // (2) online softmax; m_new is finite because the block holds at least one valid token
    const float m_new = fmaxf(m, block_max);
    const float alpha = __expf(m - m_new);
    l *= alpha;
#pragma unroll
    for (int i = 0; i < G::kVVecs * VEC; ++i) acc[i] *= alpha;
    float* p = p_s[iter & 1][warp];
#pragma unroll
    for (int pass = 0; pass < G::kPasses; ++pass) {
      const float pt = __expf(logit[pass] - m_new);  // 0 for masked tokens
      if (k_sub == 0) {
        const int tok = pass * G::kTokPerPass + k_tok;
        float pv = pt;
        if constexpr (kQuant) {  // V's scale rides on the probability; masked tokens load nothing
          pv = tok >= tok_lo && tok < tok_hi ? pt * scales.v[s_base + tok * s_tok] : 0.f;
        }
        p[tok] = pv;
        l += pt;
      }
    }
    m = m_new;
    // Publishes p to the warp. The buffer written next iteration is the other one, and a lane
    // reaches the write after that only through the next __syncwarp, so no read is overtaken.
    __syncwarp();

    // (3) acc += p * V over the valid tokens, kVGroups rows at a time
    for (int tok = tok_lo + v_grp; tok < tok_hi; tok += G::kVGroups) {
      const float pt = p[tok];
      const C* row = v_tile + tok * HEAD_DIM;
#pragma unroll
      for (int i = 0; i < G::kVVecs; ++i) {
        float vv[VEC];
        load_vec16(row + (i * G::kVLanes + v_sub) * VEC, vv);
#pragma unroll
        for (int e = 0; e < VEC; ++e) acc[i * VEC + e] += pt * vv[e];
      }
    }
  }

  // merge the warps: each leaves (m, l, acc per row group) in shared memory
  l = xor_reduce_sum<1, 32>(l);
  if (lane == 0) {
    m_s[warp] = m;
    l_s[warp] = l;
  }
  float* acc_w = acc_s[warp] + v_grp * HEAD_DIM;
#pragma unroll
  for (int i = 0; i < G::kVVecs; ++i)
#pragma unroll
    for (int e = 0; e < VEC; ++e) acc_w[(i * G::kVLanes + v_sub) * VEC + e] = acc[i * VEC + e];
  __syncthreads();

  float m_all = PAGESIM_NEG_INF;
#pragma unroll
  for (int w = 0; w < NUM_WARPS; ++w) m_all = fmaxf(m_all, m_s[w]);
  float weight[NUM_WARPS];
  float l_all = 0.f;
#pragma unroll
  for (int w = 0; w < NUM_WARPS; ++w) {
    weight[w] = l_s[w] > 0.f ? __expf(m_s[w] - m_all) : 0.f;  // warps without tokens weigh 0
    l_all += l_s[w] * weight[w];
  }
  const float inv = l_all > 0.f ? v_scale / l_all : 0.f;  // empty context -> zeros
  for (int d = threadIdx.x; d < HEAD_DIM; d += NUM_THREADS) {
    float o = 0.f;
#pragma unroll
    for (int w = 0; w < NUM_WARPS; ++w)
#pragma unroll
      for (int g = 0; g < G::kVGroups; ++g) o += weight[w] * acc_s[w][g * HEAD_DIM + d];
    if (partition_size > 0) {
      tmp_out[(seq_head * num_parts + part) * HEAD_DIM + d] = o * inv;
    } else {
      out[seq_head * HEAD_DIM + d] = from_float<T>(o * inv);
    }
  }
  if (partition_size > 0 && threadIdx.x == 0) {
    exp_sums[seq_head * num_parts + part] = l_all;
    max_logits[seq_head * num_parts + part] = m_all;
  }
}

// Block-wide max / sum through warp shuffles and shared memory (two barriers: red_s is reusable).
template <bool IS_MAX> __device__ __forceinline__ float block_reduce(float v, float* red_s) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  v = IS_MAX ? xor_reduce_max<1, 32>(v) : xor_reduce_sum<1, 32>(v);
  if (lane == 0) red_s[warp] = v;
  __syncthreads();
  float r = IS_MAX ? PAGESIM_NEG_INF : 0.f;
#pragma unroll
  for (int w = 0; w < NUM_WARPS; ++w) r = IS_MAX ? fmaxf(r, red_s[w]) : r + red_s[w];
  __syncthreads();
  return r;
}

// Merge the partitions of one (sequence, head): out = sum_p w_p * tmp_p / sum_p w_p with
// w_p = exp_sum_p * exp(max_logit_p - max over p). Grid (num_heads, num_seqs), NUM_THREADS threads.
template <typename T>
__device__ __forceinline__ void reduce_partitions(T* __restrict__ out, const float* __restrict__ tmp_out,
                                                  const float* __restrict__ exp_sums,
                                                  const float* __restrict__ max_logits,
                                                  const int* __restrict__ context_lens, int max_parts,
                                                  int partition_size, int window) {
  const int head = blockIdx.x, seq = blockIdx.y, num_heads = gridDim.x;
  const int ctx = context_lens[seq];
  const int first = window > 0 ? max(ctx - window, 0) : 0;
  const int p_begin = first / partition_size;  // the same partitions the decode kernel filled
  const int p_end = (ctx + partition_size - 1) / partition_size;
  const long long seq_head = static_cast<long long>(seq) * num_heads + head;
  __shared__ float w_s[MAX_PARTITIONS];
  __shared__ float red_s[NUM_WARPS];

  float m = PAGESIM_NEG_INF;
  for (int p = p_begin + threadIdx.x; p < p_end; p += NUM_THREADS) m = fmaxf(m, max_logits[seq_head * max_parts + p]);
  const float m_all = block_reduce<true>(m, red_s);
  float s = 0.f;
  for (int p = p_begin + threadIdx.x; p < p_end; p += NUM_THREADS) {
    const float w = exp_sums[seq_head * max_parts + p] * __expf(max_logits[seq_head * max_parts + p] - m_all);
    w_s[p - p_begin] = w;
    s += w;
  }
  const float total = block_reduce<false>(s, red_s);  // its first barrier also publishes w_s
  const float inv = total > 0.f ? 1.f / total : 0.f;
  for (int d = threadIdx.x; d < HEAD_DIM; d += NUM_THREADS) {
    float o = 0.f;
    for (int p = p_begin; p < p_end; ++p) o += w_s[p - p_begin] * tmp_out[(seq_head * max_parts + p) * HEAD_DIM + d];
    out[seq_head * HEAD_DIM + d] = from_float<T>(o * inv);
  }
}

}  // namespace pagesim

// extern "C" entry points per storage type (no name mangling: CuPy and the CPU shim find them by name)
#define PAGESIM_DECODE_PARAMS(T, C)                                                                                   \
  T *__restrict__ out, float *__restrict__ tmp_out, float *__restrict__ exp_sums, float *__restrict__ max_logits,     \
      const T *__restrict__ q, const C *__restrict__ k_cache, const C *__restrict__ v_cache
#define PAGESIM_DEFINE_DECODE_KERNELS(T, C, SUF, SCALE_PARAMS, SCALES)                                                \
  extern "C" __global__ void __launch_bounds__(NUM_THREADS, MIN_BLOCKS_PER_SM) paged_decode_##SUF(                    \
      PAGESIM_DECODE_PARAMS(T, C), const int* __restrict__ block_tables, const int* __restrict__ context_lens,        \
      int num_kv_heads, int max_blocks_per_seq, int partition_size, int window, float scale, float k_scale,           \
      float v_scale SCALE_PARAMS) {                                                                                   \
    pagesim::decode_attention<T, C>(out, tmp_out, exp_sums, max_logits, q, k_cache, v_cache,                          \
                                    pagesim::PagedTiles{block_tables, max_blocks_per_seq}, context_lens,              \
                                    num_kv_heads, partition_size, window, scale, k_scale, v_scale, SCALES);           \
  }                                                                                                                   \
  extern "C" __global__ void __launch_bounds__(NUM_THREADS, MIN_BLOCKS_PER_SM) contiguous_decode_##SUF(               \
      PAGESIM_DECODE_PARAMS(T, C), const int* __restrict__ context_lens, int num_kv_heads, int max_len,               \
      int partition_size, int window, float scale, float k_scale, float v_scale SCALE_PARAMS) {                       \
    pagesim::decode_attention<T, C>(out, tmp_out, exp_sums, max_logits, q, k_cache, v_cache,                          \
                                    pagesim::ContiguousTiles{max_len}, context_lens, num_kv_heads, partition_size,    \
                                    window, scale, k_scale, v_scale, SCALES);                                         \
  }
#define PAGESIM_DEFINE_REDUCE_KERNEL(T, SUF)                                                                          \
  extern "C" __global__ void __launch_bounds__(NUM_THREADS, MIN_BLOCKS_PER_SM) decode_reduce_##SUF(                   \
      T* __restrict__ out, const float* __restrict__ tmp_out, const float* __restrict__ exp_sums,                     \
      const float* __restrict__ max_logits, const int* __restrict__ context_lens, int max_parts,                      \
      int partition_size, int window) {                                                                               \
    pagesim::reduce_partitions<T>(out, tmp_out, exp_sums, max_logits, context_lens, max_parts, partition_size,        \
                                  window);                                                                            \
  }
#define PAGESIM_NO_SCALES pagesim::KVScales{nullptr, nullptr, 0}
#define PAGESIM_SCALE_PARAMS , const float *__restrict__ k_scales, const float *__restrict__ v_scales, int scale_kind
#define PAGESIM_SCALES pagesim::KVScales{k_scales, v_scales, scale_kind}

#if defined(KV_QUANT) && KV_QUANT
PAGESIM_DEFINE_DECODE_KERNELS(__half, __nv_fp8_e4m3, f16_fp8, PAGESIM_SCALE_PARAMS, PAGESIM_SCALES)
PAGESIM_DEFINE_DECODE_KERNELS(__half, signed char, f16_int8, PAGESIM_SCALE_PARAMS, PAGESIM_SCALES)
PAGESIM_DEFINE_DECODE_KERNELS(__nv_bfloat16, __nv_fp8_e4m3, bf16_fp8, PAGESIM_SCALE_PARAMS, PAGESIM_SCALES)
PAGESIM_DEFINE_DECODE_KERNELS(__nv_bfloat16, signed char, bf16_int8, PAGESIM_SCALE_PARAMS, PAGESIM_SCALES)
#else
PAGESIM_DEFINE_DECODE_KERNELS(float, float, f32, , PAGESIM_NO_SCALES)
PAGESIM_DEFINE_DECODE_KERNELS(__half, __half, f16, , PAGESIM_NO_SCALES)
PAGESIM_DEFINE_DECODE_KERNELS(__nv_bfloat16, __nv_bfloat16, bf16, , PAGESIM_NO_SCALES)
PAGESIM_DEFINE_REDUCE_KERNEL(float, f32)
#endif
PAGESIM_DEFINE_REDUCE_KERNEL(__half, f16)
PAGESIM_DEFINE_REDUCE_KERNEL(__nv_bfloat16, bf16)
