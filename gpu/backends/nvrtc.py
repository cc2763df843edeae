"""Compile CUDA C with NVRTC, the compiler CuPy's RawModule uses, without a GPU, and read ptxas's
resource usage (registers, shared memory, stack, spills) per kernel, plus an occupancy estimate.

Only the low-level `cupy.cuda.nvrtc` bindings are used: CuPy's higher-level compile helpers query
the device and fail with cudaErrorInsufficientDriver on a machine without one. CuPy's own RawModule
options (-ftz=true, --device-as-default-execution-space) are added so the check sees what CuPy builds.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from typing import Any

from gpu.kernels import KERNEL_DIR, define_options, kernel_source

CUPY_OPTIONS = ("-ftz=true", "--device-as-default-execution-space", "-std=c++17")
ARCHS = ("sm_80", "sm_90")

_ENTRY = re.compile(r"Compiling entry function '(\w+)' for '(\w+)'")
_STACK = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_USED = re.compile(r"Used (\d+) registers")
_SMEM = re.compile(r"(\d+) bytes smem")
_FUNC = re.compile(r"Function properties for (\w+)")

# Per-SM limits for the occupancy estimate (CUDA C Programming Guide, compute capabilities table).
_SM_LIMITS = {
    "sm_80": {"regs": 65536, "smem": 164 * 1024, "threads": 2048, "blocks": 32, "warps": 64},
    "sm_90": {"regs": 65536, "smem": 228 * 1024, "threads": 2048, "blocks": 32, "warps": 64},
}


class NvrtcUnavailable(RuntimeError):
    """cupy's NVRTC bindings or the CUDA headers (cuda_fp16.h) cannot be found."""


class CompileError(RuntimeError):
    """NVRTC rejected the source; the message holds NVRTC's log."""


