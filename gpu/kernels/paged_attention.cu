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
// Work split: grid (num_heads / QUERY_GROUP, num_seqs, num_partitions); one CTA serves the
// QUERY_GROUP query heads head0 .. head0 + QUERY_GROUP - 1, which all read one kv head, so each K/V
// tile is loaded once for the whole group. kThreads threads (DecodeGeometry below, 128 for every
// supported instantiation): thread (x, y, z) holds kVec elements x*kVec.. of a row, heads
// y*kHpt .. y*kHpt + kHpt - 1 of the group, and token slot z (tokens z, z + kBdz, .. of each tile).
// Software pipeline: the CTA walks its tokens in tiles of kTile tokens (KV_TILE_BYTES of K and as many
// of V); KV_STAGES tiles live in a shared-memory ring filled with cp.async (16-byte copies, K and V
// issued together, plus 4-byte copies of per-token scales). While tile i is computed, tile i + 1 is in
// flight, and the block-table entries of tile i + 2 are being loaded into registers.
// Per tile a thread (1) dots its K slices with its q slices (each slice widened once for its heads) and
// reduces across the kBdx lanes of a row, (2) updates its running max and sum per head (online
// softmax), (3) accumulates p * V. Token slots merge through shared memory at the end.
// Partitioned: each CTA covers partition_size tokens (a multiple of BLOCK_SIZE) and writes its
// normalised partial output, exp-sum and max logit per head; decode_reduce_* merges the partitions.
// Sliding window (window > 0): only the last `window` tokens are read; blocks before them are
// never read (their table entries may be -1). k_scale / v_scale multiply K and V (1.0 for float
// storage) on top of any scale arrays of quantised storage; static (per_tensor / per_kv_head) scales
// are hoisted out of the loop into q and the output.
//
// Compile-time configuration (-D): HEAD_DIM (64/128/256), BLOCK_SIZE (8..128, power of two),
// QUERY_GROUP (1, 2, 4, 8: query heads per CTA), KV_STAGES (2..4), KV_TILE_BYTES (8192; the ring is
// 2 * KV_STAGES * KV_TILE_BYTES of static shared memory, so 2 stages of 8 KiB fit the 48 KiB limit),
// NUM_THREADS (the reduce kernel's CTA size, multiple of 32), MAX_PARTITIONS (reduce kernel's
// shared-memory weight array), MIN_BLOCKS_PER_SM (register budget, see below), KV_QUANT (1: the
// quantised kernels instead of the float ones, so that a float user does not compile them).
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
// Register budget: at least this many 128-thread blocks per SM (scaled for other CTA sizes), i.e.
// <= 65536 / (4 * 128) = 128 registers per thread. With that budget ptxas never spills in any
// instantiation (benchmarks/results/kernel_resources.md); its default heuristic spilled in some.
#ifndef MIN_BLOCKS_PER_SM
#define MIN_BLOCKS_PER_SM 4
#endif
// Query heads served by one decode CTA (1, 2, 4, 8): num_heads / num_kv_heads must be a multiple.
#ifndef QUERY_GROUP
#define QUERY_GROUP 1
#endif
// Software pipeline: KV_STAGES tiles of KV_TILE_BYTES of K (and as many of V) in shared memory.
#ifndef KV_STAGES
#define KV_STAGES 2
#endif
#ifndef KV_TILE_BYTES
#define KV_TILE_BYTES 8192
#endif
#define NUM_WARPS (NUM_THREADS / 32)

static_assert(QUERY_GROUP == 1 || QUERY_GROUP == 2 || QUERY_GROUP == 4 || QUERY_GROUP == 8,
              "QUERY_GROUP must be 1, 2, 4 or 8");
static_assert(KV_STAGES >= 2 && KV_STAGES <= 4, "KV_STAGES must be 2..4");
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

