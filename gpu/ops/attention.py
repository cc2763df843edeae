"""Decode attention as a Python API: a DecodeProblem (queries, paged K/V pools, block tables, context
lengths, optional quantised storage with scales), the checks that run before any launch, and launching
one of the VARIANTS on a backend: "paged" (one pass over the context), "partitioned" (split context +
reduce kernel) or "contiguous" (the same kernel over a [num_seqs, kv_heads, max_len, head_dim] cache).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from gpu.backends.base import Backend, get_backend
from gpu.errors import KernelInputError
from gpu.ops.dtypes import StorageType, storage_type
from gpu.ops.layout import (
    KVPool,
    allocate_pool,
    blocks_needed,
    check_geometry,
    gather_contiguous,
    scattered_block_tables,
)
from gpu.ops.quant import KVQuant, check_scales, gather_scales_contiguous, parse_kv_dtype, quantize_pool
from gpu.ops.split import DecodeGeometry, choose_partition_size, geometry_for

ATTENTION_FILE = "paged_attention.cu"
VARIANTS = ("paged", "partitioned", "contiguous")
NUM_THREADS = 128  # the reduce kernel's CTA size; the decode kernel's comes from DecodeGeometry
DEFAULT_PARTITION_SIZE = 512
MAX_PARTITIONS = 1024  # the kernel's MAX_PARTITIONS (reduce kernel's shared-memory weights)
MAX_GRID_YZ = 65535


@dataclass(slots=True)
class DecodeProblem:
    """One decode step: q [num_seqs, num_heads, head_dim]; k_pool / v_pool [num_blocks, num_kv_heads,
    block_size, head_dim]; block_tables [num_seqs, max_blocks_per_seq] int32 (-1 = unused);
    context_lens [num_seqs] int32. Arrays hold the carrier dtype of `dtype` (bf16 as uint16 bits).
    window > 0 reads only the last `window` tokens; max_context is the contiguous variant's
    reservation per sequence (0 = the longest context). Quantised KV: kv_dtype ("fp8_e4m3:per_block",
    see gpu.ops.quant) makes the pools code arrays (uint8 / int8) and k_scales / v_scales their float32
    scales; q and the output stay in `dtype` (float16 or bfloat16). check_invariants() raises
    KernelInputError."""

    q: np.ndarray
    k_pool: np.ndarray
    v_pool: np.ndarray
    block_tables: np.ndarray
    context_lens: np.ndarray
    num_heads: int
    num_kv_heads: int
    head_dim: int
    block_size: int
    dtype: str
    scale: float
    window: int = 0
    partition_size: int = DEFAULT_PARTITION_SIZE
    max_context: int = 0
    kv_dtype: str = ""  # "" = the pools hold `dtype`
    k_scales: Any = None
    v_scales: Any = None

    @property
    def storage(self) -> StorageType:
        """The storage type of q and the output (and of the pools unless quantised)."""
        return storage_type(self.dtype)

    @property
    def kv_quant(self) -> KVQuant | None:
        return parse_kv_dtype(self.kv_dtype) if self.kv_dtype else None

    @property
    def kv_storage(self) -> StorageType:
        """The storage type of the K/V pools."""
        kv = self.kv_quant
        return kv.storage if kv else self.storage

    @property
    def num_seqs(self) -> int:
        return int(self.q.shape[0])

    @property
    def num_blocks(self) -> int:
        return int(self.k_pool.shape[0])

    @property
    def max_len(self) -> int:
        """Length of the contiguous cache: max_context, or the longest context when that is 0."""
        return max(int(self.max_context), int(self.context_lens.max(initial=0)), 1)

    def first_tokens(self) -> np.ndarray:
        """Index of the first token each sequence reads (0 without a window)."""
        lens = self.context_lens.astype(np.int64)
        return np.maximum(lens - self.window, 0) if self.window > 0 else np.zeros_like(lens)

    def check_invariants(self) -> None:
        validate(self)


def _fail(msg: str) -> None:
    raise KernelInputError(msg)


def validate(p: DecodeProblem, variant: str = "paged") -> None:
    """Every check the kernels rely on; raises KernelInputError naming the argument and valid range."""
    st = storage_type(p.dtype)
    kv = _check_kv_format(p)
    check_geometry(p.head_dim, p.block_size)
    if p.num_kv_heads < 1 or p.num_heads < 1 or p.num_heads % p.num_kv_heads:
        _fail(f"num_heads = {p.num_heads} must be a positive multiple of num_kv_heads = {p.num_kv_heads}")
    if not isinstance(p.q, np.ndarray) or p.q.ndim != 3 or p.q.shape[1:] != (p.num_heads, p.head_dim):
        _fail(f"q must be a [num_seqs, num_heads={p.num_heads}, head_dim={p.head_dim}] array; got "
              f"{getattr(p.q, 'shape', type(p.q).__name__)}")
    if p.q.dtype != st.carrier or not p.q.flags.c_contiguous:
        _fail(f"q must be a C-contiguous {st.carrier} array carrying {st.name}; got {p.q.dtype}")
    KVPool(p.k_pool, p.v_pool, p.kv_storage).check_invariants()
    if p.k_pool.shape[1:] != (p.num_kv_heads, p.block_size, p.head_dim):
        _fail(f"pool shape {p.k_pool.shape} does not match (num_blocks, num_kv_heads={p.num_kv_heads}, "
              f"block_size={p.block_size}, head_dim={p.head_dim})")
    if kv is not None:
        check_scales(kv, p.k_scales, p.v_scales, p.num_blocks, p.num_kv_heads, p.block_size)
    s = p.num_seqs
    if s > MAX_GRID_YZ:
        _fail(f"num_seqs = {s} exceeds the grid limit {MAX_GRID_YZ}; split the batch")
    bt, cl = p.block_tables, p.context_lens
    if not isinstance(bt, np.ndarray) or bt.dtype != np.int32 or bt.ndim != 2 or bt.shape[0] != s or bt.shape[1] < 1:
        _fail(f"block_tables must be an int32 [num_seqs={s}, max_blocks_per_seq >= 1] array; got "
              f"{getattr(bt, 'dtype', None)} {getattr(bt, 'shape', None)}")
    if not isinstance(cl, np.ndarray) or cl.dtype != np.int32 or cl.shape != (s,):
        _fail(f"context_lens must be an int32 [num_seqs={s}] array; got {getattr(cl, 'dtype', None)} "
              f"{getattr(cl, 'shape', None)}")
    if not (bt.flags.c_contiguous and cl.flags.c_contiguous):
        _fail("block_tables and context_lens must be C-contiguous")
    if s and cl.min() < 0:
        i = int(np.argmin(cl))
        _fail(f"context_lens[{i}] = {cl[i]} is negative")
    width = bt.shape[1]
    firsts = p.first_tokens()
    for i in range(s):
        n, first = int(cl[i]), int(firsts[i])
        if blocks_needed(n, p.block_size) > width:
            _fail(f"context_lens[{i}] = {n} needs {blocks_needed(n, p.block_size)} blocks; block_tables has "
                  f"{width} per sequence (max context {width * p.block_size})")
        used = bt[i, first // p.block_size:blocks_needed(n, p.block_size)]
        if used.size and (used.min() < 0 or used.max() >= p.num_blocks):
            j = first // p.block_size + int(np.argmax((used < 0) | (used >= p.num_blocks)))
            _fail(f"block_tables[{i}, {j}] = {bt[i, j]} is outside the pool (0..{p.num_blocks - 1})")
    if not math.isfinite(p.scale):
        _fail(f"scale = {p.scale} must be finite")
    if p.window < 0:
        _fail(f"window = {p.window} must be >= 0 (0 = off)")
    if p.partition_size < p.block_size or p.partition_size % p.block_size:
        _fail(f"partition_size = {p.partition_size} must be a positive multiple of block_size = {p.block_size}")
    if variant == "partitioned" and num_partitions(p) > MAX_PARTITIONS:
        _fail(f"{num_partitions(p)} partitions of {p.partition_size} tokens exceed {MAX_PARTITIONS}; "
              "raise partition_size")
    if variant == "contiguous" and p.max_context and p.max_context < int(cl.max(initial=0)):
        _fail(f"max_context = {p.max_context} is shorter than the longest context {int(cl.max())}")
    if variant not in VARIANTS:
        _fail(f"variant {variant!r}: valid are {', '.join(VARIANTS)}")


def _check_kv_format(p: DecodeProblem) -> KVQuant | None:
    try:
        kv = p.kv_quant
    except ValueError as e:
        raise KernelInputError(str(e)) from None
    if kv is not None and p.dtype not in ("float16", "bfloat16"):
        _fail(f"dtype = {p.dtype!r}: quantised KV ({kv.name}) takes float16 or bfloat16 queries")
    return kv


def geometry(p: DecodeProblem) -> DecodeGeometry:
    """The decode kernel's launch geometry for this problem (query group, threads, tile)."""
    return geometry_for(p.head_dim, p.kv_storage.itemsize, p.num_heads, p.num_kv_heads)


