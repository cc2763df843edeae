"""KV storage types of the kernels: float (fp32, fp16, bf16) and quantised 1-byte codes (fp8 e4m3,
int8), with their NumPy carriers, kernel-name suffixes and exact conversions. NumPy has no bfloat16 or
fp8, so bf16 values travel as uint16 bit patterns and fp8 as uint8 codes; encoding rounds to nearest
even, as __float2bfloat16_rn and __nv_cvt_float_to_fp8(x, __NV_SATFINITE, __NV_E4M3) do on the GPU.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, slots=True)
class StorageType:
    """One storage type: `name` (canonical), kernel `suffix`, NumPy `carrier` dtype, element bytes;
    `qmax` is the largest code magnitude of a quantised type (448 fp8 e4m3, 127 int8), 0 for floats."""

    name: str
    suffix: str
    carrier: np.dtype
    itemsize: int
    qmax: float = 0.0

    @property
    def quantized(self) -> bool:
        return self.qmax > 0

    def encode(self, x: np.ndarray) -> np.ndarray:
        """Round float values to this type; returns a C-contiguous array of the carrier dtype.
        Quantised types encode x itself (scale 1): see gpu.ops.quant for scaled quantisation."""
        x = np.asarray(x)
        if self.name == "bfloat16":
            return _f32_to_bf16_bits(x.astype(np.float32, copy=False))
        if self.name == "fp8_e4m3":
            return fp8_e4m3_encode(x)
        if self.name == "int8":
            return int8_encode(x)
        return np.ascontiguousarray(x, dtype=self.carrier)

    def decode(self, a: np.ndarray) -> np.ndarray:
        """Exact float64 values of an array stored in this type (codes, for quantised types)."""
        a = np.asarray(a)
        if self.name == "bfloat16":
            return _bf16_bits_to_f32(a).astype(np.float64)
        if self.name == "fp8_e4m3":
            return fp8_e4m3_decode(a)
        return a.astype(np.float64)

    def round(self, x: np.ndarray) -> np.ndarray:
        """float64 values after rounding to this type (what a kernel sees)."""
        return self.decode(self.encode(x))


def _f32_to_bf16_bits(x: np.ndarray) -> np.ndarray:
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    nan = (u & 0x7FFFFFFF) > 0x7F800000
    r = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)
    if nan.any():  # keep NaN a quiet NaN instead of rounding into the exponent
        r[nan] = ((u[nan] >> 16) | 0x40).astype(np.uint16)
    return r


def _bf16_bits_to_f32(b: np.ndarray) -> np.ndarray:
    return (np.ascontiguousarray(b, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)


def _fp8_e4m3_values() -> np.ndarray:
    """float64 value of every E4M3 code 0..255 (0x7F and 0xFF are NaN; there is no Inf)."""
    c = np.arange(256)
    e, m = (c >> 3) & 0xF, c & 7
    mag = np.where(e == 0, m * 2.0**-9, (1 + m / 8) * 2.0 ** (e - 7))
    v = np.where(c & 0x80, -mag, mag)
    v[(c & 0x7F) == 0x7F] = np.nan
    return v


FP8_E4M3_VALUES = _fp8_e4m3_values()
FP8_E4M3_MAX = 448.0
_FP8_POSITIVE = FP8_E4M3_VALUES[:0x7F]  # codes 0x00..0x7E: increasing values 0 .. 448


def fp8_e4m3_decode(codes: np.ndarray) -> np.ndarray:
    """float64 values of uint8 E4M3 codes (exact)."""
    return FP8_E4M3_VALUES[np.asarray(codes, np.uint8)]


def fp8_e4m3_encode(x: np.ndarray) -> np.ndarray:
    """uint8 E4M3 codes of float values, as __nv_cvt_float_to_fp8(x, __NV_SATFINITE, __NV_E4M3) on
    float32 inputs: round to nearest even on the E4M3 grid, |x| > 448 (Inf included) saturates to
    +-448, NaN gives 0x7F, the sign of zero is kept."""
    with np.errstate(invalid="ignore", over="ignore"):  # signalling NaNs, float64 beyond float32
        f = np.asarray(x, np.float32).astype(np.float64)  # the kernel converts float32 values
    a = np.abs(f)
    finite = np.where(np.isfinite(a), a, 0.0)
    # grid spacing: 2^(e-3) for a normal in [2^e, 2^(e+1)) (frexp: a = m * 2^(e+1), m in [0.5, 1)),
    # 2^-9 below the smallest normal 2^-6
    e = np.frexp(finite)[1] - 1
    ulp = np.where(finite >= 2.0**-6, np.ldexp(1.0, e - 3), 2.0**-9)
    q = np.rint(finite / ulp) * ulp  # exact: power-of-two scaling; rint rounds half to even
    q = np.where(a > 464.0, FP8_E4M3_MAX, np.minimum(q, FP8_E4M3_MAX))  # 464 = 448 + half an ulp
    code = np.searchsorted(_FP8_POSITIVE, q).astype(np.uint8)
    code |= np.where(np.signbit(f), 0x80, 0).astype(np.uint8)
    code[np.isnan(f)] = 0x7F
    return np.ascontiguousarray(code)


def int8_encode(x: np.ndarray) -> np.ndarray:
    """int8 codes: clamp to [-127, 127] (NaN -> -127, as the kernel's fmaxf(NaN, -127)), then round to
    nearest even. -128 is never produced."""
    with np.errstate(invalid="ignore", over="ignore"):
        y = np.fmin(np.fmax(np.asarray(x, np.float32), np.float32(-127)), np.float32(127))
    return np.ascontiguousarray(np.rint(y).astype(np.int8))


STORAGE_TYPES: dict[str, StorageType] = {
    "float32": StorageType("float32", "f32", np.dtype(np.float32), 4),
    "float16": StorageType("float16", "f16", np.dtype(np.float16), 2),
    "bfloat16": StorageType("bfloat16", "bf16", np.dtype(np.uint16), 2),
}
# Quantised KV storage (gpu.ops.quant adds scales): fp8 e4m3 codes as uint8, int8 codes as int8.
QUANT_TYPES: dict[str, StorageType] = {
    "fp8_e4m3": StorageType("fp8_e4m3", "fp8", np.dtype(np.uint8), 1, FP8_E4M3_MAX),
    "int8": StorageType("int8", "int8", np.dtype(np.int8), 1, 127.0),
}
_ALIASES = {"f32": "float32", "fp32": "float32", "float": "float32", "f16": "float16", "fp16": "float16",
            "half": "float16", "bf16": "bfloat16"}


def storage_type(name: str | StorageType) -> StorageType:
    """Look up a storage type by name or alias (float32/fp32/f32, float16/fp16/f16/half, bfloat16/bf16)."""
    if isinstance(name, StorageType):
        return name
    key = _ALIASES.get(str(name).lower(), str(name).lower())
    if key not in STORAGE_TYPES:
        valid = ", ".join([*STORAGE_TYPES, *_ALIASES])
        raise ValueError(f"dtype {name!r} is not supported (valid: {valid})")
    return STORAGE_TYPES[key]
