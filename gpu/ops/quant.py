"""Quantised KV storage: 1-byte codes (fp8 e4m3 or int8) whose value is code * scale, with fp32 scales
at one of four granularities. Names follow sim/presets.py ("int8:per_block"). This module holds the
scale layouts and the NumPy side of the kernels' arithmetic: scales from absolute maxima, quantise
(x / scale -> code, bit for bit what the write kernel stores) and dequantise (for the reference).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from gpu.errors import KernelInputError
from gpu.ops.dtypes import QUANT_TYPES, STORAGE_TYPES, StorageType, storage_type

# Granularity -> the kernels' scale_kind (gpu/kernels/paged_attention.cu, KVScales). Shapes per K and V:
#   per_tensor  [1]                                     one static scale (sim: per_tensor, no per-token bytes)
#   per_kv_head [num_kv_heads]                          one static scale per kv head (vLLM's per-head k/v_scale)
#   per_block   [num_blocks, num_kv_heads]              fixed by the caller before the block's first write
#   per_head    [num_blocks, num_kv_heads, block_size]  one per token and kv head, computed by the write
#                                                       kernel from the row (sim: per_head, 4 B/head/token)
GRANULARITIES = ("per_tensor", "per_kv_head", "per_block", "per_head")
SCALE_KIND = {g: i for i, g in enumerate(GRANULARITIES)}
FLT_MIN = np.float32(2.0**-126)  # the smallest scale: an all-zero row still gets a positive one
POISON_CODE = {"fp8_e4m3": 0x7F, "int8": -128}  # never written: fp8 NaN; int8 outside [-127, 127]


@dataclass(frozen=True, slots=True)
class KVQuant:
    """A quantised KV format: `storage` (QUANT_TYPES["fp8_e4m3"] or ["int8"]) and `granularity` (one of
    GRANULARITIES). Invariant: storage is quantised and granularity is known (check_invariants)."""

    storage: StorageType
    granularity: str

    @property
    def name(self) -> str:
        return f"{self.storage.name}:{self.granularity}"

    @property
    def scale_kind(self) -> int:
        return SCALE_KIND[self.granularity]

    def scale_shape(self, num_blocks: int, num_kv_heads: int, block_size: int) -> tuple[int, ...]:
        """Shape of the K (and of the V) scale array for a pool of this geometry."""
        return {"per_tensor": (1,), "per_kv_head": (num_kv_heads,), "per_block": (num_blocks, num_kv_heads),
                "per_head": (num_blocks, num_kv_heads, block_size)}[self.granularity]

    def scale_bytes_per_token(self, num_kv_heads: int, block_size: int) -> float:
        """Scale bytes one token adds to a layer's K and V: what sim/presets.py charges per layer."""
        per_head = {"per_head": 4.0, "per_block": 4.0 / block_size}.get(self.granularity, 0.0)
        return 2 * num_kv_heads * per_head

    def check_invariants(self) -> None:
        if not self.storage.quantized or self.granularity not in GRANULARITIES:
            raise ValueError(f"KVQuant({self.storage.name!r}, {self.granularity!r}) is not a quantised format")


def parse_kv_dtype(kv_dtype: str) -> KVQuant | None:
    """"fp8_e4m3" / "int8" (per_tensor) or "<dtype>:<granularity>" -> KVQuant; a float dtype name
    (fp16, bfloat16, ...) -> None. Raises ValueError naming the valid names."""
    base, _, gran = str(kv_dtype).lower().partition(":")
    if base in QUANT_TYPES:
        gran = gran or "per_tensor"
        if gran not in GRANULARITIES:
            raise ValueError(f"kv dtype {kv_dtype!r}: unknown scale granularity {gran!r} (valid: "
                             f"{', '.join(GRANULARITIES)})")
        return KVQuant(QUANT_TYPES[base], gran)
    try:
        storage_type(base)
    except ValueError:
        raise ValueError(f"kv dtype {kv_dtype!r} is not supported (valid: {', '.join(STORAGE_TYPES)}, or "
                         f"{' / '.join(QUANT_TYPES)}[:{'|'.join(GRANULARITIES)}])") from None
    if gran:
        raise ValueError(f"kv dtype {kv_dtype!r}: a scale granularity applies only to {', '.join(QUANT_TYPES)}")
    return None


def check_scales(kv: KVQuant, k_scales: Any, v_scales: Any, num_blocks: int, num_kv_heads: int,
                 block_size: int) -> None:
    """Both scale arrays float32, C-contiguous, of kv.scale_shape(...); raises KernelInputError."""
    want = kv.scale_shape(num_blocks, num_kv_heads, block_size)
    for name, a in (("k_scales", k_scales), ("v_scales", v_scales)):
        if a is None or tuple(getattr(a, "shape", ())) != want or a.dtype != np.float32 or not a.flags.c_contiguous:
            raise KernelInputError(f"{name} must be a C-contiguous float32 array of shape {want} for {kv.name}; "
                                   f"got {getattr(a, 'dtype', None)} {getattr(a, 'shape', None)}")


def scale_from_absmax(absmax: np.ndarray | float, qmax: float) -> np.ndarray:
    """The write kernel's rule: max(absmax / qmax, FLT_MIN) in float32 (NaN absmax stays NaN)."""
    s = np.asarray(absmax, np.float32) / np.float32(qmax)
    return np.where(np.isnan(s), s, np.maximum(s, FLT_MIN)).astype(np.float32)


