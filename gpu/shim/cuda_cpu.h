// cuda_cpu.h -- run CUDA C kernel source on the CPU, for tests (pagesim's CPU shim).
//
// Force-included by gpu/cpu_backend.py:  g++ -std=c++20 -include cuda_cpu.h -I shim/include kernel.cu
// Execution model:
//   * every CUDA thread of a block is a user-level fiber (own mmap'd stack with a guard page; an
//     x86-64 asm context switch, ucontext elsewhere). All fibers of a block run on ONE OS thread,
//     so `__shared__` (= block-scope thread_local) is one copy per block in flight;
//   * blocks are handed to a pool of OS threads (workers; default = number of cores);
//   * __syncthreads(), __syncwarp() and the warp intrinsics are sync points: the fiber deposits its
//     operands and yields; a per-block scheduler releases a group once every participant arrived
//     and computes shuffle / vote results itself;
//   * CUDA rules are checked and reported as launch errors instead of hangs: barriers at different
//     call sites or after threads exited, masks naming exited or missing lanes, lanes of one mask at
//     different intrinsics, shuffles reading lanes outside the mask, deadlocks, launch limits.
//   * the order in which runnable fibers resume is forward, reverse or seeded-random per pass, so a
//     missing barrier shows up as a result that depends on the schedule.
// No lockstep warps: each lane runs to its next sync point (the Volta+ independent-thread model).
// This file: the per-block scheduler, the rule checks, launches and exports; the fibers are in
// cuda_cpu_fibers.h, the CUDA types and intrinsics in cuda_cpu_types.h.
#pragma once
#include "cuda_cpu_fibers.h"

#include <algorithm>
#include <mutex>
#include <thread>
#include <utility>
#include <dlfcn.h>
#include <link.h>