// Thread and tile geometry of the decode kernel for KV storage type C (see the file comment).
template <typename C> struct DecodeGeometry {
  static constexpr int kVec16 = 16 / static_cast<int>(sizeof(C));  // elements per 16-byte chunk
  // kVec elements of a row per thread, kBdx threads per row (a power of two: one shuffle group). Few
  // lanes per row keep the per-token shuffles, softmax and predicates few: for 1- and 2-byte storage
  // 32 elements per thread with one head per thread (QUERY_GROUP 1), 16 with two heads per thread
  // (registers); measured on the sm_90 loop: -17% instructions per tile at GQA 4 (16 vs 8 elements),
  // -26% for fp8 at GQA 1 (32 vs 16). fp32 keeps 32 lanes so its 8-token tiles fill every token slot.
  static constexpr int kRowLanes = sizeof(C) >= 4 ? 32 : QUERY_GROUP == 1 ? HEAD_DIM / 32 : 8;
  static constexpr int kVec = kVec16 > HEAD_DIM / kRowLanes ? kVec16 : HEAD_DIM / kRowLanes;
  static constexpr int kBdx = HEAD_DIM / kVec;
  static constexpr int kGroup = QUERY_GROUP;  // query heads per CTA, all reading one kv head
  // Heads per thread: 2 when registers allow (kVec <= 16), so a K/V slice read from shared memory and
  // widened to float serves two heads (the widening is most of the per-token work for fp8 / fp16).
  static constexpr int kHpt = kGroup >= 2 && kVec <= 16 ? 2 : 1;
  static constexpr int kBdy = kGroup / kHpt;  // threads along the group
  static constexpr int kThreads = kBdx * kBdy > 128 ? kBdx * kBdy : 128;
  static constexpr int kBdz = kThreads / (kBdx * kBdy);  // token slots: thread z takes tokens z, z + kBdz, ..
  static constexpr int kRowChunks = HEAD_DIM * static_cast<int>(sizeof(C)) / 16;  // 16-byte chunks per row
  // Tokens per stage: KV_TILE_BYTES of K, capped so a thread holds at most 16 logits (kTokPerThread x
  // kHpt): more would spill at head_dim 64 with 1-byte codes (many short rows per tile).
  static constexpr int kTileBytesTokens = KV_TILE_BYTES / (HEAD_DIM * static_cast<int>(sizeof(C)));
  static constexpr int kTile = kTileBytesTokens < kBdz * 16 / kHpt ? kTileBytesTokens : kBdz * 16 / kHpt;
  static constexpr int kTokPerThread = kTile / kBdz;
  static constexpr int kChunks = kTile * kRowChunks / kThreads;  // 16-byte copies per thread per stage, K and V each
  static constexpr int kChunkTokStride = kThreads / kRowChunks;  // tokens between a thread's copies
  static constexpr int kMinBlocks = MIN_BLOCKS_PER_SM * 128 / kThreads > 0 ? MIN_BLOCKS_PER_SM * 128 / kThreads : 1;
  static constexpr int kRingBytes = 2 * KV_STAGES * kTile * HEAD_DIM * static_cast<int>(sizeof(C)) + 2 * KV_STAGES * kTile * 4;
  static_assert(kVec % kVec16 == 0 && kBdx <= 32 && 32 % kBdx == 0, "HEAD_DIM must be 64, 128 or 256");
  static_assert(kTile >= kBdz && kTile % kBdz == 0 && kTile <= kThreads, "KV_TILE_BYTES out of range for HEAD_DIM");
  static_assert(kChunks >= 1 && kChunks * kThreads == kTile * kRowChunks && kThreads % kRowChunks == 0,
                "KV_TILE_BYTES must be a multiple of 16 * threads");
  static_assert(kThreads * kHpt * kVec * 4 + 2 * kBdz * kGroup * 4 <= kRingBytes, "merge buffers must fit in the ring");
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
  constexpr int VEC = G::kVec, TILE = G::kTile, NT = G::kThreads, QG = QUERY_GROUP, HPT = G::kHpt;
  constexpr int TILE_ELEMS = TILE * HEAD_DIM;
  constexpr bool kQuant = KVQuant<C>::kQuantized;
  const int seq = blockIdx.y, part = blockIdx.z;
  const int num_heads = gridDim.x * QG, num_parts = gridDim.z;
  const int tid = threadIdx.x;
  const int x = tid % G::kBdx, y = (tid / G::kBdx) % G::kBdy, z = tid / (G::kBdx * G::kBdy);  // heads y*HPT ..
  const int head0 = blockIdx.x * QG;  // this CTA's query heads: head0 .. head0 + QG - 1
  const int kv_head = head0 / (num_heads / num_kv_heads);
  const int ctx = context_lens[seq];
  const int first = window > 0 ? max(ctx - window, 0) : 0;  // first token read
  int t_begin = first, t_end = ctx;
  if (partition_size > 0) {
    t_begin = max(first, part * partition_size);
    t_end = min(ctx, (part + 1) * partition_size);
    if (t_begin >= t_end) return;  // the whole block leaves before any barrier; the reduce skips it
  }

  // Ring of KV_STAGES stages, each the K and V rows of TILE tokens (+ their per-token scales when
  // quantised per_block / per_head). After the loop the same bytes hold the merge buffers.
  __shared__ __align__(16) unsigned char ring[G::kRingBytes];
  C* k_ring = reinterpret_cast<C*>(ring);
  C* v_ring = k_ring + KV_STAGES * TILE_ELEMS;
  float* ks_ring = reinterpret_cast<float*>(v_ring + KV_STAGES * TILE_ELEMS);
  float* vs_ring = ks_ring + KV_STAGES * TILE;

  // Scales hoisted out of the loop: static ones (per_tensor / per_kv_head) fold into q and the output;
  // per_block / per_head ones travel with their tile (a 4-byte async copy per token).
  long long s_block = 0;
  int s_head = 0, s_tok = 0;
  bool token_scales = false;
  float k_static = 1.f, v_static = 1.f;
  if constexpr (kQuant) {
    s_block = scales.kind == 2 ? num_kv_heads : scales.kind == 3 ? static_cast<long long>(num_kv_heads) * BLOCK_SIZE : 0;
    s_head = scales.kind == 0 ? 0 : scales.kind == 3 ? BLOCK_SIZE : 1;
    s_tok = scales.kind == 3 ? 1 : 0;
    token_scales = scales.kind >= 2;
    if (!token_scales) {
      k_static = scales.k[kv_head * s_head];
      v_static = scales.v[kv_head * s_head];
    }
  }

  // this thread's query slice, pre-scaled
  float qv[HPT][VEC];
  {
    const float qs = scale * k_scale * k_static;
#pragma unroll
    for (int h = 0; h < HPT; ++h) {
      const T* qp = q + (static_cast<long long>(seq) * num_heads + head0 + y * HPT + h) * HEAD_DIM + x * VEC;
#pragma unroll
      for (int e = 0; e < VEC; ++e) qv[h][e] = to_float(qp[e]) * qs;
    }
  }

  // Copy assignment: thread tid copies 16-byte column c_col of tokens c_tok + k * kChunkTokStride of
  // each tile, for K and V. ids[] holds the block ids of the next tile to issue (-1: token not read),
  // loaded one tile ahead so the block-table read is off the copy's critical path.
  const int c_col = tid % G::kRowChunks, c_tok = tid / G::kRowChunks;
  const int tile0 = (t_begin / BLOCK_SIZE) * BLOCK_SIZE;  // tiles start at the first block read
  const int n_tiles = (t_end - tile0 + TILE - 1) / TILE;
  long long ids[G::kChunks];
  long long sid = -1;  // block id of token `tid` of the next tile (token scales only)
  auto fetch_ids = [&](int i) {
#pragma unroll
    for (int k = 0; k < G::kChunks; ++k) {
      const int tok = tile0 + i * TILE + c_tok + k * G::kChunkTokStride;
      ids[k] = i < n_tiles && tok >= t_begin && tok < t_end ? tiles.block_id(seq, tok / BLOCK_SIZE) : -1;
    }
    if (token_scales) {
      const int tok = tile0 + i * TILE + tid;
      sid = i < n_tiles && tid < TILE && tok >= t_begin && tok < t_end ? tiles.block_id(seq, tok / BLOCK_SIZE) : -1;
    }
  };
  auto issue = [&](int i, int stage) {  // K and V of tile i into `stage`, one commit group
#pragma unroll
    for (int k = 0; k < G::kChunks; ++k) {
      if (ids[k] < 0) continue;  // masked tokens are never read (their table entries may be -1)
      const int tt = c_tok + k * G::kChunkTokStride, tok = tile0 + i * TILE + tt;
      const long long src = tiles.tile(ids[k], seq, kv_head, num_kv_heads, tok / BLOCK_SIZE) +
                            (tok % BLOCK_SIZE) * HEAD_DIM + c_col * G::kVec16;
      const int dst = stage * TILE_ELEMS + tt * HEAD_DIM + c_col * G::kVec16;
      cp_async16(k_ring + dst, k_cache + src);
      cp_async16(v_ring + dst, v_cache + src);
    }
    if (token_scales && sid >= 0) {
      const long long s = sid * s_block + kv_head * s_head + ((tile0 + i * TILE + tid) % BLOCK_SIZE) * s_tok;
      cp_async4(ks_ring + stage * TILE + tid, scales.k + s);
      cp_async4(vs_ring + stage * TILE + tid, scales.v + s);
    }
  };

  float m[HPT], l[HPT], acc[HPT][VEC];  // per head: running max, sum of exp(logit - m), sum of p * V
#pragma unroll
  for (int h = 0; h < HPT; ++h) {
    m[h] = PAGESIM_NEG_INF;
    l[h] = 0.f;
#pragma unroll
    for (int e = 0; e < VEC; ++e) acc[h][e] = 0.f;
  }

  fetch_ids(0);
#pragma unroll
  for (int s = 0; s < KV_STAGES - 1; ++s) {  // prologue: the first KV_STAGES - 1 tiles in flight
    if (s < n_tiles) issue(s, s);
    fetch_ids(s + 1);
    cp_async_commit();
  }
  for (int i = 0; i < n_tiles; ++i) {
    const int ahead = i + KV_STAGES - 1;
    if (ahead < n_tiles) issue(ahead, ahead % KV_STAGES);  // its stage was freed by the last barrier
    fetch_ids(ahead + 1);
    cp_async_commit();  // (an empty group near the end keeps the count uniform)
    cp_async_wait<KV_STAGES - 1>();  // tile i has landed (this thread's copies) ...
    __syncthreads();                  // ... and every thread's
    const int stage = i % KV_STAGES;
    const C* kt = k_ring + stage * TILE_ELEMS + x * VEC;
    const C* vt = v_ring + stage * TILE_ELEMS + x * VEC;
    const int tok0 = tile0 + i * TILE;

    // (1) logits of this thread's tokens z, z + kBdz, ... for its HPT heads: kBdx lanes dot their
    // slices (each K chunk widened once for all heads), then reduce across the lanes
    float logit[HPT][G::kTokPerThread];
    bool valid[G::kTokPerThread];
#pragma unroll
    for (int j = 0; j < G::kTokPerThread; ++j) {
      const int tok = tok0 + z + j * G::kBdz;
      valid[j] = tok >= t_begin && tok < t_end;
      const C* row = kt + (z + j * G::kBdz) * HEAD_DIM;
      float dot[HPT];
#pragma unroll
      for (int h = 0; h < HPT; ++h) dot[h] = 0.f;
#pragma unroll
      for (int c = 0; c < VEC / G::kVec16; ++c) {
        float kv[G::kVec16];
        load_vec16(row + c * G::kVec16, kv);
#pragma unroll
        for (int h = 0; h < HPT; ++h)
#pragma unroll
          for (int e = 0; e < G::kVec16; ++e) dot[h] += qv[h][c * G::kVec16 + e] * kv[e];
      }
#pragma unroll
      for (int h = 0; h < HPT; ++h) logit[h][j] = dot[h];
    }
#pragma unroll
    for (int j = 0; j < G::kTokPerThread; ++j)
#pragma unroll
      for (int h = 0; h < HPT; ++h) logit[h][j] = xor_reduce_sum<1, G::kBdx>(logit[h][j]);

    // (2) online softmax and (3) acc += p * V over the valid tokens (no cross-thread traffic)
    float m_new[HPT];
#pragma unroll
    for (int h = 0; h < HPT; ++h) {
      float tile_max = PAGESIM_NEG_INF;
#pragma unroll
      for (int j = 0; j < G::kTokPerThread; ++j) {
        float sc = logit[h][j];
        if constexpr (kQuant) {
          if (token_scales) sc *= ks_ring[stage * TILE + z + j * G::kBdz];
        }
        logit[h][j] = valid[j] ? sc : PAGESIM_NEG_INF;  // a select: garbage (stale or poison) never leaks
        tile_max = fmaxf(tile_max, logit[h][j]);
      }
      m_new[h] = fmaxf(m[h], tile_max);
      // 0 while m is -inf; 1 while no valid token has been seen at all (then acc and l are 0 anyway)
      const float alpha = m_new[h] == PAGESIM_NEG_INF ? 1.f : __expf(m[h] - m_new[h]);
      l[h] *= alpha;
#pragma unroll
      for (int e = 0; e < VEC; ++e) acc[h][e] *= alpha;
      m[h] = m_new[h];
    }
#pragma unroll
    for (int j = 0; j < G::kTokPerThread; ++j) {
      if (!valid[j]) continue;  // masked tokens are never read (their V rows may be stale or poison)
      const int tt = z + j * G::kBdz;
      float pv[HPT];
#pragma unroll
      for (int h = 0; h < HPT; ++h) {
        const float p = __expf(logit[h][j] - m_new[h]);
        l[h] += p;
        pv[h] = p;
        if constexpr (kQuant) {
          if (token_scales) pv[h] *= vs_ring[stage * TILE + tt];
        }
      }
      const C* row = vt + tt * HEAD_DIM;
#pragma unroll
      for (int c = 0; c < VEC / G::kVec16; ++c) {
        float vv[G::kVec16];
        load_vec16(row + c * G::kVec16, vv);
#pragma unroll
        for (int h = 0; h < HPT; ++h)
#pragma unroll
          for (int e = 0; e < G::kVec16; ++e) acc[h][c * G::kVec16 + e] += pv[h] * vv[e];
      }
    }
    __syncthreads();  // everyone is done with `stage` before it is refilled
  }

  // merge the token slots z of each query head: (m, l, acc) per thread -> shared memory (the ring)
  float* acc_s = reinterpret_cast<float*>(ring);  // [kBdz][QG][HEAD_DIM]
  float* m_s = acc_s + G::kBdz * QG * HEAD_DIM;   // [kBdz][QG]
  float* l_s = m_s + G::kBdz * QG;
#pragma unroll
  for (int h = 0; h < HPT; ++h) {
    const int g = z * QG + y * HPT + h;
#pragma unroll
    for (int e = 0; e < VEC; ++e) acc_s[g * HEAD_DIM + x * VEC + e] = acc[h][e];
    if (x == 0) {
      m_s[g] = m[h];
      l_s[g] = l[h];
    }
  }
  __syncthreads();
  for (int idx = tid; idx < QG * HEAD_DIM; idx += NT) {
    const int g = idx / HEAD_DIM, d = idx % HEAD_DIM;
    float m_all = PAGESIM_NEG_INF;
#pragma unroll
    for (int w = 0; w < G::kBdz; ++w) m_all = fmaxf(m_all, m_s[w * QG + g]);
    float l_all = 0.f, o = 0.f;
#pragma unroll
    for (int w = 0; w < G::kBdz; ++w) {
      const float lw = l_s[w * QG + g];
      const float weight = lw > 0.f ? __expf(m_s[w * QG + g] - m_all) : 0.f;  // slots without tokens weigh 0
      l_all += lw * weight;
      o += weight * acc_s[(w * QG + g) * HEAD_DIM + d];
    }
    const float inv = l_all > 0.f ? v_scale * v_static / l_all : 0.f;  // empty context -> zeros
    const long long seq_head = static_cast<long long>(seq) * num_heads + head0 + g;
    if (partition_size > 0) {
      tmp_out[(seq_head * num_parts + part) * HEAD_DIM + d] = o * inv;
      if (d == 0) {
        exp_sums[seq_head * num_parts + part] = l_all;
        max_logits[seq_head * num_parts + part] = m_all;
      }
    } else {
      out[seq_head * HEAD_DIM + d] = from_float<T>(o * inv);
    }
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
  extern "C" __global__ void __launch_bounds__(pagesim::DecodeGeometry<C>::kThreads,                                \
                                               pagesim::DecodeGeometry<C>::kMinBlocks) paged_decode_##SUF(                    \
      PAGESIM_DECODE_PARAMS(T, C), const int* __restrict__ block_tables, const int* __restrict__ context_lens,        \
      int num_kv_heads, int max_blocks_per_seq, int partition_size, int window, float scale, float k_scale,           \
      float v_scale SCALE_PARAMS) {                                                                                   \
    pagesim::decode_attention<T, C>(out, tmp_out, exp_sums, max_logits, q, k_cache, v_cache,                          \
                                    pagesim::PagedTiles{block_tables, max_blocks_per_seq}, context_lens,              \
                                    num_kv_heads, partition_size, window, scale, k_scale, v_scale, SCALES);           \
  }                                                                                                                   \
  extern "C" __global__ void __launch_bounds__(pagesim::DecodeGeometry<C>::kThreads,                                \
                                               pagesim::DecodeGeometry<C>::kMinBlocks) contiguous_decode_##SUF(               \
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
