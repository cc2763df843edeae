"""Launch geometry of the decode kernel and the split-K (partition) choice, as pure functions.

`decode_geometry` mirrors `DecodeGeometry<C>` in gpu/kernels/paged_attention.cu (threads per CTA,
tokens per pipeline stage, shared memory), so the launcher and the split rule know what the kernel
does without compiling it; a test compares the two through NVRTC's resource report.
`choose_partition_size` picks the split from the SM count, the CTAs one SM holds and the batch: split
only as far as needed to give every resident-CTA slot of the GPU one CTA, in partitions of whole
pipeline tiles, so batch 1-8 at long context fills the GPU and large batches are left unsplit.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

#: Defaults of the kernel's -D options (paged_attention.cu).
KV_TILE_BYTES = 8192
KV_STAGES = 2
MIN_BLOCKS_PER_SM = 4
QUERY_GROUPS = (8, 4, 2, 1)
#: Per-SM limits of sm_80 / sm_90 (A100: 164 KiB smem per SM, H100: 228 KiB; both 64K registers,
#: 2048 threads, 32 CTAs); 1 KiB of shared memory per CTA is reserved by the hardware.
SM_REGISTERS = 65536
SM_THREADS = 2048
SM_MAX_CTAS = 32
SMEM_RESERVED_PER_CTA = 1024
#: Splitting shorter partitions than this costs more in the reduce than it buys in parallelism.
MIN_PARTITION_TOKENS = 256


def query_group(num_heads: int, num_kv_heads: int) -> int:
    """Query heads one CTA serves: the largest of 8, 4, 2, 1 dividing num_heads / num_kv_heads."""
    if num_kv_heads < 1 or num_heads % num_kv_heads:
        raise ValueError(f"num_heads = {num_heads} must be a positive multiple of num_kv_heads = {num_kv_heads}")
    ratio = num_heads // num_kv_heads
    return next(g for g in QUERY_GROUPS if ratio % g == 0)


@dataclass(slots=True, frozen=True)
class DecodeGeometry:
    """One decode-kernel instantiation's launch shape (see DecodeGeometry<C> in the kernel).

    Invariants: threads in {128, 256}; tile_tokens >= 1; threads * vec_per_thread ... see the kernel's
    static_asserts (the same formulas)."""

    head_dim: int
    kv_itemsize: int
    group: int
    tile_bytes: int = KV_TILE_BYTES
    stages: int = KV_STAGES

    @property
    def vec(self) -> int:
        """Elements of a row per thread: 1- and 2-byte storage 32 at group 1 and else 16 (8 lanes per
        row at head_dim 128), fp32 head_dim / 32 (32 lanes)."""
        lanes = 32 if self.kv_itemsize >= 4 else self.head_dim // 32 if self.group == 1 else 8
        return max(16 // self.kv_itemsize, self.head_dim // lanes)

    @property
    def row_threads(self) -> int:
        return self.head_dim // self.vec

    @property
    def heads_per_thread(self) -> int:
        """2 when registers allow (vec <= 16): one widened K/V slice serves two heads."""
        return 2 if self.group >= 2 and self.vec <= 16 else 1

    @property
    def threads(self) -> int:
        return max(128, self.row_threads * self.group // self.heads_per_thread)

    @property
    def token_slots(self) -> int:
        """Threads along the tokens of a tile (kBdz)."""
        return self.threads // (self.row_threads * self.group // self.heads_per_thread)

    @property
    def tile_tokens(self) -> int:
        """Tokens per pipeline stage: tile_bytes of K, capped at 16 logits per thread."""
        return min(self.tile_bytes // (self.head_dim * self.kv_itemsize),
                   self.token_slots * 16 // self.heads_per_thread)

    @property
    def smem_bytes(self) -> int:
        """Static shared memory: the K/V ring plus per-token scale slots."""
        return 2 * self.stages * self.tile_tokens * (self.head_dim * self.kv_itemsize + 4)

    @property
    def min_blocks(self) -> int:
        """__launch_bounds__ minimum CTAs per SM (a 128-register budget per thread)."""
        return max(1, MIN_BLOCKS_PER_SM * 128 // self.threads)

    def ctas_per_sm(self, registers: int | None = None, smem_per_sm: int = 228 * 1024) -> int:
        """Resident CTAs per SM, limited by shared memory, threads, the 32-CTA cap and registers
        (`registers` per thread as compiled; None = the launch-bounds worst case)."""
        by_smem = smem_per_sm // (self.smem_bytes + SMEM_RESERVED_PER_CTA)
        by_threads = SM_THREADS // self.threads
        if registers is None:
            by_regs = self.min_blocks
        else:
            per_warp = -(-max(registers, 1) * 32 // 256) * 256  # allocated per warp in units of 256
            by_regs = SM_REGISTERS // (per_warp * (self.threads // 32))
        return max(1, min(by_smem, by_threads, by_regs, SM_MAX_CTAS))


def geometry_for(head_dim: int, kv_itemsize: int, num_heads: int, num_kv_heads: int) -> DecodeGeometry:
    """The geometry the launcher uses for this problem shape."""
    return DecodeGeometry(head_dim, kv_itemsize, query_group(num_heads, num_kv_heads))


def partition_unit(block_size: int, tile_tokens: int) -> int:
    """Partitions are whole KV blocks and whole pipeline tiles: the lcm of the two (powers of two)."""
    return math.lcm(block_size, tile_tokens)


def count_ctas(context_lens: np.ndarray, head_groups: int, partition_size: int) -> int:
    """Decode CTAs that do work: head groups x sum over sequences of their non-empty partitions."""
    lens = np.asarray(context_lens, np.int64)
    per_seq = np.maximum(1, -(-lens // partition_size)) if partition_size > 0 else np.ones_like(lens)
    return int(head_groups * per_seq.sum())


def choose_partition_size(context_lens: Sequence[int] | np.ndarray, *, head_groups: int, block_size: int,
                          tile_tokens: int, num_sms: int, ctas_per_sm: int, max_partitions: int = 1024,
                          min_partition_tokens: int = MIN_PARTITION_TOKENS) -> int:
    """Split-K for one decode launch: 0 (no split) when the unsplit grid already gives every resident
    CTA slot (num_sms x ctas_per_sm) a CTA, else the largest partition size (a multiple of the
    block / tile unit, at least min_partition_tokens rounded up to the unit) for the fewest partitions
    of the longest context whose CTAs fill the slots (balanced: the longest sequence's partitions are
    equal up to one unit, so the longest per-CTA chain is as short as that count allows), or the
    smallest allowed size when even that does not fill them. head_groups = num_heads / query group."""
    lens = np.asarray(context_lens, np.int64)
    for name, v in (("head_groups", head_groups), ("block_size", block_size), ("tile_tokens", tile_tokens),
                    ("num_sms", num_sms), ("ctas_per_sm", ctas_per_sm), ("max_partitions", max_partitions)):
        if int(v) < 1:
            raise ValueError(f"{name} = {v} must be >= 1")
    if lens.size == 0 or int(lens.max()) == 0:
        return 0
    slots = num_sms * ctas_per_sm
    if count_ctas(lens, head_groups, 0) >= slots:
        return 0
    unit = partition_unit(block_size, tile_tokens)
    longest = int(lens.max())
    smallest = max(unit, -(-min_partition_tokens // unit) * unit, -(-longest // max_partitions // unit) * unit)
    if longest <= smallest:
        return 0  # one partition anyway
    parts = 2
    while True:
        size = max(smallest, -(-longest // parts // unit) * unit)
        if size == smallest or count_ctas(lens, head_groups, size) >= slots:
            return size if size < longest else 0
        parts = max(parts + 1, -(-longest // (size - unit)) if size > unit else parts + 1)
