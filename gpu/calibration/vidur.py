"""Read Vidur's operator-profile CSVs (microsoft/vidur `data/profiling/compute/<gpu>/<model>/`).

`mlp.csv`: one row per (num_tokens, num_tensor_parallel_workers) with `time_stats.<op>.median` in
milliseconds for the layer's operators, and the architecture (`n_head`, `n_kv_head`, `n_embd`,
`n_expanded_embd`, `use_gated_mlp`). `read_vidur_mlp` turns the four linear operators (attn_pre_proj = QKV,
attn_post_proj, mlp_up_proj = gate+up, mlp_down_proj) into GEMM timings (gpu.calibration.gemm columns)
with the per-GPU weight shape each one multiplies by.

`attention.csv`: one row per (batch_size, kv_cache_size, prefill_chunk_size, is_prefill, block_size,
num_tensor_parallel_workers) with `time_stats.attn_decode.median` (decode rows, one query token per
sequence, every sequence with kv_cache_size cached tokens) or `time_stats.attn_prefill.median` (prefill
rows: one sequence, a chunk of prefill_chunk_size tokens after kv_cache_size cached ones), in ms, plus
`n_q_head`, `n_kv_head`, `n_embd`. `read_vidur_attention` turns decode rows into the decode-kernel timings
CONTRACT of gpu.calibration.kernels (variant "paged", kv_bytes of the contexts, blocks touched), and
prefill rows into (attention FLOPs of one layer, seconds) pairs for the `attn_prefill` term.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from gpu.calibration.kernels import CalibrationError
from sim.presets import ModelSpec

LINEAR_OPS: tuple[str, ...] = ("attn_pre_proj", "attn_post_proj", "mlp_up_proj", "mlp_down_proj")
MLP_ARCH: tuple[str, ...] = ("n_head", "n_kv_head", "n_embd", "n_expanded_embd", "use_gated_mlp",
                             "num_tokens", "num_tensor_parallel_workers")
ATTN_ARCH: tuple[str, ...] = ("n_q_head", "n_kv_head", "n_embd", "num_tensor_parallel_workers", "block_size",
                              "batch_size", "prefill_chunk_size", "kv_cache_size", "is_prefill")
MS = 1e-3


def _read_csv(path: str | Path) -> pd.DataFrame:
    p = Path(path)
    if not p.is_file():
        raise CalibrationError(f"Vidur profile {p}: not found")
    try:
        return pd.read_csv(p)
    except Exception as e:  # pandas raises many types for unreadable files
        raise CalibrationError(f"Vidur profile {p}: cannot read ({type(e).__name__}: {e})") from None


def _need(df: pd.DataFrame, cols: tuple[str, ...] | list[str], src: str) -> None:
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise CalibrationError(f"{src}: missing column(s) {', '.join(missing)}")


def _positive(df: pd.DataFrame, col: str, src: str, mask: np.ndarray | None = None) -> np.ndarray:
    v = pd.to_numeric(df[col], errors="coerce").to_numpy(dtype=float)
    bad = ~np.isfinite(v) | (v <= 0)
    if mask is not None:
        bad &= mask
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise CalibrationError(f"{src}: column '{col}' line {i + 2}: {df[col].iloc[i]!r} is not a number > 0")
    return v


def _bool(series: pd.Series) -> np.ndarray:
    return series.astype(str).str.strip().str.lower().isin(["true", "1", "1.0"]).to_numpy()


def read_vidur_mlp(path: str | Path, model_name: str | None = None) -> pd.DataFrame:
    """GEMM timings (op, num_tokens, k, n, latency_s, model, tensor_parallel) from a Vidur mlp.csv.

    `model_name` labels the rows (default: the file name). CalibrationError naming the file, column
    and line for a missing column or a non-positive time.
    """
    src = f"Vidur profile {Path(path)}"
    df = _read_csv(path)
    _need(df, [*MLP_ARCH, *(f"time_stats.{op}.median" for op in LINEAR_OPS)], src)
    for col in ("n_head", "n_kv_head", "n_embd", "n_expanded_embd", "num_tokens", "num_tensor_parallel_workers"):
        _positive(df, col, src)
    name = model_name or profile_name(path)
    tp, h, nh, nkv, f, tokens = (df[c].to_numpy(dtype=np.int64) for c in (
        "num_tensor_parallel_workers", "n_embd", "n_head", "n_kv_head", "n_expanded_embd", "num_tokens"))
    hd = h // nh
    gated = _bool(df["use_gated_mlp"])
    shapes = {"attn_pre_proj": (h, (nh + 2 * nkv) * hd // tp), "attn_post_proj": (nh * hd // tp, h),
              "mlp_up_proj": (h, np.where(gated, 2, 1) * f // tp), "mlp_down_proj": (f // tp, h)}
    frames = []
    for op, (k, n) in shapes.items():
        t = _positive(df, f"time_stats.{op}.median", src) * MS
        frames.append(pd.DataFrame({"op": op, "num_tokens": tokens, "k": k, "n": n, "latency_s": t, "model": name,
                                    "tensor_parallel": tp, "n_embd": h, "n_head": nh, "n_kv_head": nkv,
                                    "n_expanded_embd": f, "gated": gated}))
    if not len(df):
        raise CalibrationError(f"{src}: no rows")
    return pd.concat(frames, ignore_index=True)


def profile_name(path: str | Path) -> str:
    """A label for a profile's rows: Vidur's layout <org>/<model>/mlp.csv gives <model>; a renamed copy
    such as h100_Llama-2-7b-hf_mlp.csv gives Llama-2-7b-hf."""
    p = Path(path)
    if p.stem in ("mlp", "attention"):
        return p.parent.name or p.stem
    stem = p.stem.removesuffix("_mlp").removesuffix("_attention")
    head, _, rest = stem.partition("_")
    return rest if rest and head.lower() in ("a100", "h100", "h200", "a40", "l40s") else stem


def check_architecture(df: pd.DataFrame, model: ModelSpec, src: str) -> None:
    """CalibrationError if the profile's architecture is not `model`'s (hidden, heads, KV heads, MLP)."""
    want = {"n_embd": model.hidden_size, "n_head": model.num_heads, "n_kv_head": model.num_kv_heads}
    if "n_expanded_embd" in df:
        want["n_expanded_embd"] = model.intermediate_size
    for col, v in want.items():
        have = sorted({int(x) for x in df[col].unique()})
        if have != [v]:
            raise CalibrationError(f"{src}: {col} = {have} but --model {model.name} has {v} "
                                   "(profile of another architecture)")


def read_vidur_attention(path: str | Path, kv_dtype_bytes: int = 2) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(decode timings in the kernels CONTRACT, prefill rows) from a Vidur attention.csv.

    Decode row -> variant "paged", batch_size, block_size, per-GPU heads, kv_bytes = batch * (kv_cache_size
    + 1) * 2 * kv_heads * head_dim * bytes (the new token included), num_blocks_touched = batch *
    ceil((kv_cache_size + 1) / block_size), latency_s. Prefill row -> chunk, context, per-GPU heads,
    head_dim, attention FLOPs of one layer (4 * heads * head_dim * (chunk * context + chunk (chunk + 1) / 2),
    causal), latency_s. Either frame may be empty; CalibrationError if both are.
    """
    src = f"Vidur profile {Path(path)}"
    df = _read_csv(path)
    _need(df, ATTN_ARCH, src)
    for col in ("n_q_head", "n_kv_head", "n_embd", "num_tensor_parallel_workers", "block_size", "batch_size"):
        _positive(df, col, src)
    pre = _bool(df["is_prefill"])
    tp = df["num_tensor_parallel_workers"].to_numpy(int)
    heads, kvh = df["n_q_head"].to_numpy(int) // tp, df["n_kv_head"].to_numpy(int) // tp
    hd = df["n_embd"].to_numpy(int) // df["n_q_head"].to_numpy(int)
    ctx = pd.to_numeric(df["kv_cache_size"], errors="coerce").fillna(0).to_numpy(float)
    bs, batch = df["block_size"].to_numpy(int), df["batch_size"].to_numpy(float)
    decode = pd.DataFrame()
    if (~pre).any():
        _need(df, ["time_stats.attn_decode.median"], src)
        t = _positive(df, "time_stats.attn_decode.median", src, ~pre) * MS
        keys = ctx + 1
        d = ~pre
        decode = pd.DataFrame({
            "variant": "paged", "batch_size": batch[d].astype(int), "block_size": bs[d], "num_heads": heads[d],
            "num_kv_heads": kvh[d], "head_dim": hd[d], "dtype": "fp16" if kv_dtype_bytes == 2 else "fp8_e4m3",
            "kv_bytes": batch[d] * keys[d] * 2 * kvh[d] * hd[d] * kv_dtype_bytes,
            "num_blocks_touched": batch[d] * np.ceil(keys[d] / bs[d]), "latency_s": t[d],
            "context_len_mean": keys[d], "device": "vidur"})
    prefill = pd.DataFrame()
    if pre.any():
        _need(df, ["time_stats.attn_prefill.median"], src)
        t = _positive(df, "time_stats.attn_prefill.median", src, pre) * MS
        chunk = pd.to_numeric(df["prefill_chunk_size"], errors="coerce").fillna(0).to_numpy(float)
        pairs = batch * (chunk * ctx + chunk * (chunk + 1) / 2)
        prefill = pd.DataFrame({"chunk": chunk[pre], "context": ctx[pre], "num_heads": heads[pre],
                                "head_dim": hd[pre], "attn_flops": (4.0 * heads * hd * pairs)[pre],
                                "latency_s": t[pre]})
    if decode.empty and prefill.empty:
        raise CalibrationError(f"{src}: no rows")
    return decode, prefill
