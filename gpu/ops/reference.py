"""Float64 NumPy reference of decode attention: for each sequence and query head, softmax(q . K^T *
scale) . V over the sequence's tokens (the last `window` ones when window > 0), with query head h
reading kv head h // (num_heads // num_kv_heads). An empty context gives zeros, as the kernels do.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from gpu.ops.layout import gather_tokens


def decode_attention(q: np.ndarray, keys: Sequence[np.ndarray], values: Sequence[np.ndarray], scale: float,
                     *, window: int = 0) -> np.ndarray:
    """q [num_seqs, num_heads, head_dim]; keys[i], values[i] [context_len_i, num_kv_heads, head_dim].
    Returns float64 [num_seqs, num_heads, head_dim]."""
    q64 = np.asarray(q, np.float64)
    s, h, d = q64.shape
    if len(keys) != s or len(values) != s:
        raise ValueError(f"{len(keys)} keys / {len(values)} values for {s} sequences")
    out = np.zeros((s, h, d))
    for i in range(s):
        k = np.asarray(keys[i], np.float64)
        v = np.asarray(values[i], np.float64)
        if window > 0:
            k, v = k[-window:], v[-window:]
        if k.shape[0] == 0:
            continue
        group = h // k.shape[1]
        kh = np.repeat(k, group, axis=1)  # [L, H, D]: query head j reads kv head j // group
        vh = np.repeat(v, group, axis=1)
        logits = np.einsum("hd,lhd->hl", q64[i], kh) * scale
        p = np.exp(logits - logits.max(axis=1, keepdims=True))
        out[i] = np.einsum("hl,lhd->hd", p, vh) / p.sum(axis=1, keepdims=True)
    return out


def paged_decode_attention(q: np.ndarray, k_pool: np.ndarray, v_pool: np.ndarray, block_tables: np.ndarray,
                           context_lens: Sequence[int] | np.ndarray, scale: float, *, window: int = 0) -> np.ndarray:
    """The same maths read through block tables from float pools [num_blocks, kv_heads, block_size, head_dim]
    (decode carrier arrays to float first, e.g. with StorageType.decode)."""
    lens = np.asarray(context_lens, np.int64)
    keys = [gather_tokens(k_pool, block_tables[i], int(n)) for i, n in enumerate(lens)]
    values = [gather_tokens(v_pool, block_tables[i], int(n)) for i, n in enumerate(lens)]
    return decode_attention(q, keys, values, scale, window=window)
