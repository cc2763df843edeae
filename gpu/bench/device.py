"""Which device a benchmark ran on, and its peak HBM bandwidth: the denominator of every bw_fraction.

`detect_device` reads the CUDA device name, driver/runtime/CuPy versions and L2 size (or describes
the CPU shim); `match_gpu_preset` maps a CUDA device name onto a `sim.presets.GPUS` entry, returning
None for a part whose data-sheet bandwidth it cannot place exactly (then `--peak-bw` is needed).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from sim.presets import GPUS, GPUSpec

# (tokens the CUDA name must contain, tokens it must not contain, preset key). The peak depends on the
# form factor, so names are matched conservatively: "NVIDIA H100 80GB HBM3" is the SXM5 part
# (3.35 TB/s) while "NVIDIA H100 PCIe" (2.0 TB/s) and "NVIDIA H100 NVL" (3.9 TB/s) match nothing;
# "NVIDIA A100 80GB PCIe" (1.94 TB/s) is not the SXM4 80GB part (2.04 TB/s); A100 40GB is 1.555 TB/s
# in both form factors.
DEVICE_RULES: tuple[tuple[tuple[str, ...], tuple[str, ...], str], ...] = (
    (("a100", "40gb"), (), "a100-40gb"),
    (("a100", "80gb"), ("pcie",), "a100-80gb"),
    (("h100", "hbm3"), ("pcie", "nvl"), "h100-sxm"),
    (("h200",), (), "h200"),
)


def match_gpu_preset(device_name: str) -> GPUSpec | None:
    """The GPU preset whose data-sheet figures belong to this CUDA device name, or None."""
    tokens = set(re.split(r"[^a-z0-9]+", device_name.lower()))
    for need, refuse, key in DEVICE_RULES:
        if set(need) <= tokens and not set(refuse) & tokens:
            return GPUS[key]
    return None


@dataclass(slots=True, frozen=True)
class DeviceInfo:
    """What a row records about where it ran. peak_bw_Bps is NaN when unknown (then bw_fraction is NaN).

    Invariant: peak_bw_Bps is NaN or > 0; l2_bytes >= 0 (0 = unknown: no L2 flushing).
    """

    name: str
    backend: str
    driver: str
    cuda_version: str
    cupy_version: str
    l2_bytes: int
    peak_bw_Bps: float
    peak_bw_source: str

    def check_invariants(self) -> None:
        """Raise AssertionError when the peak or L2 size is impossible."""
        assert math.isnan(self.peak_bw_Bps) or self.peak_bw_Bps > 0, self.peak_bw_Bps
        assert self.l2_bytes >= 0, self.l2_bytes

    def with_peak(self, peak_bw_Bps: float | None) -> DeviceInfo:
        """A copy with the user's peak bandwidth (bytes/s) in place of the preset's, when given."""
        if peak_bw_Bps is None:
            return self
        if not peak_bw_Bps > 0 or math.isinf(peak_bw_Bps):
            raise ValueError(f"peak bandwidth must be a finite number > 0 bytes/s (got {peak_bw_Bps})")
        return DeviceInfo(self.name, self.backend, self.driver, self.cuda_version, self.cupy_version,
                          self.l2_bytes, float(peak_bw_Bps), "user")


def _version(v: int) -> str:
    """CUDA's integer versions (12040) as '12.4'."""
    return f"{v // 1000}.{(v % 1000) // 10}"


def _cupy_version() -> str:
    try:
        import cupy

        return str(cupy.__version__)
    except Exception:  # CuPy absent or broken: the CPU shim does not need it
        return ""


def _preset_peak(name: str) -> tuple[float, str]:
    spec = match_gpu_preset(name)
    if spec is None:
        return math.nan, "unknown"
    return spec.hbm_bandwidth_Bps, f"preset:{spec.name}"


def detect_device(backend: str, device_id: int = 0) -> DeviceInfo:
    """Describe the device `backend` ('cupy' or 'cpu') runs on. For 'cupy' this needs a working GPU
    (raises the CUDA error otherwise); 'cpu' describes the CPU shim with no peak and no L2."""
    if backend == "cpu":
        return DeviceInfo("cpu-shim", "cpu", "", "", _cupy_version(), 0, math.nan, "unknown")
    if backend != "cupy":
        raise ValueError(f"backend must be 'cupy' or 'cpu' (got {backend!r})")
    import cupy

    rt = cupy.cuda.runtime
    props = rt.getDeviceProperties(device_id)
    name = props["name"]
    name = name.decode() if isinstance(name, bytes) else str(name)
    driver = _version(rt.driverGetVersion())
    try:  # the full driver release (e.g. 550.54.15) when NVML is importable
        import pynvml

        pynvml.nvmlInit()
        release = pynvml.nvmlSystemGetDriverVersion()
        driver = release.decode() if isinstance(release, bytes) else str(release)
    except Exception:  # NVML absent: the CUDA driver API version is still a useful record
        pass
    peak, source = _preset_peak(name)
    return DeviceInfo(name=name, backend="cupy", driver=driver, cuda_version=_version(rt.runtimeGetVersion()),
                      cupy_version=_cupy_version(), l2_bytes=int(props.get("l2CacheSize", 0)),
                      peak_bw_Bps=peak, peak_bw_source=source)
