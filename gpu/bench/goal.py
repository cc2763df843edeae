"""The `goal` decode benchmark's problems, built and gathered on the device (no host round trips).

A `GoalShape` is one point of the performance goal (batch x context x heads x KV dtype at head_dim
128, block 16). `DeviceDecode` allocates its paged pools, a shuffled block table, queries and the
contiguous copy directly with the backend's array module (CuPy on a GPU, NumPy for the CPU shim's
dry run), gathers the contiguous cache block by block on the device, and launches the paged and
contiguous kernels of gpu/kernels/paged_attention.cu with the split chosen by
gpu.ops.split.choose_partition_size. Only a few scalars ever cross to the host.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from gpu.backends.base import Backend
from gpu.ops.attention import ATTENTION_FILE, MAX_PARTITIONS, NUM_THREADS
from gpu.ops.split import DecodeGeometry, choose_partition_size, geometry_for

KV_DTYPES = {"fp16": (np.float16, 2, "f16"), "fp8": (np.uint8, 1, "f16_fp8")}  # carrier, bytes, suffix
FP8_SCALE = 1.0 / 64  # per_tensor scale of the fp8 goal shapes (codes are random finite E4M3 values)


@dataclass(slots=True, frozen=True)
class GoalShape:
    """One goal point. Invariant: num_heads % num_kv_heads == 0, kv_dtype in KV_DTYPES, all sizes >= 1."""

    batch: int
    context: int
    num_heads: int
    num_kv_heads: int
    kv_dtype: str
    head_dim: int = 128
    block_size: int = 16

    @property
    def shape_id(self) -> str:
        return (f"b{self.batch}-c{self.context}-h{self.num_heads}kv{self.num_kv_heads}-d{self.head_dim}"
                f"-bs{self.block_size}-{self.kv_dtype}")

    @property
    def kv_itemsize(self) -> int:
        return KV_DTYPES[self.kv_dtype][1]

    @property
    def kv_bytes(self) -> int:
        """K + V bytes one decode reads (every token of every kv head once)."""
        return 2 * self.batch * self.context * self.num_kv_heads * self.head_dim * self.kv_itemsize

    def footprint_bytes(self) -> int:
        """Device memory of the paged pools (+1/16 spare blocks) and the contiguous copy."""
        return self.kv_bytes + self.kv_bytes * 17 // 16


def goal_shapes(*, dry_run: bool = False) -> list[GoalShape]:
    """The goal grid (batch 32/64/128 x context 2K/8K/32K x 32:32 and 32:8 heads x fp16/fp8, head_dim
    128, block 16), or for a dry run a tiny grid with the same axes' kinds that the CPU shim runs fast."""
    if dry_run:
        # (1, 600) at 4:1 plans a 3-way split on an H100-sized GPU: the partitioned path runs too
        return [GoalShape(b, c, 4, kv, dt, 128, 16) for dt, (b, c, kv) in
                itertools.product(("fp16", "fp8"), ((2, 40, 4), (3, 96, 1), (1, 600, 1)))]
    return [GoalShape(b, c, 32, kv, dt) for dt, kv, c, b in
            itertools.product(("fp16", "fp8"), (32, 8), (2048, 8192, 32768), (32, 64, 128))]


SLAB = 1 << 26  # elements generated at a time: bounds the float32 / int32 temporaries to 256 MiB


def _fill(xp: Any, shape: tuple[int, ...], dtype: Any, rng: Any, make: Any) -> Any:
    out = xp.empty(shape, dtype=dtype)
    flat = out.reshape(-1)
    for i in range(0, flat.size, SLAB):
        n = min(SLAB, flat.size - i)
        flat[i : i + n] = make(rng, n)
    return out


def _randn_f16(xp: Any, shape: tuple[int, ...], rng: Any) -> Any:
    return _fill(xp, shape, np.float16, rng, lambda r, n: r.standard_normal(n, dtype=np.float32).astype(np.float16))