namespace cuda_cpu {

// ---- sync points, called from kernel code through the macros at the end of this file ----
inline void syncthreads(const char* file, int line, int id) {
  Fiber* f = t_fiber;
  f->state = State::kAtBarrier;
  f->site = {file, line, id};
  yield_to_scheduler();
}

inline uint64_t warp_op(const char* file, int line, int id, WarpOp op, unsigned mask, uint64_t in, int arg,
                        int width) {
  Fiber* f = t_fiber;
  f->state = State::kAtWarp;
  f->site = {file, line, id};
  f->op = op;
  f->mask = mask;
  f->in = in;
  f->arg = arg;
  f->width = width;
  yield_to_scheduler();
  return f->out;
}

template <class T> inline uint64_t to_bits(T v) {
  static_assert(sizeof(T) <= 8 && std::is_trivially_copyable_v<T>, "warp shuffle of an unsupported type");
  uint64_t b = 0;
  std::memcpy(&b, &v, sizeof(T));
  return b;
}
template <class T> inline T from_bits(uint64_t b) {
  T v;
  std::memcpy(&v, &b, sizeof(T));
  return v;
}

inline std::string describe(const Fiber& f) {
  const char* what = f.state == State::kRunnable   ? "runnable"
                     : f.state == State::kAtBarrier ? "__syncthreads"
                     : f.state == State::kDone      ? "exited"
                     : f.state == State::kTrapped   ? "trapped"
                                                    : op_name(f.op);
  char b[256];
  snprintf(b, sizeof b, "thread %d (warp %d lane %d): %s at %s:%d mask 0x%08x", f.linear, f.warp, f.lane, what,
           f.site.file, f.site.line, f.mask);
  return b;
}

// Source lane of a shuffle for `lane` (CUDA Programming Guide semantics, width-segmented).
inline int shuffle_source(WarpOp op, int lane, int arg, int width) {
  const int seg = lane & ~(width - 1);
  switch (op) {
    case WarpOp::kShflIdx: return seg + (arg & (width - 1));
    case WarpOp::kShflUp: return (lane - seg) >= arg ? lane - arg : lane;
    case WarpOp::kShflDown: return (lane - seg) + arg < width ? lane + arg : lane;
    case WarpOp::kShflXor: {
      const int src = lane ^ arg;
      return (src >= seg + width || src > 31) ? lane : src;
    }
    default: return lane;
  }
}

// Complete every warp group whose lanes have all arrived. False (with w.error) on a rule violation.
inline bool resolve_warps(Worker& w, int nthreads, bool& progressed) {
  progressed = false;
  char buf[512];
  for (int wi = 0; wi * 32 < nthreads; ++wi) {
    Fiber* lanes = &w.fibers[wi * 32];
    const int nlanes = std::min(32, nthreads - wi * 32);
    for (int l = 0; l < nlanes; ++l) {
      const Fiber& f = lanes[l];
      if (f.state != State::kAtWarp) continue;
      if (!(f.mask >> l & 1u)) {
        snprintf(buf, sizeof buf, "%s at %s:%d: calling lane %d is not in its mask 0x%08x (warp %d)", op_name(f.op),
                 f.site.file, f.site.line, l, f.mask, wi);
        w.error = buf;
        return false;
      }
      bool ready = true;
      for (int m = 0; m < 32 && ready; ++m) {
        if (!(f.mask >> m & 1u)) continue;
        if (m >= nlanes || lanes[m].state == State::kDone || lanes[m].state == State::kTrapped) {
          snprintf(buf, sizeof buf, "%s at %s:%d (warp %d): mask 0x%08x names lane %d, which %s", op_name(f.op),
                   f.site.file, f.site.line, wi, f.mask, m, m >= nlanes ? "does not exist (partial warp)" : "has exited");
          w.error = buf;
          return false;
        }
        const Fiber& g = lanes[m];
        ready = g.state == State::kAtWarp && g.op == f.op && g.site == f.site && g.mask == f.mask;
      }
      if (!ready) continue;
      const unsigned mask = f.mask;
      const int width = f.width;
      if (width <= 0 || width > 32 || (width & (width - 1))) {
        snprintf(buf, sizeof buf, "%s at %s:%d: width %d is not a power of two <= 32", op_name(f.op), f.site.file,
                 f.site.line, width);
        w.error = buf;
        return false;
      }
      unsigned ballot = 0;
      for (int m = 0; m < 32; ++m)
        if (mask >> m & 1u) ballot |= static_cast<unsigned>(lanes[m].in != 0) << m;
      for (int m = 0; m < 32; ++m) {
        if (!(mask >> m & 1u)) continue;
        Fiber& g = lanes[m];
        if (g.op >= WarpOp::kShflIdx && g.op <= WarpOp::kShflXor) {
          const int src = shuffle_source(g.op, m, g.arg, width);
          if (!(mask >> src & 1u)) {
            snprintf(buf, sizeof buf, "%s at %s:%d (warp %d): lane %d reads lane %d, which is not in mask 0x%08x",
                     op_name(g.op), g.site.file, g.site.line, wi, m, src, mask);
            w.error = buf;
            return false;
          }
          g.out = lanes[src].in;
        } else if (g.op == WarpOp::kBallot) {
          g.out = ballot;
        } else if (g.op == WarpOp::kAny) {
          g.out = ballot != 0;
        } else if (g.op == WarpOp::kAll) {
          g.out = ballot == mask;
        }
      }
      for (int m = 0; m < 32; ++m)
        if (mask >> m & 1u) lanes[m].state = State::kRunnable;
      progressed = true;
    }
  }
  return true;
}

// Run all fibers of one block to completion. False (with w.error) on a trap or a rule violation.
inline bool run_block(Worker& w, int nthreads) {
  std::vector<int> order(nthreads);
  for (int i = 0; i < nthreads; ++i) order[i] = g_config.schedule == 1 ? nthreads - 1 - i : i;
  for (;;) {
    if (g_config.schedule == 2) std::shuffle(order.begin(), order.end(), w.rng);
    bool ran = false;
    for (int i : order) {
      Fiber& f = w.fibers[i];
      if (f.state != State::kRunnable) continue;
      resume(&w, &f);
      ran = true;
      if (f.state == State::kTrapped) return false;
    }
    bool progressed = false;
    if (!resolve_warps(w, nthreads, progressed)) return false;
    if (ran || progressed) continue;
    // Nothing runnable and no warp group complete: a block barrier, the end, or a deadlock.
    int done = 0, at_warp = 0, at_barrier = 0;
    bool mixed_sites = false;
    Site barrier_site;
    for (int i = 0; i < nthreads; ++i) {
      const Fiber& f = w.fibers[i];
      if (f.state == State::kDone) {
        ++done;
      } else if (f.state == State::kAtWarp) {
        ++at_warp;
      } else if (f.state == State::kAtBarrier) {
        if (at_barrier && !(f.site == barrier_site)) mixed_sites = true;
        barrier_site = f.site;
        ++at_barrier;
      }
    }
    if (done == nthreads) return true;
    std::string err;
    if (at_warp) err = "deadlock: a warp intrinsic can never complete (its lanes wait elsewhere)";
    else if (mixed_sites) err = "__syncthreads() reached at different call sites (divergent barrier)";
    else if (done && g_config.strict) err = "__syncthreads() reached while other threads of the block have exited";
    if (!err.empty()) {
      int shown = 0;
      for (int i = 0; i < nthreads && shown < 8; ++i) {
        const Fiber& f = w.fibers[i];
        const Fiber* prev = i ? &w.fibers[i - 1] : nullptr;
        if (!prev || f.state != prev->state || !(f.site == prev->site) || f.op != prev->op) {
          err += "\n  " + describe(f);
          ++shown;
        }
      }
      w.error = err;
      return false;
    }
    for (int i = 0; i < nthreads; ++i)
      if (w.fibers[i].state == State::kAtBarrier) w.fibers[i].state = State::kRunnable;
  }
}

// ---- shared memory poisoning ----
// `__shared__` arrays are thread_locals of this module, so they all live in the module's TLS block
// for the worker thread. Filling that block with 0xFF at the start of every block makes a read of
// shared memory nobody wrote this block give NaN / -1 (on a GPU it is garbage), instead of a value
// left by the previous block. The shim's own thread_locals (indices, worker, fiber) are kept.
struct TlsBlock {
  unsigned char* base = nullptr;
  size_t size = 0;
};
inline int tls_size_of(struct dl_phdr_info* info, size_t, void* data) {
  auto* want = static_cast<std::pair<uintptr_t, size_t>*>(data);
  if (info->dlpi_addr != want->first) return 0;
  for (int i = 0; i < info->dlpi_phnum; ++i)
    if (info->dlpi_phdr[i].p_type == PT_TLS) want->second = info->dlpi_phdr[i].p_memsz;
  return 1;
}
inline TlsBlock module_tls_block() {
  TlsBlock r;
  Dl_info info;
  if (!dladdr(reinterpret_cast<void*>(&tls_size_of), &info) || !info.dli_fname) return r;
  std::pair<uintptr_t, size_t> want{reinterpret_cast<uintptr_t>(info.dli_fbase), 0};
  dl_iterate_phdr(tls_size_of, &want);
  void* handle = dlopen(info.dli_fname, RTLD_LAZY | RTLD_NOLOAD);
  if (!handle) return r;
  void* block = nullptr;
  threadIdx.x = 0;  // touch a thread_local so the calling thread's block is allocated
  if (dlinfo(handle, RTLD_DI_TLS_DATA, &block) == 0 && block) {
    r.base = static_cast<unsigned char*>(block);
    r.size = want.second;
  }
  dlclose(handle);
  return r;
}
inline void poison_shared_memory(const TlsBlock& tls) {
  if (!tls.base) return;
  const uint3 ti = threadIdx, bi = blockIdx;
  const dim3 bd = blockDim, gd = gridDim;
  Worker* const w = t_worker;
  Fiber* const f = t_fiber;
  // These statics never have their address taken, so without this the compiler may assume the
  // memset cannot touch them and drop the "redundant" restores below. The asm makes them escape.
  asm volatile("" ::"r"(&threadIdx), "r"(&blockIdx), "r"(&blockDim), "r"(&gridDim), "r"(&t_worker), "r"(&t_fiber)
               : "memory");
  std::memset(tls.base, 0xff, tls.size);
  asm volatile("" ::: "memory");
  threadIdx = ti;
  blockIdx = bi;
  blockDim = bd;
  gridDim = gd;
  t_worker = w;
  t_fiber = f;
}

struct Launch {
  dim3 grid, block;
  size_t dyn_smem;
  void (*body)(void*);
  void* arg;
};

// Run a whole grid; returns an empty string on success, else the first error.
inline std::string launch(const Launch& L) {
  const unsigned nthreads = L.block.x * L.block.y * L.block.z;
  if (nthreads == 0 || nthreads > 1024 || L.block.x > 1024 || L.block.y > 1024 || L.block.z > 64)
    return "invalid block dimensions (CUDA limits: 1..1024 threads, z <= 64)";
  if (L.grid.x == 0 || L.grid.y == 0 || L.grid.z == 0 || L.grid.y > 65535 || L.grid.z > 65535)
    return "invalid grid dimensions (each >= 1; y and z <= 65535)";
  size_t cap = g_config.max_dyn_smem;
  for (const auto& d : dyn_smem_registry()) cap = std::min(cap, d.capacity);
  if (L.dyn_smem > cap) return "dynamic shared memory request of " + std::to_string(L.dyn_smem) + " bytes exceeds the " +
                               std::to_string(cap) + "-byte limit";
  const size_t nblocks = static_cast<size_t>(L.grid.x) * L.grid.y * L.grid.z;
  unsigned nworkers = g_config.workers > 0 ? static_cast<unsigned>(g_config.workers)
                                           : std::max(1u, std::thread::hardware_concurrency());
  nworkers = static_cast<unsigned>(std::min<size_t>(nworkers, nblocks));
  std::atomic<size_t> next{0};
  std::atomic<bool> failed{false};
  // The lowest failing block's error: blocks are taken in increasing order and a worker stops only
  // before taking a new one, so every block below a failed one runs; the report is deterministic.
  std::string first_error;
  size_t first_failed = SIZE_MAX;
  std::mutex mu;
  auto work = [&](unsigned worker_id) {
    Worker w;
    w.fibers.resize(nthreads);
    w.body = L.body;
    w.body_arg = L.arg;
    t_worker = &w;
    blockDim = L.block;
    gridDim = L.grid;
    (void)worker_id;
    const TlsBlock tls = module_tls_block();
    for (;;) {
      const size_t b = next.fetch_add(1);
      if (b >= nblocks || failed.load()) break;
      blockIdx = {static_cast<unsigned>(b % L.grid.x), static_cast<unsigned>((b / L.grid.x) % L.grid.y),
                  static_cast<unsigned>(b / (static_cast<size_t>(L.grid.x) * L.grid.y))};
      w.rng.seed(g_config.seed * 1000003u + static_cast<unsigned>(b));  // same order whatever the worker
      if (tls.base) {
        poison_shared_memory(tls);  // static and dynamic __shared__ alike
      } else {  // no TLS block found (unusual loader): poison at least the dynamic arrays
        for (const auto& d : dyn_smem_registry()) std::memset(d.get(), 0xff, std::min(d.capacity, L.dyn_smem));
      }
      for (unsigned i = 0; i < nthreads; ++i) {
        Fiber& f = w.fibers[i];
        f.linear = static_cast<int>(i);
        f.warp = static_cast<int>(i / 32);
        f.lane = static_cast<int>(i % 32);
        f.tid = {i % L.block.x, (i / L.block.x) % L.block.y, i / (L.block.x * L.block.y)};
        f.state = State::kRunnable;
        f.site = {};
        f.mask = 0;
        prepare_fiber_stack(f);
      }
      if (!run_block(w, static_cast<int>(nthreads))) {
        std::lock_guard<std::mutex> g(mu);
        failed.store(true);
        if (b < first_failed) {
          first_failed = b;
          char where[96];
          snprintf(where, sizeof where, "block (%u,%u,%u): ", blockIdx.x, blockIdx.y, blockIdx.z);
          first_error = where + w.error;
        }
        break;
      }
    }
    t_worker = nullptr;
  };
  if (nworkers <= 1) {
    work(0);
  } else {
    std::vector<std::thread> threads;
    for (unsigned i = 0; i < nworkers; ++i) threads.emplace_back(work, i);
    for (auto& t : threads) t.join();
  }
  return first_error;
}

// ---- typed entry points, generated per extern "C" kernel by CUDA_CPU_EXPORT_KERNEL ----
template <class... A> struct KernelCall {
  void (*fn)(A...);
  void** args;  // cuLaunchKernel-style: pointers to the argument values
  template <size_t... I> void call(std::index_sequence<I...>) {
    fn(*static_cast<std::remove_cv_t<A>*>(args[I])...);
  }
  static void run(void* self) { static_cast<KernelCall*>(self)->call(std::index_sequence_for<A...>{}); }
};

template <class... A>
inline int launch_kernel(void (*fn)(A...), const unsigned* g, const unsigned* b, size_t smem, void** args, int nargs,
                         char* err, size_t errlen) {
  if (nargs != static_cast<int>(sizeof...(A))) {
    snprintf(err, errlen, "expected %zu kernel arguments, got %d", sizeof...(A), nargs);
    return 1;
  }
  KernelCall<A...> call{fn, args};
  const std::string e = launch({dim3(g[0], g[1], g[2]), dim3(b[0], b[1], b[2]), smem, &KernelCall<A...>::run, &call});
  if (!e.empty()) {
    snprintf(err, errlen, "%s", e.c_str());
    return 1;
  }
  return 0;
}

// Parameter description for the Python side: kind 0 scalar / 1 pointer, byte size, pointee size
// (0 for void and 1-byte types, which accept any array), pointee alignment.
template <class T> inline void describe_param(int* kind, size_t* size, size_t* pointee, size_t* align) {
  *size = sizeof(T);
  *pointee = 0;
  *align = 0;
  *kind = 0;
  if constexpr (std::is_pointer_v<T>) {
    using P = std::remove_cv_t<std::remove_pointer_t<T>>;
    *kind = 1;
    if constexpr (!std::is_void_v<P>) {
      *pointee = sizeof(P) == 1 ? 0 : sizeof(P);
      *align = alignof(P);
    }
  }
}
template <class... A>
inline int signature(void (*)(A...), int* kinds, size_t* sizes, size_t* pointees, size_t* aligns, int max) {
  int i = 0;
  ((i < max ? (describe_param<A>(&kinds[i], &sizes[i], &pointees[i], &aligns[i]), ++i) : ++i), ...);
  return static_cast<int>(sizeof...(A));
}

inline void syncwarp_(const char* file, int line, int id, unsigned mask = 0xffffffffu) {
  warp_op(file, line, id, WarpOp::kSyncwarp, mask, 0, 0, 32);
}
template <class T>
inline T shfl_(const char* file, int line, int id, WarpOp op, unsigned mask, T var, int arg, int width = 32) {
  return from_bits<T>(warp_op(file, line, id, op, mask, to_bits(var), arg, width));
}

}  // namespace cuda_cpu