@dataclass(slots=True)
class KernelResources:
    """ptxas's figures for one kernel on one architecture."""

    name: str
    arch: str
    registers: int = 0
    smem_bytes: int = 0
    stack_bytes: int = 0
    spill_stores: int = 0
    spill_loads: int = 0

    @property
    def spills(self) -> bool:
        return self.spill_stores > 0 or self.spill_loads > 0

    def occupancy(self, threads_per_block: int) -> float:
        """Estimated fraction of the SM's warp slots in use (registers, smem, threads, blocks limits)."""
        lim = _SM_LIMITS.get(self.arch, _SM_LIMITS["sm_80"])
        warps = -(-threads_per_block // 32)
        regs_per_warp = -(-max(self.registers, 1) * 32 // 256) * 256  # allocated in units of 256
        by_regs = lim["regs"] // (regs_per_warp * warps)
        by_smem = lim["smem"] // max(self.smem_bytes + 1024, 1) if self.smem_bytes else lim["blocks"]  # 1 KiB reserved per block
        by_threads = lim["threads"] // (warps * 32)
        blocks = max(0, min(by_regs, by_smem, by_threads, lim["blocks"]))
        return min(1.0, blocks * warps / lim["warps"])


@dataclass(slots=True)
class CompileResult:
    """One NVRTC compile: options used, the log, and resources per kernel."""

    arch: str
    options: tuple[str, ...]
    log: str
    kernels: dict[str, KernelResources] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


def cuda_include_dir() -> str:
    """A directory holding cuda_fp16.h: $PAGESIM_CUDA_INCLUDE, the nvidia-cuda-runtime-cu12 (or 13.x) wheel,
    $CUDA_PATH/include or /usr/local/cuda/include (NVRTC has no built-in copy of these headers)."""
    candidates = []
    if env := os.environ.get("PAGESIM_CUDA_INCLUDE"):
        candidates.append(env)
    try:
        import nvidia.cuda_runtime as runtime_wheel

        candidates += [os.path.join(p, "include") for p in runtime_wheel.__path__]
    except ImportError:
        pass
    try:  # the CUDA 13 wheels (nvidia-cuda-runtime 13.x) keep their headers under nvidia/cu13/include
        import nvidia.cu13 as cu13_wheel

        candidates += [os.path.join(p, "include") for p in cu13_wheel.__path__]
    except ImportError:
        pass
    if cuda_path := os.environ.get("CUDA_PATH"):
        candidates.append(os.path.join(cuda_path, "include"))
    candidates.append("/usr/local/cuda/include")
    for c in candidates:
        if os.path.exists(os.path.join(c, "cuda_fp16.h")):
            return c
    raise NvrtcUnavailable(
        "cuda_fp16.h not found: install nvidia-cuda-runtime-cu12 (pip) or set PAGESIM_CUDA_INCLUDE "
        f"(looked in: {', '.join(candidates)})"
    )


def _nvrtc() -> Any:
    try:
        from cupy.cuda import nvrtc
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise NvrtcUnavailable(f"cupy's NVRTC bindings are unavailable ({e}); pip install cupy-cuda12x") from e
    return nvrtc


def nvrtc_version() -> tuple[int, int]:
    """(major, minor) of the NVRTC library CuPy loads."""
    major, minor = _nvrtc().getVersion()
    return int(major), int(minor)


def parse_ptxas_log(log: str, arch: str) -> dict[str, KernelResources]:
    """Per-kernel resources from a `-Xptxas=-v` log (NVRTC's program log or nvcc's stderr)."""
    rows: dict[str, KernelResources] = {}
    cur: KernelResources | None = None
    for line in log.splitlines():
        if m := _ENTRY.search(line):
            cur = rows.setdefault(m.group(1), KernelResources(m.group(1), m.group(2)))
        elif m := _FUNC.search(line):
            cur = rows.setdefault(m.group(1), KernelResources(m.group(1), arch))
        elif cur is not None and (m := _STACK.search(line)):
            cur.stack_bytes, cur.spill_stores, cur.spill_loads = int(m[1]), int(m[2]), int(m[3])
        elif cur is not None and (m := _USED.search(line)):
            cur.registers = int(m[1])
            if s := _SMEM.search(line):
                cur.smem_bytes = int(s[1])
    return rows


def compile_source(source: str, *, arch: str = "sm_90", options: tuple[str, ...] = (),
                   filename: str = "kernel.cu", include_dirs: tuple[str, ...] = ()) -> CompileResult:
    """Compile with NVRTC to a cubin for `arch`; raise CompileError with the log on failure."""
    nvrtc = _nvrtc()
    opts = (f"-arch={arch}", "-Xptxas=-v", *CUPY_OPTIONS, f"-I{cuda_include_dir()}", f"-I{KERNEL_DIR}",
            *(f"-I{d}" for d in include_dirs), *options)
    prog = nvrtc.createProgram(source, filename, [], [])
    try:
        try:
            nvrtc.compileProgram(prog, list(opts))
        except nvrtc.NVRTCError as e:
            raise CompileError(f"{filename} ({arch}, {' '.join(options)}): NVRTC failed:\n"
                               f"{nvrtc.getProgramLog(prog)}") from e
        log = nvrtc.getProgramLog(prog)
    finally:
        nvrtc.destroyProgram(prog)
    warnings = [ln for ln in log.splitlines() if "warning" in ln.lower()]
    return CompileResult(arch, opts, log, parse_ptxas_log(log, arch), warnings)


def compile_kernel_file(name: str, *, arch: str = "sm_90", defines: dict[str, int] | None = None) -> CompileResult:
    """Compile gpu/kernels/<name> with -D defines (e.g. {"HEAD_DIM": 128, "BLOCK_SIZE": 16}), from the
    same text (headers inlined) that the CuPy backend hands to cupy.RawModule."""

    return compile_source(kernel_source(name), arch=arch, options=define_options(defines or {}), filename=name)


def nvcc_resource_usage(name: str, *, arch: str = "sm_90", defines: dict[str, int] | None = None,
                        nvcc: str | None = None) -> dict[str, KernelResources]:
    """Cross-check with nvcc (`--resource-usage`, spills as errors). Raises FileNotFoundError when no
    nvcc is installed and CompileError when it rejects the source or spills registers."""
    exe = nvcc or shutil.which("nvcc")
    if exe is None:
        raise FileNotFoundError("nvcc not found on PATH")
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [exe, "-cubin", f"-arch={arch}", "--resource-usage", "-Xptxas=-warn-spills,-Werror", "-std=c++17",
               f"-I{KERNEL_DIR}", *(f"-D{k}={v}" for k, v in (defines or {}).items()),
               "-o", os.path.join(tmp, "k.cubin"), str(KERNEL_DIR / name)]
        r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode:
        raise CompileError(f"nvcc {name} ({arch}) failed:\n{r.stderr}")
    return parse_ptxas_log(r.stdout + r.stderr, arch)
