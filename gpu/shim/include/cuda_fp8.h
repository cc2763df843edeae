// cuda_fp8.h for the CPU build of pagesim's kernels: the fp8 types and conversions live in
// ../cuda_cpu_fp8.h (a subset of NVIDIA's header: what the kernels use, bit-compatible).
#pragma once
#include "../cuda_cpu_fp8.h"
