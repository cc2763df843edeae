// bandwidth.cu -- the read-bandwidth ceiling the decode benchmark reports beside the data-sheet peak.
// read_stream reads `n16` 16-byte words once (grid-stride, every lane a 16-byte load, like the decode
// kernel's copies) and folds them into one XOR per thread; a thread stores only if its fold equals
// `never` (a value the caller picks so that it does not happen), which keeps the loads alive without
// a write stream. The fraction of peak it reaches is what the decode kernel can hope for.
#include "common.cuh"

extern "C" __global__ void __launch_bounds__(256) read_stream(const unsigned* __restrict__ words, long long n16,
                                                              unsigned never, unsigned* __restrict__ sink) {
  const uint4* __restrict__ src = reinterpret_cast<const uint4*>(words);  // 16-byte aligned
  unsigned acc = 0;
  const long long stride = static_cast<long long>(gridDim.x) * blockDim.x;
  long long i = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x;
  // four independent loads in flight per iteration (memory-level parallelism without a pipeline)
  for (; i + 3 * stride < n16; i += 4 * stride) {
    const uint4 a = src[i], b = src[i + stride], c = src[i + 2 * stride], d = src[i + 3 * stride];
    acc ^= a.x ^ a.y ^ a.z ^ a.w ^ b.x ^ b.y ^ b.z ^ b.w ^ c.x ^ c.y ^ c.z ^ c.w ^ d.x ^ d.y ^ d.z ^ d.w;
  }
  for (; i < n16; i += stride) {
    const uint4 a = src[i];
    acc ^= a.x ^ a.y ^ a.z ^ a.w;
  }
  if (acc == never) sink[0] = acc;
}
