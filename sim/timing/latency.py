"""The latency model: predicted time of one scheduler step (one forward pass) from its BatchShape.

step_time = t_linear(tokens) + t_attn_prefill(chunks) + t_attn_decode(contexts, block_size) + t_comm + t_overhead.
`RooflineLatency` (the default, labelled "roofline") bounds each term by max(bytes / HBM bandwidth,
FLOPs / peak) from the presets; `CalibratedLatency` replaces the decode-attention term by a fitted
per-layer affine model read from a versioned parameters file (schema PARAMS_SCHEMA, see docs/latency.md).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from sim.presets import GPUSpec, ModelSpec, SpecError, check_tensor_parallel, get_gpu, get_model
from sim.timing.batch_shape import BatchShape, _window_cumsum, decode_blocks_touched, decode_tokens_read
from sim.timing.latency_params import (
    DECODE_COEFFS,
    DECODE_VARIANTS,
    DEFAULT_EFFICIENCY,
    DEFAULT_OVERHEAD_S,
    PARAMS_SCHEMA,
    read_params_file,
    validate_params,
)

__all__ = ["PARAMS_SCHEMA", "DECODE_COEFFS", "DECODE_VARIANTS", "BatchShape", "LatencyModel", "RooflineLatency",
           "CalibratedLatency", "load_latency_model", "validate_params", "decode_blocks_touched",
           "decode_tokens_read"]
_SMALL = 16  # below this many prefilling sequences, plain Python sums beat NumPy calls
TERMS: tuple[str, ...] = ("linear", "attn_prefill", "attn_decode", "comm", "overhead")


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
    - comm (tensor_parallel > 1): two ring all-reduces per layer of tokens * hidden activations over NVLink;
    - a fixed per-step overhead.
    Tensor parallelism divides weights, KV bytes and FLOPs evenly over the GPUs (heads sharded).
    """

    def __init__(self, model: ModelSpec | str, gpu: GPUSpec | str, *, overhead_s: float = DEFAULT_OVERHEAD_S,
                 efficiency: float = DEFAULT_EFFICIENCY, flops_efficiency: float | None = None,
                 tensor_parallel: int = 1) -> None:
        self.model, self.gpu = get_model(model), get_gpu(gpu)
        self.name = "roofline"
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
        self._peak = self.gpu.fp16_flops * fe
        self._weight_s = m.weight_bytes() / tp / self._bw
        self._flops_per_token = 2.0 * m.num_layers * m.layer_matmul_params() / tp
        self._flops_per_logit_row = 2.0 * m.vocab_size * m.hidden_size / tp
        self._attn_flops = 4.0 * m.num_layers * m.num_heads * m.head_dim / tp  # per (query, key) pair
        link = self.gpu.nvlink_bandwidth_Bps or self.gpu.pcie_bandwidth_Bps
        # Ring all-reduce moves 2 (tp-1)/tp of the message per GPU; 2 all-reduces per layer.
        self._comm_s_per_token = (0.0 if tp == 1 else
                                  2 * m.num_layers * 2 * (tp - 1) / tp * m.hidden_size * m.weight_dtype_bytes / link)
        self._kvpt: dict[tuple[str, int], float] = {}
        self._window = m.sliding_window

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
                read = bs * float(bsum) if bs else pairs  # type: ignore[arg-type]
            else:
                keys = dc if w is None else np.minimum(dc, w)
                pairs = float(keys.sum()) if q is None else float(q @ keys)
                read = bs * float(decode_blocks_touched(dc, bs, w).sum()) if bs else float(keys.sum())
            t_dec = max(kvpt * (read + d_tokens) / self._bw, self._attn_flops * pairs / self._peak)
        tokens = p_tokens + d_tokens
        if tokens == 0:
            return 0.0, t_pre, t_dec, 0.0
        flops = self._flops_per_token * tokens + self._flops_per_logit_row * (d_tokens + n_p)
        t_lin = max(self._weight_s, flops / self._peak)
        return t_lin, t_pre, t_dec, self._comm_s_per_token * tokens

    def breakdown(self, batch: BatchShape) -> dict[str, float]:
        """Each term of step_time in seconds (keys: linear, attn_prefill, attn_decode, comm, overhead)."""
        if batch.num_seqs == 0:
            return dict.fromkeys(TERMS, 0.0)
        return dict(zip(TERMS, (*self.terms(batch), self.overhead_s), strict=True))

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
        return t_lin + t_pre + t_dec + t_comm + self.overhead_s

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
        x = kvpt * ((bs * float(blocks_sum) if bs else pairs) + num_seqs) / self._bw
        y = self._attn_flops * pairs / peak
        t_dec = y if y > x else x
        x = self._weight_s
        y = (self._flops_per_token * num_seqs + self._flops_per_logit_row * num_seqs) / peak
        t_lin = y if y > x else x
        return t_lin + t_dec + self._comm_s_per_token * num_seqs + self.overhead_s


