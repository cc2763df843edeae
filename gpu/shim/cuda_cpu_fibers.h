// cuda_cpu_fibers.h -- the fiber runtime of pagesim's CPU shim: one user-level fiber per CUDA thread
// (own mmap'd stack with a guard page; x86-64 asm context switch, ucontext elsewhere), the worker
// that owns a block's fibers, and the switches between a fiber and the block's scheduler
// (cuda_cpu.h), with the AddressSanitizer annotations that make fiber stacks visible to ASan.
#pragma once
#include "cuda_cpu_types.h"

#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>
#include <sys/mman.h>
#include <unistd.h>
#if !defined(__x86_64__)
#include <ucontext.h>
#endif
#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/common_interface_defs.h>
#endif

namespace cuda_cpu {

enum class State : int { kRunnable, kAtBarrier, kAtWarp, kDone, kTrapped };
enum class WarpOp : int { kSyncwarp, kShflIdx, kShflUp, kShflDown, kShflXor, kBallot, kAny, kAll };

inline const char* op_name(WarpOp op) {
  static const char* names[] = {"__syncwarp",     "__shfl_sync",     "__shfl_up_sync", "__shfl_down_sync",
                                "__shfl_xor_sync", "__ballot_sync", "__any_sync",     "__all_sync"};
  return names[static_cast<int>(op)];
}

// A call site of a sync point (file, line and a per-expansion __COUNTER__ id, so two barriers on one
// line differ); barriers and warp groups must agree on it.
struct Site {
  const char* file = "";
  int line = 0;
  int id = -1;
  bool operator==(const Site& o) const { return id == o.id && line == o.line && std::strcmp(file, o.file) == 0; }
};

struct Fiber {
  void* sp = nullptr;
  unsigned char* stack = nullptr;
  size_t stack_size = 0;
#if !defined(__x86_64__)
  ucontext_t uc;
#endif
#if defined(__SANITIZE_ADDRESS__)
  void* asan_fake_stack = nullptr;
#endif
  uint3 tid{};
  int linear = 0, warp = 0, lane = 0;
  State state = State::kRunnable;
  Site site;
  WarpOp op = WarpOp::kSyncwarp;
  unsigned mask = 0;
  int arg = 0, width = 32;  // srcLane / delta / laneMask, and the segment width
  uint64_t in = 0, out = 0;  // deposited operand bits and result bits
};

struct Config {
  int schedule = 0;  // 0 forward, 1 reverse, 2 random (seeded per block and pass)
  unsigned seed = 1;
  bool strict = true;  // a __syncthreads() after other threads of the block exited is an error
  int workers = 0;     // 0: std::thread::hardware_concurrency()
  size_t stack_bytes = 256 * 1024;
  size_t max_dyn_smem = 48 * 1024;  // CUDA's limit without the opt-in attribute
};
inline Config g_config;

// extern __shared__ arrays, defined by the generated translation unit (see CUDA_CPU_DEFINE_DYN_SMEM)
struct DynSmem {
  void* (*get)();
  size_t capacity;
};
inline std::vector<DynSmem>& dyn_smem_registry() {
  static std::vector<DynSmem> r;
  return r;
}
inline int register_dyn_smem(void* (*get)(), size_t capacity) {
  dyn_smem_registry().push_back({get, capacity});
  return 0;
}

struct Worker {
  void* scheduler_sp = nullptr;
#if !defined(__x86_64__)
  ucontext_t scheduler_uc;
#endif
#if defined(__SANITIZE_ADDRESS__)
  const void* scheduler_stack_bottom = nullptr;
  size_t scheduler_stack_size = 0;
#endif
  std::vector<Fiber> fibers;
  void (*body)(void*) = nullptr;
  void* body_arg = nullptr;
  std::string error;
  std::mt19937 rng;
  ~Worker() {
    for (auto& f : fibers)
      if (f.stack) munmap(f.stack, f.stack_size);
  }
};
static thread_local Worker* t_worker = nullptr;
static thread_local Fiber* t_fiber = nullptr;

#if defined(__x86_64__)
// Push the callee-saved registers, save rsp in *save, load `to`, pop and return into the other
// context. MXCSR / x87 control words are not switched: kernels never change FP modes and saving
// them cost a third of the switch time.
static __attribute__((naked, noinline)) void context_switch(void** /*save*/, void* /*to*/) {
  asm volatile(
      "pushq %rbp\n\tpushq %rbx\n\tpushq %r12\n\tpushq %r13\n\tpushq %r14\n\tpushq %r15\n\t"
      "movq %rsp, (%rdi)\n\tmovq %rsi, %rsp\n\t"
      "popq %r15\n\tpopq %r14\n\tpopq %r13\n\tpopq %r12\n\tpopq %rbx\n\tpopq %rbp\n\tret\n\t");
}
#endif

// fiber -> scheduler. `exiting`: the fiber never resumes (ASan drops its fake stack).
inline void yield_to_scheduler(bool exiting = false) {
  Worker* w = t_worker;
  Fiber* f = t_fiber;
#if defined(__SANITIZE_ADDRESS__)
  __sanitizer_start_switch_fiber(exiting ? nullptr : &f->asan_fake_stack, w->scheduler_stack_bottom,
                                 w->scheduler_stack_size);
#else
  (void)exiting;
#endif
#if defined(__x86_64__)
  context_switch(&f->sp, w->scheduler_sp);
#else
  swapcontext(&f->uc, &w->scheduler_uc);
#endif
#if defined(__SANITIZE_ADDRESS__)
  __sanitizer_finish_switch_fiber(f->asan_fake_stack, nullptr, nullptr);
#endif
}

// scheduler -> fiber
inline void resume(Worker* w, Fiber* f) {
  t_fiber = f;
  threadIdx = f->tid;
#if defined(__SANITIZE_ADDRESS__)
  void* fake = nullptr;
  const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  __sanitizer_start_switch_fiber(&fake, f->stack + page, f->stack_size - page);
#endif
#if defined(__x86_64__)
  context_switch(&w->scheduler_sp, f->sp);
#else
  swapcontext(&w->scheduler_uc, &f->uc);
#endif
#if defined(__SANITIZE_ADDRESS__)
  __sanitizer_finish_switch_fiber(fake, nullptr, nullptr);
#endif
}

[[noreturn]] inline void fiber_main() {
#if defined(__SANITIZE_ADDRESS__)
  __sanitizer_finish_switch_fiber(nullptr, &t_worker->scheduler_stack_bottom, &t_worker->scheduler_stack_size);
#endif
  t_worker->body(t_worker->body_arg);
  t_fiber->state = State::kDone;
  yield_to_scheduler(true);
  __builtin_trap();  // never resumed
}

inline void prepare_fiber_stack(Fiber& f) {
  const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  if (!f.stack) {
    f.stack_size = g_config.stack_bytes;
    void* p = mmap(nullptr, f.stack_size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED) {
      perror("cuda_cpu: mmap fiber stack");
      abort();
    }
    mprotect(p, page, PROT_NONE);  // guard page: a stack overflow faults instead of corrupting memory
    f.stack = static_cast<unsigned char*>(p);
  }
#if defined(__x86_64__)
  // Frame popped by context_switch: r15 r14 r13 r12 rbx rbp, then `ret` into fiber_main with
  // rsp == 8 (mod 16) as after a call; the slot above is fiber_main's (null) return address.
  const uintptr_t top = (reinterpret_cast<uintptr_t>(f.stack) + f.stack_size) & ~static_cast<uintptr_t>(15);
  uint64_t* frame = reinterpret_cast<uint64_t*>(top - 64);
  for (int i = 0; i < 6; ++i) frame[i] = 0;
  frame[6] = reinterpret_cast<uint64_t>(&fiber_main);
  frame[7] = 0;
  f.sp = frame;
#else
  getcontext(&f.uc);
  f.uc.uc_stack.ss_sp = f.stack + page;
  f.uc.uc_stack.ss_size = f.stack_size - page;
  f.uc.uc_link = nullptr;
  makecontext(&f.uc, reinterpret_cast<void (*)()>(fiber_main), 0);
#endif
}

[[noreturn]] inline void trap(const char* what, const char* file, int line) {
  char buf[512];
  snprintf(buf, sizeof buf, "%s at %s:%d, thread (%u,%u,%u)", what, file, line, threadIdx.x, threadIdx.y,
           threadIdx.z);
  if (t_worker->error.empty()) t_worker->error = buf;
  t_fiber->state = State::kTrapped;
  yield_to_scheduler(true);
  __builtin_trap();
}

}  // namespace cuda_cpu