def quantize(x: np.ndarray, scale: np.ndarray | float, storage: StorageType) -> np.ndarray:
    """Codes of float32(x) / float32(scale) (broadcast), as the write kernel computes them."""
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        y = np.asarray(x, np.float32) / np.asarray(scale, np.float32)
    return storage.encode(y)


def dequantize(codes: np.ndarray, scale: np.ndarray | float, storage: StorageType) -> np.ndarray:
    """float64 values code * scale (exact: a 4-bit by 24-bit product)."""
    return storage.decode(codes) * np.asarray(scale, np.float64)


def _absmax(values: np.ndarray, axis: tuple[int, ...]) -> np.ndarray:
    """max |x| over `axis`, NaN (unwritten) entries ignored; NaN where all are NaN."""
    return np.fmax.reduce(np.abs(values), axis=axis)


def pool_scales(kv: KVQuant, values: np.ndarray) -> np.ndarray:
    """Scales for a float pool `values` [num_blocks, kv_heads, block_size, head_dim] (NaN = no token):
    from the absolute maximum over what each scale covers. Scales covering no token are NaN."""
    axes = {"per_tensor": (0, 1, 2, 3), "per_kv_head": (0, 2, 3), "per_block": (2, 3), "per_head": (3,)}
    return scale_from_absmax(_absmax(values, axes[kv.granularity]), kv.storage.qmax).reshape(
        kv.scale_shape(*values.shape[:3]))


def row_scales(kv: KVQuant, rows: np.ndarray, slots: np.ndarray, num_blocks: int, block_size: int) -> np.ndarray:
    """Scales for rows [num_tokens, kv_heads, head_dim] about to be written at `slots` (negative =
    padding): absolute maxima per tensor / kv head / (block, kv head). per_head scales are the write
    kernel's to compute, so they come back NaN (as do per_block scales of blocks no row lands in)."""
    kvh = rows.shape[1]
    shape = kv.scale_shape(num_blocks, kvh, block_size)
    live = np.asarray(slots) >= 0
    a = np.abs(np.asarray(rows, np.float32)[live]).max(axis=2, initial=-np.inf)  # [tokens, kv_heads]
    if kv.granularity == "per_head":
        return np.full(shape, np.nan, np.float32)
    if kv.granularity == "per_block":
        amax = np.full(shape, -np.inf, np.float32)
        np.maximum.at(amax, np.asarray(slots)[live] // block_size, a)
    else:
        amax = a.max(axis=0, initial=-np.inf)
        amax = amax.max(keepdims=True) if kv.granularity == "per_tensor" else amax
    return scale_from_absmax(np.where(np.isinf(amax), np.nan, amax), kv.storage.qmax).reshape(shape)


def slot_scales(kv: KVQuant, scales: np.ndarray, num_blocks: int, num_kv_heads: int, block_size: int) -> np.ndarray:
    """The scale of every slot and head, [num_blocks, kv_heads, block_size, 1] float32."""
    s = np.asarray(scales, np.float32)
    if kv.granularity == "per_tensor":
        s = s.reshape(1, 1, 1)
    elif kv.granularity == "per_kv_head":
        s = s.reshape(1, num_kv_heads, 1)
    elif kv.granularity == "per_block":
        s = s.reshape(num_blocks, num_kv_heads, 1)
    return np.broadcast_to(s, (num_blocks, num_kv_heads, block_size))[..., None]


def quantize_pool(kv: KVQuant, values: np.ndarray, scales: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(codes, scales) of a float pool (NaN = no token; those slots get the poison code). Scales are
    pool_scales(values) unless given."""
    if scales is None:
        scales = pool_scales(kv, values)
    per_slot = slot_scales(kv, scales, *values.shape[:3])
    codes = quantize(values, per_slot, kv.storage)
    codes[np.isnan(values)] = POISON_CODE[kv.storage.name]
    return codes, np.ascontiguousarray(scales, np.float32)


def dequantize_pool(kv: KVQuant, codes: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """float64 values of a code pool [num_blocks, kv_heads, block_size, head_dim]; poison codes of
    int8 (-128) read as NaN, like fp8's NaN code, so a reference that reads them shows it."""
    vals = dequantize(codes, slot_scales(kv, scales, *codes.shape[:3]), kv.storage)
    if kv.storage.name == "int8":
        vals[codes == POISON_CODE["int8"]] = np.nan
    return vals


def gather_scales_contiguous(kv: KVQuant, scales: np.ndarray, block_tables: np.ndarray, context_lens: np.ndarray,
                             max_len: int, block_size: int) -> np.ndarray:
    """Scales for the contiguous cache: per_block / per_head scales regrouped per sequence, block b of
    sequence i at index i * ceil(max_len / block_size) + b (the kernel's ContiguousTiles.block_id);
    NaN past a sequence's blocks. Static granularities are returned unchanged."""
    if kv.granularity in ("per_tensor", "per_kv_head"):
        return np.ascontiguousarray(scales, np.float32)
    per_seq = -(-int(max_len) // block_size)
    out = np.full((len(context_lens), per_seq, *scales.shape[1:]), np.nan, np.float32)
    for i, n in enumerate(np.asarray(context_lens, np.int64)):
        nb = -(-int(n) // block_size)
        out[i, :nb] = scales[block_tables[i, :nb]]
    return out.reshape(len(context_lens) * per_seq, *scales.shape[1:])
