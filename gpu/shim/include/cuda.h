// cuda.h for the CPU build of pagesim's kernels: the types and intrinsics it would declare live in
// ../cuda_cpu_types.h (cuda_cpu.h, which includes it, is force-included by gpu/cpu_backend.py).
#pragma once
#include "../cuda_cpu_types.h"