def plan_partition_size(p: DecodeProblem, *, num_sms: int, registers: int | None = None) -> int:
    """The split-K partition size for this problem on a GPU with num_sms SMs (0 = do not split):
    gpu.ops.split.choose_partition_size with this kernel's geometry and CTAs per SM (`registers` as
    compiled, None = the launch-bounds worst case). Set it as partition_size and run "partitioned"."""
    g = geometry(p)
    return choose_partition_size(p.context_lens, head_groups=p.num_heads // g.group, block_size=p.block_size,
                                 tile_tokens=g.tile_tokens, num_sms=num_sms, ctas_per_sm=g.ctas_per_sm(registers),
                                 max_partitions=MAX_PARTITIONS)


def num_partitions(p: DecodeProblem) -> int:
    """Partitions of partition_size tokens covering the longest context (>= 1)."""
    return max(1, -(-int(p.context_lens.max(initial=0)) // p.partition_size))


def choose_variant(context_lens: Sequence[int] | np.ndarray, num_heads: int, *,
                   partition_size: int = DEFAULT_PARTITION_SIZE) -> str:
    """"paged" or "partitioned", by vLLM's rule: split the context when it spans several partitions and
    either there are few (sequence, head) blocks to fill the GPU (<= 512) or a context exceeds 8192."""
    lens = np.asarray(context_lens)
    max_ctx = int(lens.max(initial=0))
    if max_ctx <= partition_size:
        return "paged"
    return "partitioned" if len(lens) * num_heads <= 512 or max_ctx > 8192 else "paged"


def kv_bytes_read(p: DecodeProblem) -> int:
    """Bytes of K and V the decode must read from memory: every token in range (the window, if any)
    of every sequence, for every kv head, once. Query heads sharing a kv head (GQA) read it from cache,
    and blocks shared between sequences are counted per sequence (each reads them). Quantised storage
    adds its per_head / per_block scales (the per_tensor / per_kv_head ones are a few cached bytes)."""
    tokens = int((p.context_lens.astype(np.int64) - p.first_tokens()).sum())
    data = 2 * tokens * p.num_kv_heads * p.head_dim * p.kv_storage.itemsize
    kv = p.kv_quant
    if kv is not None and kv.granularity == "per_head":  # a 4-byte scale per token, kv head, K and V
        data += 2 * tokens * p.num_kv_heads * 4
    elif kv is not None and kv.granularity == "per_block":
        data += 2 * num_blocks_touched(p) * p.num_kv_heads * 4
    return data


def num_blocks_touched(p: DecodeProblem) -> int:
    """KV blocks read, summed over sequences (a block of all kv heads counts once per sequence)."""
    lens = p.context_lens.astype(np.int64)
    first_block = p.first_tokens() // p.block_size
    return int(sum(blocks_needed(int(n), p.block_size) - int(f) for n, f in zip(lens, first_block, strict=True)
                   if n > 0))


def make_problem(context_lens: Sequence[int] | np.ndarray, *, num_heads: int, num_kv_heads: int, head_dim: int,
                 block_size: int, dtype: str, rng: np.random.Generator, max_context: int | None = None,
                 window: int = 0, partition_size: int = DEFAULT_PARTITION_SIZE, kv_dtype: str = "") -> DecodeProblem:
    """A random problem: N(0, 1) queries and K/V, each sequence's blocks scattered over a pool with
    spare blocks. Unwritten slots (spares, the tail of last blocks) hold NaN, so reading one shows.
    kv_dtype (e.g. "int8:per_block"): quantise the K/V (rounded to `dtype` first) with scales from
    their absolute maxima (gpu.ops.quant.quantize_pool); unwritten slots hold the poison code and, for
    per_block / per_head, NaN scales."""
    st = storage_type(dtype)
    kv = parse_kv_dtype(kv_dtype) if kv_dtype else None
    check_geometry(head_dim, block_size)
    lens = np.asarray(context_lens, np.int32)
    if lens.ndim != 1 or (lens.size and lens.min() < 0):
        raise KernelInputError("context_lens must be a 1-D sequence of integers >= 0")
    longest = int(lens.max(initial=0))
    max_ctx = longest if max_context is None else int(max_context)
    if max_ctx < longest:
        raise KernelInputError(f"max_context = {max_ctx} is shorter than the longest context {longest}")
    need = sum(blocks_needed(int(n), block_size) for n in lens)
    pool = allocate_pool(need + max(2, need // 8), num_kv_heads, block_size, head_dim, st)
    tables = scattered_block_tables(lens, block_size, pool.num_blocks, rng,
                                    max_blocks_per_seq=max(1, blocks_needed(max_ctx, block_size)))
    for i, n in enumerate(lens):
        t = np.arange(int(n))
        for arr in (pool.k, pool.v):
            arr[tables[i, t // block_size], :, t % block_size, :] = st.encode(
                rng.standard_normal((int(n), num_kv_heads, head_dim)))
    q = st.encode(rng.standard_normal((len(lens), num_heads, head_dim)))
    k, v, k_scales, v_scales = pool.k, pool.v, None, None
    if kv is not None:
        if st.name not in ("float16", "bfloat16"):
            raise KernelInputError(f"dtype = {st.name!r}: quantised KV ({kv.name}) takes float16 or bfloat16 queries")
        k, k_scales = quantize_pool(kv, st.decode(pool.k))
        v, v_scales = quantize_pool(kv, st.decode(pool.v))
    return DecodeProblem(q, k, v, tables, lens, num_heads, num_kv_heads, head_dim, block_size, st.name,
                         1.0 / math.sqrt(head_dim), window, partition_size, max_ctx if max_context is not None else 0,
                         kv.name if kv else "", k_scales, v_scales)


class PreparedDecode:
    """Device buffers of one problem and variant, ready to launch: calling the object launches once
    (decode, plus the reduce kernel when partitioned); output() returns float32 [num_seqs, num_heads,
    head_dim] after synchronizing."""

    def __init__(self, p: DecodeProblem, variant: str, backend: Backend, partitioned: bool | None) -> None:
        st, kv = p.storage, p.kv_quant
        self.backend, self.problem, self.variant = backend, p, variant
        if partitioned is None:
            partitioned = variant == "partitioned" or (
                variant == "contiguous" and choose_variant(p.context_lens, p.num_heads,
                                                           partition_size=p.partition_size) == "partitioned")
        self.partitioned = partitioned
        self.geometry = geometry(p)
        defines = {"HEAD_DIM": p.head_dim, "BLOCK_SIZE": p.block_size, "NUM_THREADS": NUM_THREADS,
                   "QUERY_GROUP": self.geometry.group}
        if kv is not None:
            defines["KV_QUANT"] = 1  # the quantised kernels live in their own build
        mod = backend.module(ATTENTION_FILE, defines)
        suffix = f"{st.suffix}_{kv.storage.suffix}" if kv else st.suffix
        s, h, d = p.num_seqs, p.num_heads, p.head_dim
        parts = num_partitions(p) if partitioned else 1
        self._grid = (h // self.geometry.group, s, parts)  # one CTA per (query group, sequence, partition)
        self._out = backend.empty((s, h, d), st.carrier)
        dummy = backend.empty((1,), np.float32)
        tmp = backend.full((s, h, parts, d), np.nan, np.float32) if partitioned else dummy
        es = backend.full((s, h, parts), np.nan, np.float32) if partitioned else dummy
        ml = backend.full((s, h, parts), np.nan, np.float32) if partitioned else dummy
        lens = backend.asarray(p.context_lens)
        scalars: tuple[Any, ...] = (np.int32(p.partition_size if partitioned else 0), np.int32(p.window),
                                     np.float32(p.scale), np.float32(1.0), np.float32(1.0))  # k_scale, v_scale
        q = backend.asarray(p.q)
        if variant == "contiguous":
            pad = p.kv_storage.encode(np.array([np.nan], np.float32))[0]
            kc, vc = (backend.asarray(gather_contiguous(backend.to_numpy(pool), p.block_tables, p.context_lens,
                                                        p.max_len, pad_value=pad)) for pool in (p.k_pool, p.v_pool))
            if kv is not None:
                scalars += tuple(backend.asarray(gather_scales_contiguous(
                    kv, backend.to_numpy(s), p.block_tables, p.context_lens, p.max_len, p.block_size))
                    for s in (p.k_scales, p.v_scales)) + (np.int32(kv.scale_kind),)
            self._decode = mod.get_function(f"contiguous_decode_{suffix}")
            self._args: tuple[Any, ...] = (self._out, tmp, es, ml, q, kc, vc, lens, np.int32(p.num_kv_heads),
                                           np.int32(p.max_len), *scalars)
        else:
            if kv is not None:
                scalars += (backend.asarray(p.k_scales), backend.asarray(p.v_scales), np.int32(kv.scale_kind))
            self._decode = mod.get_function(f"paged_decode_{suffix}")
            self._args = (self._out, tmp, es, ml, q, backend.asarray(p.k_pool), backend.asarray(p.v_pool),
                          backend.asarray(p.block_tables), lens, np.int32(p.num_kv_heads),
                          np.int32(p.block_tables.shape[1]), *scalars)
        self._reduce = mod.get_function(f"decode_reduce_{st.suffix}") if partitioned else None
        self._reduce_args = (self._out, tmp, es, ml, lens, np.int32(parts), np.int32(p.partition_size),
                             np.int32(p.window))

    def __call__(self) -> None:
        if self.problem.num_seqs == 0:
            return
        self._decode(self._grid, (self.geometry.threads,), self._args)
        if self._reduce is not None:
            self._reduce((self.problem.num_heads, self.problem.num_seqs), (NUM_THREADS,), self._reduce_args)

    def output(self) -> np.ndarray:
        self.backend.synchronize()
        return self.problem.storage.decode(self.backend.to_numpy(self._out)).astype(np.float32)


def prepare(problem: DecodeProblem, variant: str, backend: Backend | str = "auto", *, validate_input: bool = True,
            partitioned: bool | None = None) -> PreparedDecode:
    """Check the problem, upload it and return the launcher (see PreparedDecode). `partitioned` applies
    to "contiguous" (None: the same rule choose_variant applies to the paged kernel)."""
    if validate_input:
        validate(problem, variant)
    elif variant not in VARIANTS:
        raise KernelInputError(f"variant {variant!r}: valid are {', '.join(VARIANTS)}")
    return PreparedDecode(problem, variant, get_backend(backend), partitioned)


def run(problem: DecodeProblem, variant: str = "auto", backend: Backend | str = "auto") -> np.ndarray:
    """Launch once and return float32 [num_seqs, num_heads, head_dim]. variant "auto" = choose_variant."""
    if variant == "auto":
        variant = choose_variant(problem.context_lens, problem.num_heads, partition_size=problem.partition_size)
    prepared = prepare(problem, variant, backend)
    prepared()
    return prepared.output()