// ---------------------------------------------------------------------------------------------
// CUDA sync and warp intrinsics; the macros capture the call site for the divergence checks
// ---------------------------------------------------------------------------------------------
#define __syncthreads() ::cuda_cpu::syncthreads(__FILE__, __LINE__, __COUNTER__)
#define __syncwarp(...) ::cuda_cpu::syncwarp_(__FILE__, __LINE__, __COUNTER__ __VA_OPT__(, ) __VA_ARGS__)
#define CUDA_CPU_SITE_ __FILE__, __LINE__, __COUNTER__
#define __shfl_sync(...) ::cuda_cpu::shfl_(CUDA_CPU_SITE_, ::cuda_cpu::WarpOp::kShflIdx, __VA_ARGS__)
#define __shfl_up_sync(...) ::cuda_cpu::shfl_(CUDA_CPU_SITE_, ::cuda_cpu::WarpOp::kShflUp, __VA_ARGS__)
#define __shfl_down_sync(...) ::cuda_cpu::shfl_(CUDA_CPU_SITE_, ::cuda_cpu::WarpOp::kShflDown, __VA_ARGS__)
#define __shfl_xor_sync(...) ::cuda_cpu::shfl_(CUDA_CPU_SITE_, ::cuda_cpu::WarpOp::kShflXor, __VA_ARGS__)
#define __ballot_sync(mask, pred) \
  (static_cast<unsigned>(::cuda_cpu::warp_op(CUDA_CPU_SITE_, ::cuda_cpu::WarpOp::kBallot, (mask), (pred) ? 1 : 0, 0, 32)))
