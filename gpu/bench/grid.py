"""The benchmark grid: which kernel configs `pagesim bench` measures, each with a stable id.

A `BenchGrid` (axes) expands into `BenchConfig`s (points). Configs of one *shape* (batch, context
lengths, heads, head_dim, dtype) share the same context lengths, so paged and contiguous rows compare
the same work; contiguous and torch_sdpa rows have block_size 0. The id is built from the parameters
(not the position in the grid), so `--resume` finds finished configs even after the grid changed.
"""

from __future__ import annotations

import itertools
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field, replace

import numpy as np

KERNEL_VARIANTS = ("paged", "partitioned", "contiguous")
ALL_VARIANTS = (*KERNEL_VARIANTS, "torch_sdpa")
PAGED_VARIANTS = ("paged", "partitioned")
CONTEXT_MODES = ("fixed", "mixed")
DTYPES = ("fp16", "bf16", "fp32")
DTYPE_BYTES = {"fp16": 2, "bf16": 2, "fp32": 4}


@dataclass(slots=True, frozen=True)
class BenchConfig:
    """One measured point: a kernel variant on one decode problem.

    Invariants: block_size == 0 exactly for contiguous/torch_sdpa; len(context_lens) == batch_size;
    max(context_lens) == context_len; all lengths >= 1; num_heads % num_kv_heads == 0.
    """

    variant: str
    batch_size: int
    context_len: int
    context_mode: str
    context_lens: tuple[int, ...]
    block_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    dtype: str
    seed: int = 0

    @property
    def shape_key(self) -> tuple[object, ...]:
        """Everything but variant and block size: rows with equal keys measure the same attention."""
        return (self.batch_size, self.context_len, self.context_mode, self.num_heads, self.num_kv_heads,
                self.head_dim, self.dtype, self.seed if self.context_mode == "mixed" else 0)

    @property
    def config_id(self) -> str:
        """Readable, stable id, e.g. 'paged-b32-c2048-bs16-h32kv8-d128-fp16' ('c2048mix-s0' when mixed)."""
        ctx = f"c{self.context_len}" + (f"mix-s{self.seed}" if self.context_mode == "mixed" else "")
        return (f"{self.variant}-b{self.batch_size}-{ctx}-bs{self.block_size}-h{self.num_heads}"
                f"kv{self.num_kv_heads}-d{self.head_dim}-{self.dtype}")

    def check_invariants(self) -> None:
        """Raise AssertionError naming the config when a field is inconsistent."""
        cid = self.config_id
        assert self.variant in ALL_VARIANTS, cid
        assert (self.block_size == 0) == (self.variant not in PAGED_VARIANTS), cid
        assert len(self.context_lens) == self.batch_size, cid
        assert max(self.context_lens) == self.context_len and min(self.context_lens) >= 1, cid
        assert self.context_mode in CONTEXT_MODES and self.dtype in DTYPES, cid
        assert self.num_heads % self.num_kv_heads == 0, cid


def context_lens_for(mode: str, context_len: int, batch_size: int, rng: np.random.Generator) -> tuple[int, ...]:
    """'fixed': every sequence has context_len tokens. 'mixed': lengths uniform on [1, context_len] with
    one sequence at exactly context_len, so the batch's maximum (and memory footprint) matches 'fixed'
    while the work per sequence is imbalanced, as in a real continuous batch."""
    if mode == "fixed":
        return (context_len,) * batch_size
    if mode != "mixed":
        raise ValueError(f"context mode must be one of {CONTEXT_MODES} (got {mode!r})")
    lens = rng.integers(1, context_len, size=batch_size, endpoint=True)
    lens[int(rng.integers(batch_size))] = context_len
    return tuple(int(x) for x in lens)


def _shape_rng(seed: int, batch: int, ctx: int) -> np.random.Generator:
    # One generator per (seed, batch, context) so a shape's lengths do not depend on the other axes
    # or their order: adding a block size to the grid leaves existing config ids and lengths intact.
    return np.random.default_rng([seed, batch, ctx, zlib.crc32(b"mixed")])


