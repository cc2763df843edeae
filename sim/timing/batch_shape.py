"""The work of one scheduler step as the latency model sees it (`BatchShape`), and the vectorized
geometry both latency models share: keys attended by causal prefill chunks, blocks and KV slots a
decode kernel reads per sequence (paged or contiguous, with or without a sliding window).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sim.presets import SpecError

__all__ = ["BatchShape", "decode_blocks_touched", "decode_tokens_read"]
_I64 = np.int64


@dataclass(slots=True)
class BatchShape:
    """The work of one step. Arrays are int64 (lists are converted); block_size 0/None = contiguous cache.

    prefill_chunk_lens: tokens processed this step per prefilling sequence (>= 1);
    prefill_context_lens: tokens already cached before each chunk (chunked prefill, prefix hits; >= 0);
    decode_context_lens: context length including the new token per decoding sequence (>= 1);
    num_decode_tokens_per_seq: query tokens per decoding sequence (k+1 when verifying k draft tokens);
      None means 1 each.
    decode_ctx_sum, decode_blocks_sum: optional precomputed sum(decode_context_lens) and (paged)
      sum(ceil(L / block_size)) over it. A caller that keeps them incrementally (the engine) passes them
      so a step costs the latency model no array work; None: computed from the array.
    Invariants (checked on construction): equal lengths of the paired arrays, values in range, the
    optional sums equal to the array's.
    """

    prefill_chunk_lens: np.ndarray
    prefill_context_lens: np.ndarray
    decode_context_lens: np.ndarray
    block_size: int | None
    kv_dtype: str = "fp16"
    num_decode_tokens_per_seq: np.ndarray | None = None
    decode_ctx_sum: int | None = None
    decode_blocks_sum: int | None = None

    def __post_init__(self) -> None:
        self.prefill_chunk_lens = np.asarray(self.prefill_chunk_lens, dtype=_I64)
        self.prefill_context_lens = np.asarray(self.prefill_context_lens, dtype=_I64)
        self.decode_context_lens = np.asarray(self.decode_context_lens, dtype=_I64)
        if self.num_decode_tokens_per_seq is not None:
            self.num_decode_tokens_per_seq = np.asarray(self.num_decode_tokens_per_seq, dtype=_I64)
        self.block_size = int(self.block_size or 0)
        self.check_invariants()

    def check_invariants(self) -> None:
        """Raise SpecError naming the field when shapes disagree or a value is out of range."""
        pc, pp, dc, q = (self.prefill_chunk_lens, self.prefill_context_lens, self.decode_context_lens,
                         self.num_decode_tokens_per_seq)
        if pc.ndim != 1 or pp.shape != pc.shape:
            raise SpecError(f"BatchShape: prefill_context_lens has shape {pp.shape}, "
                            f"prefill_chunk_lens {pc.shape} (need equal 1-D)")
        if q is not None and q.shape != dc.shape:
            raise SpecError(f"BatchShape: num_decode_tokens_per_seq has shape {q.shape}, "
                            f"decode_context_lens {dc.shape} (need equal 1-D)")
        if self.block_size < 0:  # type: ignore[operator]
            raise SpecError(f"BatchShape: block_size = {self.block_size} out of range (valid: 0/None or >= 1)")
        for name, arr, lo in (("prefill_chunk_lens", pc, 1), ("prefill_context_lens", pp, 0),
                              ("decode_context_lens", dc, 1), ("num_decode_tokens_per_seq", q, 1)):
            if arr is not None and arr.size and arr.min() < lo:
                bad = int(np.flatnonzero(arr < lo)[0])
                raise SpecError(f"BatchShape: {name}[{bad}] = {int(arr[bad])} out of range (valid: >= {lo})")
        for name, given, actual in (
                ("decode_ctx_sum", self.decode_ctx_sum, lambda: int(dc.sum())),
                ("decode_blocks_sum", self.decode_blocks_sum if self.block_size else None,
                 lambda: int(decode_blocks_touched(dc, self.block_size or 0, None).sum()))):
            if given is not None and given != actual():
                raise SpecError(f"BatchShape: {name} = {given!r} but the arrays give {actual()} "
                                f"(valid: the exact sum, or None)")

    @classmethod
    def build(cls, *, prefill: list[int] | tuple[int, ...] = (), prefill_context: list[int] | None = None,
              decode: list[int] | tuple[int, ...] = (), block_size: int | None = 16, kv_dtype: str = "fp16",
              decode_tokens: list[int] | None = None) -> BatchShape:
        """Convenience constructor from plain lists; prefill_context defaults to zeros."""
        ctx = [0] * len(prefill) if prefill_context is None else prefill_context
        return cls(np.asarray(prefill, dtype=_I64), np.asarray(ctx, dtype=_I64), np.asarray(decode, dtype=_I64),
                   block_size, kv_dtype, None if decode_tokens is None else np.asarray(decode_tokens, dtype=_I64))

    @property
    def num_seqs(self) -> int:
        """Sequences in the batch (prefilling + decoding)."""
        return int(self.prefill_chunk_lens.size + self.decode_context_lens.size)

    def num_tokens(self) -> int:
        """Tokens run through the linear layers this step (prefill chunks + decode query tokens)."""
        q = self.num_decode_tokens_per_seq
        dec = int(q.sum()) if q is not None else int(self.decode_context_lens.size)
        return int(self.prefill_chunk_lens.sum()) + dec


# ---- vectorized geometry shared by both models -------------------------------------------------------------

def _window_cumsum(n: np.ndarray, window: int | None) -> np.ndarray:
    """sum_{j=1..n} min(j, W): keys attended by queries at positions 1..n (causal, sliding window W)."""
    if window is None:
        return n * (n + 1) // 2
    m = np.minimum(n, window)
    return m * (m + 1) // 2 + window * (n - m)


def decode_blocks_touched(ctx: np.ndarray, block_size: int, window: int | None) -> np.ndarray:
    """Blocks a paged decode kernel reads per sequence: those holding the last min(L, W) tokens."""
    last = (ctx + (block_size - 1)) // block_size  # ceil(L / B) in two array operations
    if window is None:
        return last
    return last - np.maximum(ctx - window, 0) // block_size


def decode_tokens_read(ctx: np.ndarray, block_size: int, window: int | None) -> np.ndarray:
    """KV token slots a decode kernel reads per sequence.

    Paged (block_size > 0): whole blocks, so the last partial block is read in full (vLLM's kernel loads
    every slot of a block and masks the tail). Contiguous: exactly min(L, W) tokens.
    """
    if block_size:
        return decode_blocks_touched(ctx, block_size, window) * block_size
    return ctx if window is None else np.minimum(ctx, window)
