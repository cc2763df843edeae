"""Where kernels run: the CPU shim ("cpu") or a CUDA GPU through CuPy ("cupy"); "auto" picks the GPU
when one is usable. A Backend loads gpu/kernels/*.cu as a RawModule-like object, moves arrays to and
from its device and synchronizes, so the launch code in attention.py / cache_ops.py is written once.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

import numpy as np

from gpu.kernels import define_options, kernel_source

BACKEND_NAMES = ("cpu", "cupy", "auto")


class Backend(Protocol):
    """What the launch code needs from a device."""

    name: str
    xp: Any  # the array module: numpy or cupy

    def module(self, filename: str, defines: Mapping[str, int] | None = None) -> Any: ...
    def asarray(self, a: np.ndarray) -> Any: ...
    def to_numpy(self, a: Any) -> np.ndarray: ...
    def empty(self, shape: tuple[int, ...], dtype: Any) -> Any: ...
    def full(self, shape: tuple[int, ...], value: float, dtype: Any) -> Any: ...
    def synchronize(self) -> None: ...


class CpuBackend:
    """Kernels run on the CPU through the fiber shim; arrays are NumPy arrays.

    schedule / seed: thread resume order inside a block ("forward", "reverse", "random");
    sanitize: ASan + UBSan build (the process needs libasan LD_PRELOADed); workers: OS threads.
    """

    def __init__(self, *, schedule: str = "forward", seed: int = 1, sanitize: bool = False, workers: int = 0,
                 strict: bool = True) -> None:
        from gpu.backends.cpu import SCHEDULES

        if schedule not in SCHEDULES:
            raise ValueError(f"schedule {schedule!r}: valid are {', '.join(SCHEDULES)}")
        self.name = "cpu"
        self.xp: Any = np
        self.schedule, self.seed, self.sanitize, self.workers, self.strict = schedule, seed, sanitize, workers, strict
        self._modules: dict[tuple[str, tuple[str, ...]], Any] = {}

    def module(self, filename: str, defines: Mapping[str, int] | None = None) -> Any:
        from gpu.backends.cpu import CpuRawModule

        opts = define_options(defines or {})
        key = (filename, opts)
        if key not in self._modules:
            self._modules[key] = CpuRawModule(kernel_source(filename), opts, sanitize=self.sanitize,
                                              schedule=self.schedule, seed=self.seed, strict=self.strict,
                                              workers=self.workers, filename=filename)
        return self._modules[key]

    def asarray(self, a: np.ndarray) -> np.ndarray:
        return np.array(a, copy=True, order="C")  # a private copy, as a device upload would be

    def to_numpy(self, a: Any) -> np.ndarray:
        return np.asarray(a)

    def empty(self, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
        return np.empty(shape, dtype)

    def full(self, shape: tuple[int, ...], value: float, dtype: Any) -> np.ndarray:
        return np.full(shape, value, dtype)

    def synchronize(self) -> None:
        """Launches are synchronous on the CPU."""


class CupyBackend:
    """Kernels run on the current CUDA device through cupy.RawModule (NVRTC)."""

    def __init__(self) -> None:
        import cupy

        from gpu.backends.nvrtc import cuda_include_dir

        self.name = "cupy"
        self.xp: Any = cupy
        self._cupy = cupy
        self._include = cuda_include_dir()
        self._modules: dict[tuple[str, tuple[str, ...]], Any] = {}

    def module(self, filename: str, defines: Mapping[str, int] | None = None) -> Any:
        opts = define_options(defines or {})
        key = (filename, opts)
        if key not in self._modules:
            options = ("-std=c++17", f"-I{self._include}", *opts)
            self._modules[key] = self._cupy.RawModule(code=kernel_source(filename), options=options)
        return self._modules[key]

    def asarray(self, a: np.ndarray) -> Any:
        if not isinstance(a, np.ndarray):  # already a device array (e.g. a pool run_paged_decode filled)
            return a
        return self._cupy.asarray(np.ascontiguousarray(a))

    def to_numpy(self, a: Any) -> np.ndarray:
        return self._cupy.asnumpy(a)

    def empty(self, shape: tuple[int, ...], dtype: Any) -> Any:
        return self._cupy.empty(shape, dtype)

    def full(self, shape: tuple[int, ...], value: float, dtype: Any) -> Any:
        return self._cupy.full(shape, value, dtype)

    def synchronize(self) -> None:
        self._cupy.cuda.Device().synchronize()

    @property
    def num_sms(self) -> int:
        """Streaming multiprocessors of the current device (the split-K planner fills them)."""
        return int(self._cupy.cuda.Device().attributes["MultiProcessorCount"])


def gpu_available() -> bool:
    """True when CuPy imports and sees at least one CUDA device with a working driver."""
    try:
        import cupy

        return bool(cupy.cuda.runtime.getDeviceCount() > 0)
    except Exception:  # ImportError, CUDARuntimeError (no driver), ...
        return False


_DEFAULT: dict[str, Backend] = {}


def get_backend(name: str | Backend = "auto") -> Backend:
    """A shared backend by name: "cpu", "cupy" or "auto" (cupy when gpu_available(), else cpu).
    A Backend instance is returned unchanged."""
    if not isinstance(name, str):
        return name
    if name not in BACKEND_NAMES:
        raise ValueError(f"backend {name!r}: valid are {', '.join(BACKEND_NAMES)}")
    if name == "auto":
        name = "cupy" if gpu_available() else "cpu"
    if name == "cupy" and not gpu_available():
        raise RuntimeError("backend 'cupy' needs a CUDA GPU and driver; none is usable here (use 'cpu')")
    if name not in _DEFAULT:
        _DEFAULT[name] = CpuBackend() if name == "cpu" else CupyBackend()
    return _DEFAULT[name]
