"""Chained block hashes from prefix ids (any block size vs unit) and from token ids."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from sim.memory.prefix import block_hashes, prefix_block_hashes, token_block_hashes
from sim.request import RequestSpec


def spec(ids: tuple[int, ...], prompt_len: int, unit: int) -> RequestSpec:
    return RequestSpec(req_id=0, arrival_time=0.0, prompt_len=prompt_len, output_len=1,
                       prefix_hashes=ids, prefix_unit=unit)


def common_prefix(a: tuple[int, ...], b: tuple[int, ...]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


@pytest.mark.parametrize(("block_size", "unit", "shared_blocks"), [
    (4, 4, 2),  # B == unit: ids [1, 2] shared -> 2 blocks
    (2, 4, 4),  # B < unit: each shared id covers 2 blocks
    (1, 4, 8),
    (8, 4, 1),  # B > unit: block 0 = ids [1, 2]; block 1 = ids [3|4, ...] differs
    (3, 4, 2),  # B does not divide unit: [0,3) [3,6) lie in ids 1..2; [6,9) overlaps id 3
])
def test_equal_leading_ids_give_equal_hashes(block_size: int, unit: int, shared_blocks: int) -> None:
    a = block_hashes(spec((1, 2, 3, 5), 16, unit), block_size)
    b = block_hashes(spec((1, 2, 4, 5), 16, unit), block_size)
    assert len(a) == len(b) == 16 // block_size
    assert common_prefix(a, b) == shared_blocks
    # the chain: once different, different for every later block (even though id 5 is shared)
    assert all(x != y for x, y in zip(a[shared_blocks:], b[shared_blocks:], strict=True))


def test_blocks_within_one_unit_differ_by_offset() -> None:
    h = block_hashes(spec((9,), 8, 8), 4)
    assert len(h) == 2 and h[0] != h[1]


def test_coverage_limits() -> None:
    # prompt 10 tokens, unit 4, three ids (the last covers tokens 8..9 only): blocks of 4 -> 2 full
    assert len(prefix_block_hashes(10, (1, 2, 3), 4, 4)) == 2
    # one id covers 4 tokens only: one block of 4, none of 8
    assert len(prefix_block_hashes(10, (1,), 4, 4)) == 1
    assert prefix_block_hashes(10, (1,), 4, 8) == ()
    # ids beyond the prompt are ignored
    assert len(prefix_block_hashes(6, (1, 2, 3, 4), 2, 2)) == 3
    assert block_hashes(spec((), 100, 16), 16) == ()


def test_shorter_prompt_same_ids_shares_full_blocks() -> None:
    long = block_hashes(spec((1, 2, 3, 4), 16, 4), 4)
    short = block_hashes(spec((1, 2, 3), 11, 4), 4)
    assert short == long[:2]


def test_bad_sizes() -> None:
    with pytest.raises(ValueError, match="block_size"):
        prefix_block_hashes(8, (1,), 4, 0)
    with pytest.raises(ValueError, match="block_size"):
        token_block_hashes([1, 2], 0)


def test_token_block_hashes() -> None:
    a = token_block_hashes([1, 2, 3, 4, 5, 6, 7], 2)
    b = token_block_hashes([1, 2, 3, 9, 5, 6], 2)
    assert len(a) == 3 and len(b) == 3
    assert a[0] == b[0] and a[1] != b[1] and a[2] != b[2]  # chained: block 2 equal content, other parent
    assert token_block_hashes([1, 2, 3], 4) == ()
    assert token_block_hashes([1, 2, 3, 4], 2)[0] == a[0]


def test_hashes_stable_across_processes() -> None:
    code = ("from sim.memory.prefix import prefix_block_hashes, token_block_hashes;"
            "print(prefix_block_hashes(64, (5, 7, 11), 32, 16), token_block_hashes([3, 1, 4, 1, 5, 9], 3))")
    outs = set()
    for seed in ("1", "2"):
        env = dict(os.environ, PYTHONHASHSEED=seed)
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
        outs.add(r.stdout)
    assert len(outs) == 1
    here = f"{prefix_block_hashes(64, (5, 7, 11), 32, 16)} {token_block_hashes([3, 1, 4, 1, 5, 9], 3)}\n"
    assert outs == {here}
