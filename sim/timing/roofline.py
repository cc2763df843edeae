"""The roofline latency model (labelled "roofline"): each term of a step bounded by max(bytes / HBM
bandwidth, FLOPs / peak) from the model and GPU presets, plus the engine profile's overheads.

step_time = t_linear + t_attn_prefill + t_attn_decode + t_comm + t_overhead + t_seq_overhead * num_seqs
(TERMS names them); the engine profile (sim.timing.engines) sets the CPU costs, the decode kernel's
efficiency and per-block / per-sequence costs and the all-reduce latency. `LatencyModel` is the protocol.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np

from sim.presets import GPUSpec, ModelSpec, SpecError, check_tensor_parallel, get_gpu, get_model
from sim.timing.batch_shape import BatchShape, _window_cumsum, decode_blocks_touched
from sim.timing.engines import EngineProfile, get_engine
from sim.timing.gemm import H100_VIDUR, GemmLinear, GemmParams
from sim.timing.latency_params import DEFAULT_EFFICIENCY

__all__ = ["TERMS", "LatencyModel", "RooflineLatency"]
_SMALL = 16  # below this many prefilling sequences, plain Python sums beat NumPy calls
TERMS: tuple[str, ...] = ("linear", "attn_prefill", "attn_decode", "comm", "overhead", "seq_overhead")


@runtime_checkable
class LatencyModel(Protocol):
    """Anything that predicts a step's duration in seconds; `name` labels results ("roofline", ...)."""

    name: str

    def step_time(self, batch: BatchShape) -> float:
        """Seconds the forward pass over `batch` takes; 0.0 for an empty batch."""
        ...


