"""The decode launch geometry (Python mirror of DecodeGeometry<C>) and the split-K choice: query groups
for GQA ratios, threads / tiles / shared memory per instantiation, CTAs per SM, and partition sizes that
fill the GPU at small batch and stay unsplit at large batch. Pure Python: no compile, no launch."""

from __future__ import annotations

import numpy as np
import pytest

from gpu.ops.split import (
    DecodeGeometry,
    choose_partition_size,
    count_ctas,
    partition_unit,
    query_group,
)

H100 = {"num_sms": 132}


@pytest.mark.parametrize("heads,kv,group", [(32, 32, 1), (32, 16, 2), (32, 8, 4), (64, 8, 8), (128, 8, 8),
                                            (48, 8, 2), (24, 8, 1), (28, 4, 1)])
def test_query_group_divides_the_ratio(heads, kv, group):
    assert query_group(heads, kv) == group
    assert (heads // kv) % group == 0


def test_query_group_rejects_bad_heads():
    with pytest.raises(ValueError, match="num_kv_heads"):
        query_group(30, 8)


@pytest.mark.parametrize("d,item,group,threads,tile", [
    (128, 2, 1, 128, 32), (128, 2, 8, 128, 32), (128, 4, 8, 128, 8), (256, 2, 8, 128, 16),
    (256, 4, 8, 128, 8), (64, 1, 1, 128, 128), (128, 1, 4, 128, 64), (256, 1, 8, 128, 32), (64, 2, 8, 128, 32),
    (64, 1, 8, 128, 64), (128, 1, 8, 128, 32)])  # capped at 16 logits per thread
def test_geometry_matches_the_kernel_formulas(d, item, group, threads, tile):
    g = DecodeGeometry(d, item, group)
    assert (g.threads, g.tile_tokens) == (threads, tile)
    assert g.row_threads * g.vec == d and g.row_threads <= 32
    slots = g.threads // (g.row_threads * group // g.heads_per_thread)
    assert slots == g.token_slots and g.tile_tokens % slots == 0  # every token slot gets tokens
    assert g.tile_tokens // slots * g.heads_per_thread <= 16  # at most 16 logits per thread
    assert g.heads_per_thread == (2 if group >= 2 and g.vec <= 16 else 1)
    assert g.smem_bytes == 2 * 2 * tile * d * item + 2 * 2 * tile * 4
    assert g.min_blocks * g.threads == 512  # a 128-register budget per thread


def test_ctas_per_sm_limits():
    g = DecodeGeometry(128, 2, 4)
    assert g.ctas_per_sm() == 4  # launch-bounds worst case: 128 registers x 128 threads
    assert g.ctas_per_sm(registers=64) == 6  # then shared memory (33.3 KiB + 1 KiB of 228 KiB) limits
    assert g.ctas_per_sm(registers=64, smem_per_sm=164 * 1024) == 4  # A100
    assert DecodeGeometry(256, 4, 8).ctas_per_sm(registers=40) == 6  # fp32 head_dim 256: smem-bound as well


def test_no_split_when_the_grid_fills_the_gpu():
    # batch 64 x 32 heads (MHA): 2048 CTAs >= 132 x 4 slots
    assert choose_partition_size([8192] * 64, head_groups=32, block_size=16, tile_tokens=32,
                                 ctas_per_sm=4, **H100) == 0


@pytest.mark.parametrize("batch", [1, 2, 4, 8])
def test_small_batch_long_context_fills_the_gpu(batch):
    lens = [32768] * batch
    size = choose_partition_size(lens, head_groups=8, block_size=16, tile_tokens=32, ctas_per_sm=4, **H100)
    assert size > 0 and size % partition_unit(16, 32) == 0
    ctas = count_ctas(np.asarray(lens), 8, size)
    assert ctas >= 132 * 4  # every resident slot gets a CTA
    # ... with the fewest partitions that do, balanced (the longest chain as short as that count allows)
    parts = -(-32768 // size)
    fewer = -(-32768 // (parts - 1) // 32) * 32
    assert count_ctas(np.asarray(lens), 8, fewer) < 132 * 4
    assert size == -(-32768 // parts // 32) * 32


def test_split_respects_the_minimum_and_the_unit():
    size = choose_partition_size([2048], head_groups=1, block_size=32, tile_tokens=16, ctas_per_sm=8, **H100)
    assert size == 256  # the 256-token floor (a multiple of lcm(32, 16))
    assert choose_partition_size([200], head_groups=1, block_size=16, tile_tokens=32, ctas_per_sm=8, **H100) == 0
    assert choose_partition_size([], head_groups=1, block_size=16, tile_tokens=32, ctas_per_sm=8, **H100) == 0
    # max_partitions raises the floor: 1M tokens in at most 1024 partitions
    size = choose_partition_size([1 << 20], head_groups=1, block_size=16, tile_tokens=32, ctas_per_sm=8,
                                 max_partitions=1024, **H100)
    assert -(-(1 << 20) // size) <= 1024


def test_mixed_lengths_count_only_nonempty_partitions():
    lens = np.array([16, 16, 16, 40000])
    size = choose_partition_size(lens, head_groups=4, block_size=16, tile_tokens=32, ctas_per_sm=4, **H100)
    assert count_ctas(lens, 4, size) >= 528 and size > 0
    assert count_ctas(lens, 4, 0) == 16
    # when even the 256-token floor cannot fill the GPU, the floor is taken
    assert choose_partition_size([16, 30000], head_groups=4, block_size=16, tile_tokens=32, ctas_per_sm=4,
                                 **H100) == 256


def test_split_rejects_bad_arguments():
    with pytest.raises(ValueError, match="num_sms = 0"):
        choose_partition_size([100], head_groups=1, block_size=16, tile_tokens=32, ctas_per_sm=4, num_sms=0)


def test_planned_split_runs_and_matches_the_reference():
    from gpu_testing import assert_close, backend_for, reference_for

    from gpu.ops import attention as A

    p = A.make_problem([700, 3], num_heads=8, num_kv_heads=2, head_dim=64, block_size=16, dtype="float16",
                       rng=np.random.default_rng(3))
    size = A.plan_partition_size(p, num_sms=132)
    assert size == 256  # 2 head groups x 2 sequences: split to the 256-token floor (3 partitions)
    p.partition_size = size
    assert_close(A.run(p, "partitioned", backend_for("cpu")), reference_for(p), "float16")
    assert A.plan_partition_size(p, num_sms=1) == 0  # 4 CTAs fill a 1-SM GPU