@dataclass(slots=True, frozen=True)
class BenchGrid:
    """Axes of the sweep. `heads` holds (num_heads, num_kv_heads) pairs (GQA when they differ).

    Invariants: every axis non-empty with valid values (see check_invariants).
    """

    variants: tuple[str, ...] = ALL_VARIANTS
    batch_sizes: tuple[int, ...] = (1, 8, 32, 64)
    context_lens: tuple[int, ...] = (512, 2048, 8192)
    context_modes: tuple[str, ...] = CONTEXT_MODES
    block_sizes: tuple[int, ...] = (8, 16, 32)
    heads: tuple[tuple[int, int], ...] = ((32, 32), (32, 8))
    head_dims: tuple[int, ...] = (128,)
    dtypes: tuple[str, ...] = ("fp16", "bf16")
    seed: int = 0
    name: str = field(default="custom", compare=False)

    def check_invariants(self) -> None:
        """Raise ValueError naming the axis and the valid range for the first bad value."""
        def bad(axis: str, value: object, valid: str) -> ValueError:
            return ValueError(f"grid axis {axis}: {value!r} is not valid ({valid})")

        for axis in ("variants", "batch_sizes", "context_lens", "context_modes", "block_sizes", "heads",
                     "head_dims", "dtypes"):
            if not getattr(self, axis):
                raise ValueError(f"grid axis {axis} is empty")
        for v in self.variants:
            if v not in ALL_VARIANTS:
                raise bad("variants", v, f"one of {', '.join(ALL_VARIANTS)}")
        for m in self.context_modes:
            if m not in CONTEXT_MODES:
                raise bad("context_modes", m, f"one of {', '.join(CONTEXT_MODES)}")
        for d in self.dtypes:
            if d not in DTYPES:
                raise bad("dtypes", d, f"one of {', '.join(DTYPES)}")
        for axis in ("batch_sizes", "context_lens", "block_sizes", "head_dims"):
            for x in getattr(self, axis):
                if int(x) < 1:
                    raise bad(axis, x, "integers >= 1")
        for h, kv in self.heads:
            if h < 1 or kv < 1 or h % kv:
                raise bad("heads", f"{h}:{kv}", "num_heads:num_kv_heads with num_heads a multiple of num_kv_heads")

    def configs(self) -> Iterator[BenchConfig]:
        """Expand in run order: per shape, contiguous first (the baseline every paged row's overhead is
        computed against), then torch_sdpa, then paged/partitioned per block size. Duplicate axis values
        are measured once; 'mixed' at batch size 1 is skipped when 'fixed' is in the grid (same rows)."""
        self.check_invariants()
        uniq = dict.fromkeys  # keeps order, drops repeats
        points = [(v, 0) for v in ("contiguous", "torch_sdpa")]
        points += [(v, bs) for bs in uniq(self.block_sizes) for v in PAGED_VARIANTS]
        points = [(v, bs) for v, bs in points if v in self.variants]
        shapes = itertools.product(uniq(self.dtypes), uniq(self.head_dims), uniq(self.heads),
                                   uniq(self.batch_sizes), uniq(self.context_lens), uniq(self.context_modes))
        for dtype, hd, (h, kv), b, ctx, mode in shapes:
            if mode == "mixed" and b == 1 and "fixed" in self.context_modes:
                continue  # a batch of one cannot mix lengths: the same rows as 'fixed'
            lens = context_lens_for(mode, ctx, b, _shape_rng(self.seed, b, ctx))
            base = BenchConfig(variant="contiguous", batch_size=b, context_len=ctx, context_mode=mode,
                               context_lens=lens, block_size=0, num_heads=h, num_kv_heads=kv,
                               head_dim=hd, dtype=dtype, seed=self.seed)
            for v, bs in points:
                yield replace(base, variant=v, block_size=bs)

    def size(self) -> int:
        """Number of configs the grid expands to."""
        return sum(1 for _ in self.configs())


#: Named grids. 'quick' is sized to finish in well under two minutes on one H100/A100; 'goal' is the
#: performance-goal region (batch >= 32, context >= 2K, fp16, head_dim 128); 'tiny' is for the CPU
#: shim (shapes small enough that a launch takes milliseconds there).
GRIDS: dict[str, BenchGrid] = {
    "full": BenchGrid(name="full"),
    "quick": BenchGrid(batch_sizes=(1, 32), context_lens=(512, 2048), block_sizes=(16, 32),
                       heads=((32, 8),), dtypes=("fp16",), name="quick"),
    "goal": BenchGrid(batch_sizes=(32, 64), context_lens=(2048, 4096, 8192), context_modes=("fixed",),
                      block_sizes=(8, 16, 32), heads=((32, 32), (32, 8)), dtypes=("fp16",), name="goal"),
    # tiny: three context lengths so that every variant has enough rows for `pagesim calibrate`
    "tiny": BenchGrid(batch_sizes=(3,), context_lens=(9, 24, 40), block_sizes=(8, 16), heads=((4, 2),),
                      head_dims=(64,), dtypes=("fp32",), name="tiny"),
}