class RooflineLatency:
    """Each term bounded by max(bytes / (HBM BW * eff), FLOPs / (peak * flops_eff)) from the presets.

    - linear: all weights read once per step (shared by the batch); 2 FLOPs per weight per token, plus the
      LM head for one logits row per decoding query token and per prefilling sequence;
    - prefill attention: causal QK^T and PV FLOPs over each chunk's (windowed) context; reads the context's
      KV and writes the chunk's;
    - decode attention: reads the KV of every context (whole blocks when paged, see decode_tokens_read),
      writes the new tokens' KV; FLOPs 4 * heads * head_dim per (query token, key);
      the bytes at the engine's attention efficiency, plus the engine's kernel costs per (block touched,
      layer, head) when paged and per (sequence, layer, head);
    - comm (tensor_parallel > 1): two ring all-reduces per layer of tokens * hidden activations over NVLink,
      each with the engine's fixed all-reduce latency;
    - overhead: the engine's CPU time per step; seq_overhead: its CPU time per running sequence.
    Tensor parallelism divides weights, KV bytes and FLOPs evenly over the GPUs (heads sharded).
    `overhead_s` (None: the engine's step_overhead_s) overrides the per-step CPU time.
    """

    def __init__(self, model: ModelSpec | str, gpu: GPUSpec | str, *, overhead_s: float | None = None,
                 efficiency: float = DEFAULT_EFFICIENCY, flops_efficiency: float | None = None,
                 tensor_parallel: int = 1, engine: EngineProfile | str | None = None,
                 gemm: GemmParams | None = None) -> None:
        self.model, self.gpu = get_model(model), get_gpu(gpu)
        self.engine = eng = get_engine(engine)
        # The linear layers: the measured GEMM curve (sim.timing.gemm) when a parameters file brings one,
        # or when the engine profile asks for it and this is the GPU the shipped fit was measured on; else
        # the flat roofline. Not extrapolated: against Vidur's A100 profile of Llama-2-7B (TP 1) the H100
        # curve scaled to A100 peaks is 30-55% slow at 8-256 tokens, the flat roofline -17..+25%.
        if gemm is None and eng.gemm_curve and H100_VIDUR.fitted_on.lower() == self.gpu.name.lower():
            gemm = H100_VIDUR
        self.gemm = gemm
        self.name = "roofline" if self.gemm is None else "roofline+gemm"
        overhead_s = eng.step_overhead_s if overhead_s is None else overhead_s
        fe = efficiency if flops_efficiency is None else flops_efficiency
        for key, v in (("efficiency", efficiency), ("flops_efficiency", fe)):
            if not 0.0 < v <= 1.0:
                raise SpecError(f"latency option '{key}' = {v!r} out of range (valid: (0, 1])")
        if not overhead_s >= 0.0:
            raise SpecError(f"latency option 'overhead_s' = {overhead_s!r} out of range (valid: >= 0)")
        check_tensor_parallel(self.model, tensor_parallel)
        self.overhead_s, self.efficiency, self.flops_efficiency = float(overhead_s), float(efficiency), float(fe)
        self.tensor_parallel = tp = tensor_parallel
        m = self.model
        self._bw = self.gpu.hbm_bandwidth_Bps * efficiency
        # The decode kernel's own efficiency (None: the same as the rest of the model).
        self._bw_attn = self.gpu.hbm_bandwidth_Bps * (eng.attn_efficiency or efficiency)
        self.seq_overhead_s = float(eng.seq_overhead_s)
        heads = m.num_layers * m.num_heads / tp  # (layer, query head) pairs one GPU's decode kernel runs
        self._block_s = eng.attn_block_s * heads  # per KV block touched (paged)
        self._seq_kernel_s = eng.attn_seq_s * heads  # per decoding sequence
        self._peak = self.gpu.fp16_flops * fe
        self._weight_s = m.weight_bytes() / tp / self._bw
        self._flops_per_token = 2.0 * m.num_layers * m.layer_matmul_params() / tp
        self._flops_per_logit_row = 2.0 * m.vocab_size * m.hidden_size / tp
        self._attn_flops = 4.0 * m.num_layers * m.num_heads * m.head_dim / tp  # per (query, key) pair
        link = self.gpu.nvlink_bandwidth_Bps or self.gpu.pcie_bandwidth_Bps
        # Ring all-reduce moves 2 (tp-1)/tp of the message per GPU; 2 all-reduces per layer.
        self._comm_s_per_token = (0.0 if tp == 1 else
                                  2 * m.num_layers * 2 * (tp - 1) / tp * m.hidden_size * m.weight_dtype_bytes / link)
        self._comm_fixed_s = 0.0 if tp == 1 else 2 * m.num_layers * eng.comm_latency_s
        self._kvpt: dict[tuple[str, int], float] = {}
        self._window = m.sliding_window
        self._gemm = None if self.gemm is None else GemmLinear(m, self.gpu, tp, self.gemm)

    def kv_bytes_per_token(self, kv_dtype: str, block_size: int) -> float:
        """KV bytes per token per GPU for this dtype (cached: called every step)."""
        key = (kv_dtype, block_size)
        v = self._kvpt.get(key)
        if v is None:
            v = self._kvpt[key] = self.model.kv_bytes_per_token(kv_dtype, block_size=block_size or None) \
                / self.tensor_parallel
        return v

    def terms(self, batch: BatchShape, *, decode: bool = True) -> tuple[float, float, float, float]:
        """(linear, attn_prefill, attn_decode, comm) seconds, computed in one vectorized pass.

        Shared sums are computed once because this runs every simulated step. decode=False skips the
        decode-attention roofline (a calibrated model replaces it) and returns 0.0 for it.
        """
        pc, dc, q = batch.prefill_chunk_lens, batch.decode_context_lens, batch.num_decode_tokens_per_seq
        n_p, n_d = pc.size, dc.size
        w, bs = self._window, batch.block_size or 0
        kvpt = 0.0
        if n_p or (n_d and decode):
            kvpt = self._kvpt.get((batch.kv_dtype, bs)) or self.kv_bytes_per_token(batch.kv_dtype, bs)
        t_pre = t_dec = 0.0
        p_tokens = 0
        if n_p:
            pp = batch.prefill_context_lens
            if w is None and n_p <= _SMALL:
                # A step has few prefills; NumPy's per-call cost (~3 us) dominates such tiny arrays.
                cl, pl = pc.tolist(), pp.tolist()
                p_tokens = sum(cl)
                pairs = float(sum(c * p + c * (c + 1) // 2 for c, p in zip(cl, pl, strict=True)))
                read = float(sum(pl) + p_tokens)
            elif w is None:  # pairs = sum(c*p + c(c+1)/2) as dot products
                p_tokens = int(pc.sum())
                pairs = float(pc @ pp) + (float(pc @ pc) + p_tokens) / 2
                read = float(pp.sum()) + p_tokens
            else:
                p_tokens = int(pc.sum())
                pairs = float((_window_cumsum(pp + pc, w) - _window_cumsum(pp, w)).sum())
                read = float(np.minimum(pp + pc, w + pc - 1).sum())
            t_pre = max(kvpt * (read + p_tokens) / self._bw, self._attn_flops * pairs / self._peak)
        d_tokens = n_d if q is None else int(q.sum())
        if n_d and decode:
            ksum, bsum = batch.decode_ctx_sum, batch.decode_blocks_sum
            if ksum is not None and w is None and q is None and (bsum is not None or not bs):
                # The caller's incremental sums: the same integers as the array path below, no NumPy.
                pairs = float(ksum)
                blocks = float(bsum) if bs else 0.0  # type: ignore[arg-type]
                read = bs * blocks if bs else pairs
            else:
                keys = dc if w is None else np.minimum(dc, w)
                pairs = float(keys.sum()) if q is None else float(q @ keys)
                blocks = float(decode_blocks_touched(dc, bs, w).sum()) if bs else 0.0
                read = bs * blocks if bs else float(keys.sum())
            t_dec = (max(kvpt * (read + d_tokens) / self._bw_attn, self._attn_flops * pairs / self._peak)
                     + self._seq_kernel_s * n_d + self._block_s * blocks)
        tokens = p_tokens + d_tokens
        if tokens == 0:
            return 0.0, t_pre, t_dec, 0.0
        if self._gemm is not None:
            t_lin = self._gemm(tokens, d_tokens + n_p)
        else:
            flops = self._flops_per_token * tokens + self._flops_per_logit_row * (d_tokens + n_p)
            t_lin = max(self._weight_s, flops / self._peak)
        return t_lin, t_pre, t_dec, self._comm_s_per_token * tokens + self._comm_fixed_s

    def breakdown(self, batch: BatchShape) -> dict[str, float]:
        """Each term of step_time in seconds (keys: TERMS, i.e. linear, attn_prefill, attn_decode, comm,
        overhead, seq_overhead)."""
        if batch.num_seqs == 0:
            return dict.fromkeys(TERMS, 0.0)
        return dict(zip(TERMS, (*self.terms(batch), self.overhead_s, self.seq_overhead_s * batch.num_seqs),
                        strict=True))

    def step_time(self, batch: BatchShape) -> float:
        """Sum of the terms; 0.0 for an empty batch."""
        n_d = batch.decode_context_lens.size
        if not batch.prefill_chunk_lens.size:
            if not n_d:
                return 0.0
            ksum, bsum, bs = batch.decode_ctx_sum, batch.decode_blocks_sum, batch.block_size or 0
            if (ksum is not None and self._window is None and batch.num_decode_tokens_per_seq is None
                    and (bsum is not None or not bs)):
                return self.decode_step_time(n_d, ksum, bsum or 0, bs, batch.kv_dtype)
        t_lin, t_pre, t_dec, t_comm = self.terms(batch)
        return t_lin + t_pre + t_dec + t_comm + (self.overhead_s + self.seq_overhead_s * batch.num_seqs)

    def decode_step_time(self, num_seqs: int, ctx_sum: int, blocks_sum: int, block_size: int,
                         kv_dtype: str = "fp16") -> float:
        """step_time of a step that only decodes, one query token per sequence, from sums: ctx_sum =
        sum of the context lengths, blocks_sum = (paged) sum of ceil(L / block_size); block_size 0 =
        contiguous. No context may exceed the model's sliding window (if it has one). Bit for bit the
        value step_time gives the same batch: terms() inlined, the same arithmetic in the same order
        (t_pre = 0.0 drops out exactly); tests compare the two."""
        if not num_seqs:
            return 0.0
        bs = block_size or 0
        kvpt = self._kvpt.get((kv_dtype, bs)) or self.kv_bytes_per_token(kv_dtype, bs)
        pairs, peak = float(ctx_sum), self._peak
        # max(x, y) written as `y if y > x else x` (what max returns), without the builtin call.
        blocks = float(blocks_sum) if bs else 0.0
        x = kvpt * ((bs * blocks if bs else pairs) + num_seqs) / self._bw_attn
        y = self._attn_flops * pairs / peak
        t_dec = (y if y > x else x) + self._seq_kernel_s * num_seqs + self._block_s * blocks
        if self._gemm is not None:
            t_lin = self._gemm(num_seqs, num_seqs)
        else:
            x = self._weight_s
            y = (self._flops_per_token * num_seqs + self._flops_per_logit_row * num_seqs) / peak
            t_lin = y if y > x else x
        return (t_lin + t_dec + (self._comm_s_per_token * num_seqs + self._comm_fixed_s)
                + (self.overhead_s + self.seq_overhead_s * num_seqs))


