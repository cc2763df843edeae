"""Run CUDA C kernel source on the CPU: `CpuRawModule` builds the .cu text with g++ and the fiber shim
(gpu/shim/cuda_cpu.h) into a shared library and launches its extern "C" kernels on NumPy arrays,
with the call convention of `cupy.RawModule` / `cupy.RawKernel`:

    mod = CpuRawModule(code=src, options=("-DHEAD_DIM=128",))
    mod.get_function("paged_decode_f16")(grid, block, args, shared_mem=0)

Builds are cached by content hash in $PAGESIM_CUDA_CPU_CACHE (default ~/.cache/pagesim/cuda_cpu).
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import os
import re
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from gpu.kernels import KERNEL_DIR

SHIM_DIR = Path(__file__).resolve().parent.parent / "shim"
CACHE_ENV = "PAGESIM_CUDA_CPU_CACHE"
SCHEDULES = {"forward": 0, "reverse": 1, "random": 2}
DYN_SMEM_CAPACITY = 228 * 1024  # storage behind extern __shared__; launches are limited to 48 KiB

# -fno-strict-aliasing: kernels reinterpret 16-byte vectors as __half2 etc., as CUDA code does.
# -fno-extern-tls-init: see CUDA_CPU_DEFINE_DYN_SMEM in the shim.
# -fvisibility=hidden -fno-gnu-unique -Bsymbolic: every module keeps its own copy of the shim state and
# of each kernel's `__shared__` arrays (template statics). Without them, two modules loaded in one
# process (say HEAD_DIM 64 and 256) bind to one process-wide STB_GNU_UNIQUE copy sized for the first.
_BASE_FLAGS = ("-std=c++20", "-fPIC", "-shared", "-fno-strict-aliasing", "-fno-extern-tls-init",
               "-fvisibility=hidden", "-fvisibility-inlines-hidden", "-fno-gnu-unique", "-Wl,-Bsymbolic",
               "-Wall", "-Wno-unknown-pragmas", "-Wno-unused-variable", "-Wno-unused-function")
_OPT_FLAGS = ("-O2",)
_SANITIZE_FLAGS = ("-O1", "-g", "-fsanitize=address,undefined", "-fno-omit-frame-pointer",
                   "-fno-sanitize-recover=undefined")
_KERNEL_RE = re.compile(r'extern\s+"C"\s+__cuda_cpu_global__\s+void\s+(?:__attribute__\s*\(\(.*?\)\)\s*)?(\w+)\s*\(')
_DYN_SMEM_RE = re.compile(r"extern\s+thread_local\s+(?:__attribute__\s*\(\(\s*aligned\s*\(\s*\d+\s*\)\s*\)\)\s+)?"
                          r"([A-Za-z_][\w\s:]*?)\s+(\w+)\s*\[\s*\]\s*;")


class CpuKernelError(RuntimeError):
    """A build failure, a CUDA-rule violation found by the shim, or a trap inside a kernel."""


def cache_dir() -> Path:
    """Where built modules are kept: $PAGESIM_CUDA_CPU_CACHE, else $XDG_CACHE_HOME or ~/.cache."""
    if env := os.environ.get(CACHE_ENV):
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "pagesim" / "cuda_cpu"


def _cpu_options(options: Sequence[str]) -> list[str]:
    """Keep -D/-U/-I; drop NVRTC/nvcc-only options (-arch, -std, --use_fast_math, ...)."""
    out: list[str] = []
    it = iter(options)
    for o in it:
        if o in ("-D", "-U", "-I"):
            out += [o, next(it)]
        elif o.startswith(("-D", "-U", "-I")):
            out.append(o)
    return out


def _include_dirs(opts: Sequence[str]) -> list[Path]:
    dirs, it = [], iter(opts)
    for o in it:
        if o == "-I":
            dirs.append(Path(next(it)))
        elif o.startswith("-I"):
            dirs.append(Path(o[2:]))
    return dirs


def _headers_digest(dirs: Sequence[Path]) -> str:
    """Hash of every header the build can include, so editing one invalidates the cache."""
    h = hashlib.sha256()
    for d in dirs:
        if not d.is_dir():
            continue
        for p in sorted(d.rglob("*")):
            if p.suffix in (".h", ".cuh", ".hpp") and p.is_file():
                h.update(str(p).encode())
                h.update(p.read_bytes())
    return h.hexdigest()


def build(code: str, options: Sequence[str] = (), *, sanitize: bool = False, filename: str = "kernel.cu") -> Path:
    """Compile `code` into a shared library (cached by content); return its path."""
    opts = _cpu_options(options) + ["-I", str(KERNEL_DIR)]
    include_flags = ["-include", str(SHIM_DIR / "cuda_cpu.h"), "-I", str(SHIM_DIR / "include"), *opts]
    flags = [*_BASE_FLAGS, *(_SANITIZE_FLAGS if sanitize else _OPT_FLAGS)]
    cxx = os.environ.get("CXX", "g++")
    digest = _headers_digest([SHIM_DIR, *_include_dirs(opts)])
    key = hashlib.sha256("\0".join([code, filename, cxx, digest, *opts, *flags]).encode()).hexdigest()[:24]
    out_dir = cache_dir()
    out_dir.mkdir(parents=True, exist_ok=True)
    so = out_dir / f"{Path(filename).stem}_{key}.so"
    if so.exists():
        return so
    src = out_dir / f"{Path(filename).stem}_{key}.cu"
    src.write_text(f'#line 1 "{filename}"\n{code}')  # diagnostics (g++, ASan) name the original file
    # 1) preprocess with the scan marker to find extern "C" kernels and extern __shared__ arrays
    pre = subprocess.run([cxx, "-std=c++20", "-E", "-P", "-DCUDA_CPU_SCAN", *include_flags, "-x", "c++", str(src)],
                         capture_output=True, text=True)
    if pre.returncode:
        raise CpuKernelError(f"{filename}: preprocessing failed:\n{pre.stderr}")
    kernels = sorted(set(_KERNEL_RE.findall(pre.stdout)))
    if not kernels:
        raise CpuKernelError(f'{filename}: no extern "C" __global__ kernels found')
    dyn: dict[str, str] = {}
    for typ, name in _DYN_SMEM_RE.findall(pre.stdout):
        typ = " ".join(typ.split())
        if dyn.setdefault(name, typ) != typ:
            raise CpuKernelError(f"{filename}: extern __shared__ {name}[] declared as both {dyn[name]} and {typ}")
    # 2) a translation unit: dynamic shared memory first, then the source, then the exports
    tu = out_dir / f"{Path(filename).stem}_{key}_tu.cpp"
    lines = [f"CUDA_CPU_DEFINE_DYN_SMEM({t}, {n}, {DYN_SMEM_CAPACITY})" for n, t in dyn.items()]
    lines.append(f'#include "{src}"')
    lines += [f"CUDA_CPU_EXPORT_KERNEL({k})" for k in kernels]
    lines.append("CUDA_CPU_EXPORT_CONFIG()")
    tu.write_text("\n".join(lines) + "\n")
    tmp = so.with_suffix(f".tmp{os.getpid()}")
    r = subprocess.run([cxx, *flags, *include_flags, str(tu), "-o", str(tmp)], capture_output=True, text=True)
    if r.returncode:
        raise CpuKernelError(f"{filename}: g++ failed:\n{r.stderr}")
    os.replace(tmp, so)  # atomic: concurrent builders of the same key both succeed
    return so


class CpuRawKernel:
    """One extern "C" kernel of a CpuRawModule; call it like cupy.RawKernel."""

    def __init__(self, module: CpuRawModule, name: str) -> None:
        self.name = name
        self._module = module
        lib = module.lib
        try:
            self._launch = getattr(lib, f"cuda_cpu_launch__{name}")
            sig = getattr(lib, f"cuda_cpu_signature__{name}")
        except AttributeError:
            raise CpuKernelError(f'no extern "C" __global__ kernel named {name!r} in this module') from None
        self._launch.restype = ctypes.c_int
        self._launch.argtypes = [ctypes.POINTER(ctypes.c_uint), ctypes.POINTER(ctypes.c_uint), ctypes.c_size_t,
                                 ctypes.POINTER(ctypes.c_void_p), ctypes.c_int, ctypes.c_char_p, ctypes.c_size_t]
        n_max = 64
        kinds, sizes = (ctypes.c_int * n_max)(), (ctypes.c_size_t * n_max)()
        pointees, aligns = (ctypes.c_size_t * n_max)(), (ctypes.c_size_t * n_max)()
        n = sig(kinds, sizes, pointees, aligns, n_max)
        self.signature = [(kinds[i], sizes[i], pointees[i], aligns[i]) for i in range(n)]

    def _pack(self, args: Sequence[Any]) -> tuple[Any, list[Any]]:
        if len(args) != len(self.signature):
            raise TypeError(f"{self.name}: expected {len(self.signature)} arguments, got {len(args)}")
        keep: list[Any] = []
        ptrs = (ctypes.c_void_p * max(1, len(args)))()
        for i, (a, (kind, size, pointee, align)) in enumerate(zip(args, self.signature, strict=True)):
            where = f"{self.name} argument {i}"
            if kind == 1:
                if a is None:
                    v: Any = ctypes.c_void_p(0)
                else:
                    if not isinstance(a, np.ndarray):
                        raise TypeError(f"{where}: pointer parameter needs a NumPy array, got {type(a).__name__}")
                    if not a.flags.c_contiguous:
                        raise ValueError(f"{where}: array is not C-contiguous")
                    if pointee and a.dtype.itemsize != pointee:
                        raise TypeError(f"{where}: kernel expects {pointee}-byte elements, array dtype is {a.dtype}")
                    if align and a.ctypes.data % align:
                        raise ValueError(f"{where}: array address is not {align}-byte aligned")
                    v = ctypes.c_void_p(a.ctypes.data)
            else:
                # CuPy passes a Python int/float as 8-byte long long/double, which an int/float
                # parameter misreads on a GPU: demand NumPy scalars of the exact size instead.
                if not isinstance(a, np.generic):
                    raise TypeError(f"{where}: pass a NumPy scalar (np.int32, np.float32, ...), got "
                                    f"{type(a).__name__}")
                if a.dtype.itemsize != size:
                    raise TypeError(f"{where}: kernel parameter has {size} bytes, got {a.dtype} ({a.dtype.itemsize})")
                v = ctypes.create_string_buffer(a.tobytes(), size)
            keep.append(v)
            ptrs[i] = ctypes.addressof(v)  # cuLaunchKernel-style: an array of pointers to the values
        return ptrs, keep

    def __call__(self, grid: Sequence[int], block: Sequence[int], args: Sequence[Any], shared_mem: int = 0) -> None:
        g3 = tuple(int(x) for x in grid) + (1,) * (3 - len(grid))
        b3 = tuple(int(x) for x in block) + (1,) * (3 - len(block))
        ptrs, keep = self._pack(args)
        self._module._apply_config()  # modules loaded from one library share its configuration
        err = ctypes.create_string_buffer(8192)
        rc = self._launch((ctypes.c_uint * 3)(*g3), (ctypes.c_uint * 3)(*b3), int(shared_mem), ptrs, len(args),
                          err, len(err))
        del keep
        if rc:
            raise CpuKernelError(f"{self.name}: {err.value.decode(errors='replace')}")


class CpuRawModule:
    """Mirror of `cupy.RawModule(code=..., options=...)` that runs on the CPU.

    schedule: order in which a block's runnable threads resume ("forward", "reverse", "random");
    a correct kernel gives identical results under all three. strict: a __syncthreads() after other
    threads exited is an error. workers: OS threads running blocks (0 = number of cores).
    sanitize: build with ASan + UBSan (libasan must be LD_PRELOADed into the Python process).
    """

    def __init__(self, code: str, options: Sequence[str] = (), *, sanitize: bool = False,
                 schedule: str = "forward", seed: int = 1, strict: bool = True, workers: int = 0,
                 stack_kb: int = 0, filename: str = "kernel.cu") -> None:
        self.path = build(code, options, sanitize=sanitize, filename=filename)
        self.lib = ctypes.CDLL(str(self.path))
        self.lib.cuda_cpu_configure.argtypes = [ctypes.c_int, ctypes.c_uint, ctypes.c_int, ctypes.c_int,
                                                ctypes.c_size_t]
        self._kernels: dict[str, CpuRawKernel] = {}
        self._config: tuple[int, int, int, int, int] = (0, 1, 1, 0, 0)
        self.configure(schedule=schedule, seed=seed, strict=strict, workers=workers, stack_kb=stack_kb)

    def configure(self, *, schedule: str = "forward", seed: int = 1, strict: bool = True, workers: int = 0,
                  stack_kb: int = 0) -> None:
        """Set the scheduling options for later launches of this module."""
        if schedule not in SCHEDULES:
            raise ValueError(f"schedule {schedule!r}: valid are {', '.join(SCHEDULES)}")
        if not 0 <= seed < 2**32 or workers < 0 or stack_kb < 0:
            raise ValueError(f"seed must be in [0, 2**32), workers and stack_kb >= 0 (got {seed}, {workers}, {stack_kb})")
        self._config = (SCHEDULES[schedule], seed, int(strict), workers, stack_kb)

    def _apply_config(self) -> None:
        self.lib.cuda_cpu_configure(*self._config)

    def get_function(self, name: str) -> CpuRawKernel:
        if name not in self._kernels:
            self._kernels[name] = CpuRawKernel(self, name)
        return self._kernels[name]


def libasan_path() -> str:
    """Path of g++'s libasan.so, for LD_PRELOAD in a subprocess running sanitized modules."""
    cxx = os.environ.get("CXX", "g++")
    with contextlib.suppress(OSError):
        out = subprocess.run([cxx, "-print-file-name=libasan.so"], capture_output=True, text=True).stdout.strip()
        if out and os.path.isabs(out):
            return out
    raise CpuKernelError("libasan.so not found (g++ -print-file-name=libasan.so)")