#define __any_sync(mask, pred) \
  (static_cast<int>(::cuda_cpu::warp_op(CUDA_CPU_SITE_, ::cuda_cpu::WarpOp::kAny, (mask), (pred) ? 1 : 0, 0, 32)))
#define __all_sync(mask, pred) \
  (static_cast<int>(::cuda_cpu::warp_op(CUDA_CPU_SITE_, ::cuda_cpu::WarpOp::kAll, (mask), (pred) ? 1 : 0, 0, 32)))
#define __trap() ::cuda_cpu::trap("__trap()", __FILE__, __LINE__)
#define __activemask() 0xffffffffu /* approximation: no lockstep warps to ask */

// ---- exports used by the translation unit that cpu_backend.py generates ----
// Modules are built with -fvisibility=hidden: only these entry points are visible to ctypes.
#define CUDA_CPU_EXPORT __attribute__((visibility("default")))
#define CUDA_CPU_EXPORT_KERNEL(name)                                                                              \
  extern "C" CUDA_CPU_EXPORT int cuda_cpu_launch__##name(const unsigned* g, const unsigned* b, size_t smem, void** args, int nargs, \
                                         char* err, size_t errlen) {                                              \
    return ::cuda_cpu::launch_kernel(&name, g, b, smem, args, nargs, err, errlen);                                \
  }                                                                                                               \
  extern "C" CUDA_CPU_EXPORT int cuda_cpu_signature__##name(int* kinds, size_t* sizes, size_t* pointees, size_t* aligns, int max) { \
    return ::cuda_cpu::signature(&name, kinds, sizes, pointees, aligns, max);                                     \
  }

// Defined before the kernel text: g++ otherwise calls an undefined weak TLS-init function for a
// block-scope `extern thread_local` declaration and jumps to address 0.
#define CUDA_CPU_DEFINE_DYN_SMEM(type, name, bytes)                  \
  alignas(16) thread_local type name[(bytes) / sizeof(type)];        \
  static int cuda_cpu_dyn_smem_registered_##name =                   \
      ::cuda_cpu::register_dyn_smem([]() -> void* { return static_cast<void*>(name); }, sizeof(name));

#define CUDA_CPU_EXPORT_CONFIG()                                                                           \
  extern "C" CUDA_CPU_EXPORT void cuda_cpu_configure(int schedule, unsigned seed, int strict, int workers, size_t stack_kb) { \
    ::cuda_cpu::g_config.schedule = schedule;                                                              \
    ::cuda_cpu::g_config.seed = seed;                                                                      \
    ::cuda_cpu::g_config.strict = strict != 0;                                                             \
    ::cuda_cpu::g_config.workers = workers;                                                                \
    if (stack_kb) ::cuda_cpu::g_config.stack_bytes = stack_kb * 1024;                                      \
  }
