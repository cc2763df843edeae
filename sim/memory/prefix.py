"""Content hashes of full KV blocks for prefix caching, chained so a hash names the whole prefix.

Block k (tokens [kB, (k+1)B)) gets hash(parent hash, its content, ...) only when it is full and its
content is known; equal hashes therefore mean equal leading tokens up to the end of that block.
Two sources: a request's `prefix_hashes` ids (each covering `prefix_unit` tokens), or token ids.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

ROOT_HASH = 0x5EED_CAFE
"""Parent hash of block 0. An int, because hash(None) is not stable across runs before Python 3.12."""


class HasPrefix(Protocol):
    """Anything with a RequestSpec's prefix fields."""

    @property
    def prompt_len(self) -> int: ...
    @property
    def prefix_hashes(self) -> tuple[int, ...]: ...
    @property
    def prefix_unit(self) -> int: ...


def prefix_block_hashes(prompt_len: int, prefix_hashes: Sequence[int], prefix_unit: int,
                        block_size: int) -> tuple[int, ...]:
    """Chained hashes of the full prompt blocks covered by `prefix_hashes` ids.

    The ids cover tokens [0, min(len(ids) * prefix_unit, prompt_len)). Block k gets a hash iff
    (k+1)*block_size lies within that range; its hash is hash((parent, ids of the units it overlaps,
    offset of the block start inside the first of them)). Equal leading ids thus give equal block
    hashes for any block size (smaller than, equal to or larger than the unit). Python's hash of a
    tuple of ints is deterministic (no PYTHONHASHSEED salt) on a given 64-bit CPython >= 3.8.
    """
    if block_size < 1 or prefix_unit < 1:
        raise ValueError(f"block_size = {block_size}, prefix_unit = {prefix_unit} (valid: integers >= 1)")
    covered = min(len(prefix_hashes) * prefix_unit, prompt_len)
    out: list[int] = []
    parent = ROOT_HASH
    ids = tuple(prefix_hashes)
    for k in range(covered // block_size):
        start, end = k * block_size, (k + 1) * block_size
        u0, u1 = start // prefix_unit, (end - 1) // prefix_unit
        parent = hash((parent, ids[u0:u1 + 1], start - u0 * prefix_unit))
        out.append(parent)
    return tuple(out)


def block_hashes(spec: HasPrefix, block_size: int) -> tuple[int, ...]:
    """Chained hashes of a request's full prompt blocks (see prefix_block_hashes); () without ids."""
    if not spec.prefix_hashes:
        return ()
    return prefix_block_hashes(spec.prompt_len, spec.prefix_hashes, spec.prefix_unit, block_size)


def next_token_block_hash(parent: int, tokens: Sequence[int]) -> int:
    """Hash of one full block of token ids chained to its parent block's hash (ROOT_HASH for block 0)."""
    return hash((parent, tuple(tokens)))


def token_block_hashes(token_ids: Sequence[int], block_size: int, parent: int = ROOT_HASH) -> tuple[int, ...]:
    """Chained hashes of every full block of `token_ids` (a trailing partial block gets none)."""
    if block_size < 1:
        raise ValueError(f"block_size = {block_size} out of range (valid: integer >= 1)")
    out: list[int] = []
    for k in range(len(token_ids) // block_size):
        parent = next_token_block_hash(parent, token_ids[k * block_size:(k + 1) * block_size])
        out.append(parent)
    return tuple(out)
