"""KV storage types of the kernels (fp32, fp16, bf16): their NumPy carriers, kernel-name suffixes and
exact conversions. NumPy has no bfloat16, so bf16 values travel as uint16 bit patterns; encoding rounds
to nearest even, as __float2bfloat16_rn does on the GPU.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, slots=True)
class StorageType:
    """One storage type: `name` (canonical), kernel `suffix`, NumPy `carrier` dtype, element bytes."""

    name: str
    suffix: str
    carrier: np.dtype
    itemsize: int

    def encode(self, x: np.ndarray) -> np.ndarray:
        """Round float values to this type; returns a C-contiguous array of the carrier dtype."""
        x = np.asarray(x)
        if self.name == "bfloat16":
            return _f32_to_bf16_bits(x.astype(np.float32, copy=False))
        return np.ascontiguousarray(x, dtype=self.carrier)

    def decode(self, a: np.ndarray) -> np.ndarray:
        """Exact float64 values of an array stored in this type."""
        a = np.asarray(a)
        if self.name == "bfloat16":
            return _bf16_bits_to_f32(a).astype(np.float64)
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


STORAGE_TYPES: dict[str, StorageType] = {
    "float32": StorageType("float32", "f32", np.dtype(np.float32), 4),
    "float16": StorageType("float16", "f16", np.dtype(np.float16), 2),
    "bfloat16": StorageType("bfloat16", "bf16", np.dtype(np.uint16), 2),
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
