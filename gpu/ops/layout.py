"""The paged KV layout on the host side: pools of [num_blocks, num_kv_heads, block_size, head_dim],
block tables (logical block -> physical block, -1 = unused entry), slot mappings for writes, and the
gather that turns a paged pool into the contiguous [num_seqs, num_kv_heads, max_len, head_dim] cache.
See gpu/kernels/paged_attention.cu for why this layout.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from gpu.errors import KernelInputError
from gpu.ops.dtypes import StorageType, storage_type
from gpu.ops.quant import POISON_CODE, KVQuant, check_scales, parse_kv_dtype

SUPPORTED_HEAD_DIMS = (64, 128, 256)
SUPPORTED_BLOCK_SIZES = (8, 16, 32)
UNUSED = -1  # block-table padding; kernels never read entries past a sequence's context


def blocks_needed(context_len: int, block_size: int) -> int:
    """Blocks holding `context_len` tokens."""
    return -(-int(context_len) // int(block_size))


def check_geometry(head_dim: int, block_size: int) -> None:
    """Raise KernelInputError unless the kernels are built for this head_dim and block size."""
    if head_dim not in SUPPORTED_HEAD_DIMS:
        raise KernelInputError(f"head_dim = {head_dim} is not supported (valid: {SUPPORTED_HEAD_DIMS})")
    if block_size not in SUPPORTED_BLOCK_SIZES:
        raise KernelInputError(f"block_size = {block_size} is not supported (valid: {SUPPORTED_BLOCK_SIZES})")


@dataclass(slots=True)
class KVPool:
    """K and V pools, each [num_blocks, num_kv_heads, block_size, head_dim] in the carrier dtype of
    `dtype` (NumPy arrays, or a backend's device arrays). Quantised pools (`quant` set, dtype =
    quant.storage) carry float32 k_scales / v_scales of quant.scale_shape(...). Invariants: k and v
    have the same shape, both C-contiguous and of the carrier dtype; head_dim and block_size are
    supported by the kernels; scales present exactly when quantised, of the right shape."""

    k: Any
    v: Any
    dtype: StorageType
    quant: KVQuant | None = None
    k_scales: Any = None
    v_scales: Any = None

    @property
    def num_blocks(self) -> int:
        return int(self.k.shape[0])

    @property
    def num_kv_heads(self) -> int:
        return int(self.k.shape[1])

    @property
    def block_size(self) -> int:
        return int(self.k.shape[2])

    @property
    def head_dim(self) -> int:
        return int(self.k.shape[3])

    def check_invariants(self) -> None:
        if self.k.ndim != 4 or self.k.shape != self.v.shape:
            raise KernelInputError(f"k/v pools must both be [num_blocks, kv_heads, block_size, head_dim]; "
                                   f"got {self.k.shape} and {self.v.shape}")
        for name, a in (("k_pool", self.k), ("v_pool", self.v)):
            if a.dtype != self.dtype.carrier:
                raise KernelInputError(f"{name} dtype {a.dtype} does not carry {self.dtype.name} "
                                       f"(expected {self.dtype.carrier})")
            if not a.flags.c_contiguous:
                raise KernelInputError(f"{name} must be C-contiguous")
        check_geometry(self.head_dim, self.block_size)
        if self.quant is None:
            if self.k_scales is not None or self.v_scales is not None:
                raise KernelInputError(f"a {self.dtype.name} pool has no scales (k_scales / v_scales must be None)")
        else:
            if self.quant.storage != self.dtype:
                raise KernelInputError(f"pool dtype {self.dtype.name} != its quantised format {self.quant.name}")
            check_scales(self.quant, self.k_scales, self.v_scales, self.num_blocks, self.num_kv_heads,
                         self.block_size)


def allocate_pool(num_blocks: int, num_kv_heads: int, block_size: int, head_dim: int,
                  dtype: str | StorageType, *, fill: float = float("nan")) -> KVPool:
    """A host pool filled with `fill` (NaN by default, so reading a slot nobody wrote poisons the
    result). A quantised dtype ("int8:per_block", see gpu.ops.quant) gives a pool of poison codes (fp8
    NaN, int8 -128) whatever `fill`, with NaN scales, to be written by reshape_and_cache."""
    kv = parse_kv_dtype(dtype) if isinstance(dtype, str) else None
    st = kv.storage if kv else storage_type(dtype)
    if num_blocks < 1 or num_kv_heads < 1:
        raise KernelInputError(f"num_blocks ({num_blocks}) and num_kv_heads ({num_kv_heads}) must be >= 1")
    check_geometry(head_dim, block_size)
    shape = (num_blocks, num_kv_heads, block_size, head_dim)
    if kv is not None:
        code = POISON_CODE[st.name]
        scales = kv.scale_shape(num_blocks, num_kv_heads, block_size)
        return KVPool(np.full(shape, code, st.carrier), np.full(shape, code, st.carrier), st, kv,
                      np.full(scales, np.nan, np.float32), np.full(scales, np.nan, np.float32))
    value = st.encode(np.array([fill], np.float32))[0]
    return KVPool(np.full(shape, value, st.carrier), np.full(shape, value, st.carrier), st)


def scattered_block_tables(context_lens: Sequence[int] | np.ndarray, block_size: int, num_blocks: int,
                           rng: np.random.Generator, *, max_blocks_per_seq: int | None = None) -> np.ndarray:
    """Block tables [num_seqs, max_blocks_per_seq] int32 giving every sequence its own physical blocks,
    drawn in a random order from the pool (adjacent logical blocks are rarely adjacent physically)."""
    lens = np.asarray(context_lens, np.int64)
    need = [blocks_needed(n, block_size) for n in lens]
    width = max([1, *need]) if max_blocks_per_seq is None else max_blocks_per_seq
    if max(need, default=0) > width:
        raise KernelInputError(f"max_blocks_per_seq = {width} < {max(need)} blocks needed by the longest context")
    if sum(need) > num_blocks:
        raise KernelInputError(f"the contexts need {sum(need)} blocks; the pool has {num_blocks}")
    perm = rng.permutation(num_blocks)
    tables = np.full((len(lens), width), UNUSED, np.int32)
    pos = 0
    for i, n in enumerate(need):
        tables[i, :n] = perm[pos:pos + n]
        pos += n
    return tables


def shared_prefix_block_tables(context_lens: Sequence[int] | np.ndarray, block_size: int, num_blocks: int,
                               shared_blocks: int, rng: np.random.Generator) -> np.ndarray:
    """Like scattered_block_tables, but the first `shared_blocks` logical blocks of every sequence map
    to the same physical blocks (a shared prompt after a fork, or prefix caching)."""
    lens = np.asarray(context_lens, np.int64)
    need = [blocks_needed(n, block_size) for n in lens]
    if shared_blocks < 0 or any(n < shared_blocks for n in need):
        raise KernelInputError(f"shared_blocks = {shared_blocks} exceeds a sequence's blocks ({min(need)})")
    own = sum(n - shared_blocks for n in need)
    if shared_blocks + own > num_blocks:
        raise KernelInputError(f"the contexts need {shared_blocks + own} blocks; the pool has {num_blocks}")
    perm = rng.permutation(num_blocks)
    tables = np.full((len(lens), max([1, *need])), UNUSED, np.int32)
    pos = shared_blocks
    for i, n in enumerate(need):
        tables[i, :shared_blocks] = perm[:shared_blocks]
        tables[i, shared_blocks:n] = perm[pos:pos + n - shared_blocks]
        pos += n - shared_blocks
    return tables


def slot_mapping(block_tables: np.ndarray, context_lens: Sequence[int] | np.ndarray, block_size: int,
                 starts: Sequence[int] | np.ndarray | None = None) -> np.ndarray:
    """Slots (physical_block * block_size + offset, int64) of tokens [starts[i], context_lens[i]) of
    every sequence, concatenated in sequence order: where reshape_and_cache writes them."""
    lens = np.asarray(context_lens, np.int64)
    begin = np.zeros_like(lens) if starts is None else np.asarray(starts, np.int64)
    parts = []
    for i, (b, e) in enumerate(zip(begin, lens, strict=True)):
        t = np.arange(b, e, dtype=np.int64)
        parts.append(block_tables[i, t // block_size].astype(np.int64) * block_size + t % block_size)
    return np.concatenate(parts) if parts else np.zeros(0, np.int64)


def gather_tokens(pool: np.ndarray, table_row: np.ndarray, context_len: int) -> np.ndarray:
    """The [context_len, num_kv_heads, head_dim] rows of one sequence, read through its block table."""
    block_size = pool.shape[2]
    t = np.arange(int(context_len))
    blocks = table_row[t // block_size]
    return pool[blocks, :, t % block_size, :]  # advanced indices first: [tokens, kv_heads, head_dim]


def gather_contiguous(pool: np.ndarray, block_tables: np.ndarray, context_lens: Sequence[int] | np.ndarray,
                      max_len: int, *, pad_value: float | int = 0) -> np.ndarray:
    """The contiguous cache [num_seqs, num_kv_heads, max_len, head_dim] holding the same tokens;
    positions >= a sequence's context hold `pad_value` (in the pool's carrier dtype)."""
    lens = np.asarray(context_lens, np.int64)
    s, kvh, d = len(lens), pool.shape[1], pool.shape[3]
    out = np.full((s, kvh, max_len, d), pad_value, pool.dtype)
    for i, n in enumerate(lens):
        out[i, :, :n, :] = gather_tokens(pool, block_tables[i], int(n)).transpose(1, 0, 2)
    return out