def _random_fp8(xp: Any, shape: tuple[int, ...], rng: Any) -> Any:
    # random finite E4M3 codes of magnitude < 2 (bit 6, the exponent's top bit, off): no NaN (0x7F / 0xFF)
    return _fill(xp, shape, np.uint8, rng,
                 lambda r, n: r.integers(0, 256, size=n, dtype=np.int32).astype(np.uint8) & np.uint8(0xBF))


@dataclass(slots=True)
class DeviceProblem:
    """Device arrays of one goal shape (see DeviceDecode)."""

    q: Any
    k_pool: Any
    v_pool: Any
    tables: Any
    lens: Any
    k_contig: Any
    v_contig: Any
    scales: Any  # per_tensor [1] float32 (fp8) or None


def build_problem(xp: Any, shape: GoalShape, seed: int = 0) -> DeviceProblem:
    """Allocate and fill one problem with `xp` (cupy or numpy): everything is generated where it lives."""
    rng = xp.random.default_rng(seed)
    b, c, kvh, d, bs = shape.batch, shape.context, shape.num_kv_heads, shape.head_dim, shape.block_size
    per_seq = -(-c // bs)
    num_blocks = b * per_seq + max(2, b * per_seq // 16)
    fill = _random_fp8 if shape.kv_dtype == "fp8" else _randn_f16
    pool_shape = (num_blocks, kvh, bs, d)
    k_pool, v_pool = fill(xp, pool_shape, rng), fill(xp, pool_shape, rng)
    # a shuffled block table: every sequence's blocks scattered over the pool
    tables = xp.argsort(rng.random(num_blocks))[: b * per_seq].astype(np.int32).reshape(b, per_seq)
    lens = xp.full((b,), c, dtype=np.int32)
    q = _randn_f16(xp, (b, shape.num_heads, d), rng)
    # the contiguous cache [b, kvh, c, d], gathered on the device one sequence at a time (bounded temp)
    k_contig = xp.empty((b, kvh, per_seq * bs, d), dtype=k_pool.dtype)
    v_contig = xp.empty_like(k_contig)
    for i in range(b):
        for pool, out in ((k_pool, k_contig), (v_pool, v_contig)):
            out[i] = pool[tables[i]].transpose(1, 0, 2, 3).reshape(kvh, per_seq * bs, d)
    if per_seq * bs != c:
        k_contig, v_contig = (xp.ascontiguousarray(a[:, :, :c]) for a in (k_contig, v_contig))
    scales = xp.full((1,), FP8_SCALE, dtype=np.float32) if shape.kv_dtype == "fp8" else None
    return DeviceProblem(q, k_pool, v_pool, tables, lens, k_contig, v_contig, scales)


class DeviceDecode:
    """Launchers of the paged and contiguous decode over one DeviceProblem, with one split for both
    (choose_partition_size from num_sms and the kernel's CTAs per SM; 0 = no split)."""

    def __init__(self, backend: Backend, shape: GoalShape, prob: DeviceProblem, *, num_sms: int,
                 registers: int | None = None, partition_size: int | None = None) -> None:
        xp = backend.xp
        self.backend, self.shape, self.prob = backend, shape, prob
        self.geometry: DecodeGeometry = geometry_for(shape.head_dim, shape.kv_itemsize, shape.num_heads,
                                                     shape.num_kv_heads)
        g = self.geometry
        self.ctas_per_sm = g.ctas_per_sm(registers)
        if partition_size is None:
            partition_size = choose_partition_size(
                np.full(shape.batch, shape.context), head_groups=shape.num_heads // g.group,
                block_size=shape.block_size, tile_tokens=g.tile_tokens, num_sms=num_sms,
                ctas_per_sm=self.ctas_per_sm, max_partitions=MAX_PARTITIONS)
        self.partition_size = partition_size
        self.parts = -(-shape.context // partition_size) if partition_size else 1
        defines = {"HEAD_DIM": shape.head_dim, "BLOCK_SIZE": shape.block_size, "NUM_THREADS": NUM_THREADS,
                   "QUERY_GROUP": g.group} | ({"KV_QUANT": 1} if shape.kv_dtype == "fp8" else {})
        self.module = backend.module(ATTENTION_FILE, defines)
        suffix = KV_DTYPES[shape.kv_dtype][2]
        b, h, d = shape.batch, shape.num_heads, shape.head_dim
        self.grid = (h // g.group, b, self.parts)
        self.out = {v: xp.zeros((b, h, d), dtype=np.float16) for v in ("paged", "contiguous")}
        split = self.parts > 1
        self._tmp = xp.empty((b, h, self.parts, d) if split else (1,), dtype=np.float32)
        self._es = xp.empty((b, h, self.parts) if split else (1,), dtype=np.float32)
        self._ml = xp.empty_like(self._es)
        scalars: tuple[Any, ...] = (np.int32(partition_size if split else 0), np.int32(0), np.float32(1 / math.sqrt(d)),
                   np.float32(1.0), np.float32(1.0))
        if prob.scales is not None:
            scalars += (prob.scales, prob.scales, np.int32(0))  # per_tensor
        p = prob
        self._fn = {"paged": self.module.get_function(f"paged_decode_{suffix}"),
                    "contiguous": self.module.get_function(f"contiguous_decode_{suffix}")}
        self._args = {
            "paged": (self.out["paged"], self._tmp, self._es, self._ml, p.q, p.k_pool, p.v_pool, p.tables, p.lens,
                      np.int32(shape.num_kv_heads), np.int32(p.tables.shape[1]), *scalars),
            "contiguous": (self.out["contiguous"], self._tmp, self._es, self._ml, p.q, p.k_contig, p.v_contig,
                           p.lens, np.int32(shape.num_kv_heads), np.int32(shape.context), *scalars),
        }
        self._reduce = self.module.get_function("decode_reduce_f16") if split else None

    @property
    def num_ctas(self) -> int:
        return self.grid[0] * self.grid[1] * self.grid[2]

    @property
    def tiles_per_cta(self) -> int:
        """The longest per-CTA chain: pipeline tiles one CTA walks (its partition, or the context)."""
        span = self.partition_size or self.shape.context
        return -(-span // self.geometry.tile_tokens)

    def launch(self, variant: str) -> None:
        """One decode (plus the reduce kernel when split) of `variant` ("paged" or "contiguous")."""
        self._fn[variant](self.grid, (self.geometry.threads,), self._args[variant])
        if self._reduce is not None:
            self._reduce((self.shape.num_heads, self.shape.batch), (NUM_THREADS,),
                         (self.out[variant], self._tmp, self._es, self._ml, self.prob.lens, np.int32(self.parts),
                          np.int32(self.partition_size), np.int32(0)))

    def max_paged_contiguous_diff(self) -> float:
        """Max |paged - contiguous| output (the same data: must be ~0); one scalar to the host."""
        xp = self.backend.xp
        a, b = (self.out[v].astype(np.float32) for v in ("paged", "contiguous"))
        return float(xp.max(xp.abs(a - b)))

    def reference_error(self, seq: int = 0) -> float:
        """Max |paged output - float64 reference| over the query heads of kv head 0 of one sequence
        (that kv head's K/V, at most 16 MiB, goes to the host)."""
        from gpu.ops.dtypes import fp8_e4m3_decode
        from gpu.ops.reference import decode_attention

        be, s, p = self.backend, self.shape, self.prob
        ratio = s.num_heads // s.num_kv_heads
        k = be.to_numpy(p.k_contig[seq, :1]).transpose(1, 0, 2)  # [ctx, 1, d]
        v = be.to_numpy(p.v_contig[seq, :1]).transpose(1, 0, 2)
        if s.kv_dtype == "fp8":
            k, v = (fp8_e4m3_decode(a) * FP8_SCALE for a in (k, v))
        q = be.to_numpy(p.q[seq : seq + 1, :ratio]).astype(np.float64)
        ref = decode_attention(q, [k.astype(np.float64)], [v.astype(np.float64)], 1 / math.sqrt(s.head_dim))
        out = be.to_numpy(self.out["paged"][seq, :ratio]).astype(np.float64)
        return float(np.max(np.abs(out - ref[0])))