class CalibratedLatency:
    """Roofline for linear, prefill and comm terms; the decode-attention term from fitted coefficients.

    Per decode kernel variant v (paged, partitioned, contiguous), per layer call:
      t_v = c0_s + c_kv_bytes_s * kv_bytes + c_seqs_s * num_seqs + c_blocks_s * num_blocks_touched
    where kv_bytes = sum(min(L, W)) * per-layer K+V bytes per token (token bytes, not rounded up to
    blocks: the block term carries that cost) and num_blocks_touched = sum(decode_blocks_touched).
    t_attn_decode = num_layers * t_v. A paged batch uses the fastest fitted of paged/partitioned (a server
    picks the better kernel); a contiguous batch uses "contiguous" if fitted, else the paged family with
    0 blocks. Optional "linear" {c0_s, c_tokens_s} (per step) and "attn_prefill" {c0_s, c_flops_s}
    (per layer, attention FLOPs of the layer) blocks replace those roofline terms.
    """

    def __init__(self, params: dict[str, Any], model: ModelSpec | str, gpu: GPUSpec | str, *,
                 name: str = "calibrated", tensor_parallel: int | None = None) -> None:
        p = validate_params(params)
        tp = int(p.get("tensor_parallel", 1)) if tensor_parallel is None else tensor_parallel
        self.roofline = RooflineLatency(model, gpu, overhead_s=float(p.get("overhead_s", DEFAULT_OVERHEAD_S)),
                                        efficiency=float(p.get("efficiency", DEFAULT_EFFICIENCY)),
                                        tensor_parallel=tp)
        self.model, self.gpu, self.name, self.params = self.roofline.model, self.roofline.gpu, name, p
        self.overhead_s = self.roofline.overhead_s
        variants = p["attn_decode"]["variants"]
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
        return dict(zip(TERMS, (*self.terms(batch), self.overhead_s), strict=True))

    def step_time(self, batch: BatchShape) -> float:
        """Sum of the terms; 0.0 for an empty batch."""
        if batch.decode_context_lens.size + batch.prefill_chunk_lens.size == 0:
            return 0.0
        return sum(self.terms(batch)) + self.overhead_s

    def decode_step_time(self, num_seqs: int, ctx_sum: int, blocks_sum: int, block_size: int,
                         kv_dtype: str = "fp16") -> float:
        """step_time of a decode-only step from sums (see RooflineLatency.decode_step_time), bit for
        bit: the roofline's linear and comm terms (or the fitted linear term) plus the fitted decode
        term, added as step_time adds them (its prefill term is 0.0)."""
        if not num_seqs:
            return 0.0
        r, m, bs = self.roofline, self.model, block_size or 0
        n = num_seqs
        if self._linear is not None:
            t_lin = float(self._linear["c0_s"]) + float(self._linear["c_tokens_s"]) * n
        else:
            t_lin = max(r._weight_s, (r._flops_per_token * n + r._flops_per_logit_row * n) / r._peak)
        kv = r.kv_bytes_per_token(kv_dtype, bs) / m.num_layers * float(ctx_sum)
        blocks = float(blocks_sum) if bs else 0.0
        cands = self._paged if bs else self._contig
        t_dec = m.num_layers * min(c0 + ckv * kv + cs * float(n) + cb * blocks for c0, ckv, cs, cb in cands)
        return t_lin + t_dec + r._comm_s_per_token * n + self.overhead_s


# ---- choosing the model at setup (file reading lives in sim.timing.latency_params) ---------------------------------

def _need(d: dict, key: str) -> Any:
    if key not in d:
        raise SpecError(f"latency params: missing key '{key}' (or pass a {key} preset)")
    return d[key]


def _check_target(params: dict[str, Any], model: ModelSpec, gpu: GPUSpec, where: str) -> None:
    """A file made for a named model/GPU must not silently drive another one."""
    for key, spec in (("model", model), ("gpu", gpu)):
        named = params.get(key)
        if named and str(named).lower() != spec.name.lower():
            raise SpecError(f"{where} was made for {key} {named!r} but the run uses {spec.name!r} "
                            f"(use a matching file or --{key} {named})")


def load_latency_model(spec: str | Path | dict[str, Any] | None, model: ModelSpec | str | None = None,
                       gpu: GPUSpec | str | None = None, *, tensor_parallel: int | None = None) -> LatencyModel:
    """Build the latency model a run uses.

    spec None or "roofline": RooflineLatency(model, gpu). A path to a params JSON file or a params dict:
    "source": "roofline" -> RooflineLatency with the file's overhead/efficiency; "source": "calibrated"
    -> CalibratedLatency named "calibrated:<file name>". model/gpu default to the ones the file names.
    Raises SpecError naming the file and key for a bad file or a model/GPU mismatch.
    """
    if spec is None or (isinstance(spec, str) and spec.strip().lower() == "roofline"):
        if model is None or gpu is None:
            raise SpecError("the roofline latency model needs a model and a gpu preset")
        return RooflineLatency(model, gpu, tensor_parallel=tensor_parallel or 1)
    if isinstance(spec, dict):
        params, where, label = validate_params(spec), "latency params", "calibrated"
    else:
        params, where = read_params_file(spec), f"latency params file {Path(spec)}"
        label = f"calibrated:{Path(spec).name}"
    m = get_model(model if model is not None else _need(params, "model"))
    g = get_gpu(gpu if gpu is not None else _need(params, "gpu"))
    _check_target(params, m, g, where)
    tp = tensor_parallel if tensor_parallel is not None else int(params.get("tensor_parallel", 1))
    if params["source"] == "roofline":
        return RooflineLatency(m, g, overhead_s=float(params.get("overhead_s", DEFAULT_OVERHEAD_S)),
                               efficiency=float(params.get("efficiency", DEFAULT_EFFICIENCY)),
                               flops_efficiency=params.get("flops_efficiency"), tensor_parallel=tp)
    return CalibratedLatency(params, m, g, name=label, tensor_parallel=tp)
