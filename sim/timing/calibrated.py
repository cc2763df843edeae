"""The calibrated latency model (labelled "calibrated:<file>"): the roofline's terms with the decode
attention (and optionally linear / prefill attention) replaced by coefficients fitted to measured
timings and read from a versioned parameters file (sim.timing.latency_params); the engine profile's CPU,
copy and all-reduce costs as in the roofline (its kernel terms are in the fit).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from sim.presets import GPUSpec, ModelSpec
from sim.timing.batch_shape import BatchShape, _window_cumsum, decode_blocks_touched
from sim.timing.engines import EngineProfile
from sim.timing.latency_params import DECODE_COEFFS, DEFAULT_EFFICIENCY, file_gemm, validate_params
from sim.timing.roofline import TERMS, RooflineLatency

__all__ = ["CalibratedLatency"]


class CalibratedLatency:
    """Roofline for linear, prefill and comm terms; the decode-attention term from fitted coefficients.

    Per decode kernel variant v (paged, partitioned, contiguous), per layer call:
      t_v = c0_s + c_kv_bytes_s * kv_bytes + c_seqs_s * num_seqs + c_blocks_s * num_blocks_touched
    where kv_bytes = sum(min(L, W)) * per-layer K+V bytes per token (token bytes, not rounded up to
    blocks: the block term carries that cost) and num_blocks_touched = sum(decode_blocks_touched).
    t_attn_decode = num_layers * t_v. A paged batch uses the fastest fitted of paged/partitioned (a server
    picks the better kernel); a contiguous batch uses "contiguous" if fitted, else the paged family with
    0 blocks. Optional "linear" {c0_s, c_tokens_s} (per step) and "attn_prefill" {c0_s, c_flops_s}
    (per layer, attention FLOPs of the layer) blocks replace those roofline terms. The engine profile
    (default: the one the file names, see sim.timing.latency.file_engine) adds its CPU time per step and
    per sequence and its all-reduce latency; its decode-kernel terms are not added (the fit holds them).
    """

    def __init__(self, params: dict[str, Any], model: ModelSpec | str, gpu: GPUSpec | str, *,
                 name: str = "calibrated", tensor_parallel: int | None = None,
                 engine: EngineProfile | str | None = None) -> None:
        p = validate_params(params)
        tp = int(p.get("tensor_parallel", 1)) if tensor_parallel is None else tensor_parallel
        ov = p.get("overhead_s") if engine is None else None  # a schema-1 file's per-step overhead
        self.roofline = RooflineLatency(model, gpu, overhead_s=None if ov is None else float(ov),
                                        efficiency=float(p.get("efficiency", DEFAULT_EFFICIENCY)),
                                        tensor_parallel=tp, engine=engine, gemm=file_gemm(p))
        self.model, self.gpu, self.name, self.params = self.roofline.model, self.roofline.gpu, name, p
        self.engine = self.roofline.engine
        self.overhead_s, self.seq_overhead_s = self.roofline.overhead_s, self.roofline.seq_overhead_s
        # No attn_decode block (a GEMM-only or serving-only calibration): the roofline's decode term.
        variants = (p.get("attn_decode") or {}).get("variants", {})
        self.decode_coeffs = {v: tuple(float(variants[v][k]) for k in DECODE_COEFFS) for v in variants}
        self._paged = [self.decode_coeffs[v] for v in ("paged", "partitioned") if v in variants]
        self._contig = [self.decode_coeffs["contiguous"]] if "contiguous" in variants else self._paged
        self._linear = p.get("linear")
        self._prefill = p.get("attn_prefill")

    def decode_features(self, batch: BatchShape) -> tuple[float, float, float, float]:
        """(1, kv_bytes, num_seqs, num_blocks_touched) of one layer's decode kernel call (per GPU)."""
        ctx, w, bs = batch.decode_context_lens, self.model.sliding_window, batch.block_size or 0
        ksum, bsum = batch.decode_ctx_sum, batch.decode_blocks_sum
        if w is None and ksum is not None:  # the caller's incremental sums (the same integers)
            keys = float(ksum)
        else:
            keys = float(ctx.sum()) if w is None else float(np.minimum(ctx, w).sum())
        per_tok = self.roofline.kv_bytes_per_token(batch.kv_dtype, bs) / self.model.num_layers
        if not bs:
            blocks = 0.0
        elif w is None and bsum is not None:
            blocks = float(bsum)
        else:
            blocks = float(decode_blocks_touched(ctx, bs, w).sum())
        return 1.0, per_tok * keys, float(ctx.size), blocks

    def t_attn_decode(self, batch: BatchShape) -> float:
        """num_layers * the fastest applicable fitted variant's per-layer time (0 without decodes)."""
        if not batch.decode_context_lens.size:
            return 0.0
        if not self._paged:
            return self.roofline.terms(batch)[2]
        _, kv, n, blocks = self.decode_features(batch)
        cands = self._paged if batch.block_size else self._contig
        return self.model.num_layers * min(c0 + ckv * kv + cs * n + cb * blocks for c0, ckv, cs, cb in cands)

    def _fitted_prefill(self, batch: BatchShape, coeffs: dict[str, Any]) -> float:
        """The file's attn_prefill term: per layer c0 + c_flops * that layer's attention FLOPs."""
        p, c, w = batch.prefill_context_lens, batch.prefill_chunk_lens, self.model.sliding_window
        if not c.size:
            return 0.0
        pairs = float((_window_cumsum(p + c, w) - _window_cumsum(p, w)).sum())
        flops_layer = self.roofline._attn_flops * pairs / self.model.num_layers
        return self.model.num_layers * (float(coeffs["c0_s"]) + float(coeffs["c_flops_s"]) * flops_layer)

    def terms(self, batch: BatchShape) -> tuple[float, float, float, float]:
        """(linear, attn_prefill, attn_decode, comm) seconds: fitted where the file has the term."""
        t_lin, t_pre, _, t_comm = self.roofline.terms(batch, decode=False)
        if self._linear is not None:
            tokens = batch.num_tokens()
            t_lin = float(self._linear["c0_s"]) + float(self._linear["c_tokens_s"]) * tokens if tokens else 0.0
        if self._prefill is not None:
            t_pre = self._fitted_prefill(batch, self._prefill)
        return t_lin, t_pre, self.t_attn_decode(batch), t_comm

    def breakdown(self, batch: BatchShape) -> dict[str, float]:
        """Each term of step_time in seconds (same keys as RooflineLatency.breakdown)."""
        if batch.num_seqs == 0:
            return dict.fromkeys(TERMS, 0.0)
        return dict(zip(TERMS, (*self.terms(batch), self.overhead_s, self.seq_overhead_s * batch.num_seqs),
                        strict=True))

    def step_time(self, batch: BatchShape) -> float:
        """Sum of the terms; 0.0 for an empty batch."""
        if batch.decode_context_lens.size + batch.prefill_chunk_lens.size == 0:
            return 0.0
        return sum(self.terms(batch)) + (self.overhead_s + self.seq_overhead_s * batch.num_seqs)

    def decode_step_time(self, num_seqs: int, ctx_sum: int, blocks_sum: int, block_size: int,
                         kv_dtype: str = "fp16") -> float:
        """step_time of a decode-only step from sums (see RooflineLatency.decode_step_time), bit for
        bit: the roofline's linear and comm terms (or the fitted linear term) plus the fitted decode
        term, added as step_time adds them (its prefill term is 0.0)."""
        if not num_seqs:
            return 0.0
        r, m, bs = self.roofline, self.model, block_size or 0
        n = num_seqs
        if not self._paged and self._linear is None:  # nothing fitted in a decode-only step but overheads
            return r.decode_step_time(num_seqs, ctx_sum, blocks_sum, block_size, kv_dtype)
        if self._linear is not None:
            t_lin = float(self._linear["c0_s"]) + float(self._linear["c_tokens_s"]) * n
        elif r._gemm is not None:
            t_lin = r._gemm(n, n)
        else:
            t_lin = max(r._weight_s, (r._flops_per_token * n + r._flops_per_logit_row * n) / r._peak)
        kv = r.kv_bytes_per_token(kv_dtype, bs) / m.num_layers * float(ctx_sum)
        blocks = float(blocks_sum) if bs else 0.0
        if not self._paged:  # the roofline's step with its linear term swapped for the fitted one
            r_lin = r._gemm(n, n) if r._gemm is not None else \
                max(r._weight_s, (r._flops_per_token * n + r._flops_per_logit_row * n) / r._peak)
            return r.decode_step_time(num_seqs, ctx_sum, blocks_sum, block_size, kv_dtype) - r_lin + t_lin
        cands = self._paged if bs else self._contig
        t_dec = m.num_layers * min(c0 + ckv * kv + cs * float(n) + cb * blocks for c0, ckv, cs, cb in cands)
        return (t_lin + t_dec + (r._comm_s_per_token * n + r._comm_fixed_s)
                + (self.overhead_s + self.seq_overhead_s * n))
